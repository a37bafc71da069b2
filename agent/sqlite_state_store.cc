// The embedded SQLite implementation of StateStore (DESIGN §3).
//
// One connection, guarded by one mutex. WAL journal with synchronous=FULL:
// once a write call returns OK, the row survives a crash of the process (and
// of the machine, as far as fsync can promise). Every value reaches SQLite
// through bound parameters; the only SQL built at run time is the schema
// version pragma, from a compile-time constant.
//
// 64-bit unsigned ids (slot ids, journal positions) are stored bit-for-bit in
// SQLite's signed 64-bit INTEGER and read back the same way. Ids the store
// assigns (logical_id, seq) come from AUTOINCREMENT and are always positive.

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "state_store.h"

namespace hsmux::agent {
namespace {

#define HSMUX_STORE_RETURN_IF_ERROR(expr) \
  do {                                    \
    absl::Status _st = (expr);            \
    if (!_st.ok()) return _st;            \
  } while (0)

// ---- schema ----

// Version 1. Each migration runs in one transaction together with the
// user_version bump; add later versions to kMigrations, never edit old ones.
constexpr char kSchemaV1[] = R"sql(
CREATE TABLE objects(
  logical_id   INTEGER PRIMARY KEY AUTOINCREMENT,
  slot_id      INTEGER NOT NULL,
  object_class INTEGER NOT NULL,
  key_type     INTEGER NOT NULL,
  cka_id       BLOB NOT NULL,
  label        BLOB NOT NULL,
  fingerprint  BLOB NOT NULL,
  attributes   BLOB NOT NULL,
  state        TEXT NOT NULL
);
CREATE INDEX objects_slot ON objects(slot_id);

CREATE TABLE replicas(
  logical_id INTEGER NOT NULL REFERENCES objects(logical_id) ON DELETE CASCADE,
  member     TEXT NOT NULL,
  proof      TEXT NOT NULL,
  PRIMARY KEY(logical_id, member)
);

CREATE TABLE journal(
  seq             INTEGER PRIMARY KEY AUTOINCREMENT,
  slot_id         INTEGER NOT NULL,
  logical_id      INTEGER NOT NULL,
  op              TEXT NOT NULL,
  payload         BLOB NOT NULL,
  state           TEXT NOT NULL,
  created_unix_ms INTEGER NOT NULL
);
CREATE INDEX journal_slot ON journal(slot_id, seq);
CREATE INDEX journal_slot_state ON journal(slot_id, state, seq);

CREATE TABLE member_positions(
  slot_id INTEGER NOT NULL,
  member  TEXT NOT NULL,
  seq     INTEGER NOT NULL,
  PRIMARY KEY(slot_id, member)
);

CREATE TABLE lockouts(
  identity TEXT NOT NULL,
  slot_id  INTEGER NOT NULL,
  failures INTEGER NOT NULL,
  locked   INTEGER NOT NULL,
  PRIMARY KEY(identity, slot_id)
);
CREATE INDEX lockouts_slot ON lockouts(slot_id);

CREATE TABLE pin_overrides(
  identity TEXT NOT NULL,
  slot_id  INTEGER NOT NULL,
  pin_hash TEXT NOT NULL,
  PRIMARY KEY(identity, slot_id)
);
CREATE INDEX pin_overrides_slot ON pin_overrides(slot_id);
)sql";

struct Migration {
  int version;      // user_version after this step
  const char* sql;  // static DDL only
};
constexpr Migration kMigrations[] = {
    {1, kSchemaV1},
};
constexpr int kLatestVersion = 1;

bool ValidObjectState(absl::string_view s) {
  return s == "live" || s == "pending" || s == "tombstone";
}
bool ValidJournalState(absl::string_view s) {
  return s == "pending" || s == "acked" || s == "rolled_back";
}

int64_t ToSql(uint64_t v) {
  int64_t out;
  std::memcpy(&out, &v, sizeof out);
  return out;
}
uint64_t FromSql(int64_t v) {
  uint64_t out;
  std::memcpy(&out, &v, sizeof out);
  return out;
}

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// ---- files ----

std::string ErrnoText(int err) { return std::strerror(err); }

// mkdir -p with mode 0700 for every directory it has to create.
absl::Status MakeDirs(const std::string& dir) {
  if (dir.empty()) return absl::OkStatus();
  std::string prefix;
  size_t pos = 0;
  while (pos <= dir.size()) {
    size_t next = dir.find('/', pos);
    if (next == std::string::npos) next = dir.size();
    prefix = dir.substr(0, next);
    pos = next + 1;
    if (prefix.empty()) continue;  // leading '/'
    struct stat st;
    if (stat(prefix.c_str(), &st) == 0) {
      if (!S_ISDIR(st.st_mode)) {
        return absl::InvalidArgumentError(
            absl::StrCat(prefix, ": not a directory"));
      }
      continue;
    }
    if (errno != ENOENT) {
      return absl::InternalError(absl::StrCat(prefix, ": ", ErrnoText(errno)));
    }
    if (mkdir(prefix.c_str(), 0700) != 0 && errno != EEXIST) {
      return absl::InternalError(absl::StrCat("cannot create state directory ",
                                              prefix, ": ", ErrnoText(errno)));
    }
  }
  return absl::OkStatus();
}

// Makes sure the database file exists with mode 0600 before SQLite opens
// it (SQLite gives the -wal and -shm files the database file's mode).
//
// An existing file is never opened here: closing a second descriptor on a
// file SQLite has open in this process would drop SQLite's POSIX locks.
absl::Status PrepareDbFile(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash != std::string::npos) {
    HSMUX_STORE_RETURN_IF_ERROR(MakeDirs(path.substr(0, slash)));
  }
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    if (errno != ENOENT) {
      return absl::InternalError(absl::StrCat(path, ": ", ErrnoText(errno)));
    }
    int fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno != EEXIST) {
      return absl::InternalError(
          absl::StrCat("cannot create ", path, ": ", ErrnoText(errno)));
    }
    if (fd >= 0) {
      // The umask can only narrow 0600; make it exactly 0600 anyway.
      if (fchmod(fd, 0600) != 0) {
        int err = errno;
        close(fd);
        return absl::InternalError(
            absl::StrCat("cannot chmod ", path, ": ", ErrnoText(err)));
      }
      close(fd);
      return absl::OkStatus();
    }
    if (stat(path.c_str(), &st) != 0) {
      return absl::InternalError(absl::StrCat(path, ": ", ErrnoText(errno)));
    }
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a regular file"));
  }
  // Tighten what an earlier version or an operator may have left wider.
  for (const std::string& p : {path, path + "-wal", path + "-shm"}) {
    struct stat pst;
    if (stat(p.c_str(), &pst) != 0) continue;
    if ((pst.st_mode & 07777) != 0600 && chmod(p.c_str(), 0600) != 0) {
      return absl::InternalError(
          absl::StrCat("cannot chmod ", p, ": ", ErrnoText(errno)));
    }
  }
  return absl::OkStatus();
}

// ---- statements ----

// An owned prepared statement.
class Stmt {
 public:
  Stmt() = default;
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  ~Stmt() { sqlite3_finalize(stmt_); }
  sqlite3_stmt* get() const { return stmt_; }
  sqlite3_stmt** out() { return &stmt_; }

 private:
  sqlite3_stmt* stmt_ = nullptr;
};

std::string ColumnBytes(sqlite3_stmt* s, int col) {
  const void* p = sqlite3_column_blob(s, col);
  int n = sqlite3_column_bytes(s, col);
  if (p == nullptr || n <= 0) return std::string();
  return std::string(static_cast<const char*>(p), static_cast<size_t>(n));
}

std::string ColumnText(sqlite3_stmt* s, int col) {
  const unsigned char* p = sqlite3_column_text(s, col);
  int n = sqlite3_column_bytes(s, col);
  if (p == nullptr || n <= 0) return std::string();
  return std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
}

class SqliteStateStore : public StateStore {
 public:
  SqliteStateStore(std::string path, sqlite3* db)
      : path_(std::move(path)), db_(db) {}
  ~SqliteStateStore() override {
    absl::MutexLock lock(&mu_);
    sqlite3_close_v2(db_);
  }

  // Pragmas and schema; called once, before the store is shared.
  absl::Status Init() {
    absl::MutexLock lock(&mu_);
    sqlite3_extended_result_codes(db_, 1);
    int rc = sqlite3_busy_timeout(db_, 5000);
    if (rc != SQLITE_OK) return Error("busy_timeout", rc);
    int defensive = 0;
    sqlite3_db_config(db_, SQLITE_DBCONFIG_DEFENSIVE, 1, &defensive);

    // journal_mode answers with the mode in force; a file system without
    // shared memory support would silently stay in "delete".
    {
      Stmt s;
      HSMUX_STORE_RETURN_IF_ERROR(Prepare("PRAGMA journal_mode=WAL", &s));
      absl::StatusOr<bool> row = Step(s, "journal_mode");
      if (!row.ok()) return row.status();
      std::string mode = *row ? ColumnText(s.get(), 0) : "";
      if (mode != "wal") {
        return absl::InternalError(absl::StrCat(
            path_, ": cannot enable WAL journal mode (got \"", mode, "\")"));
      }
    }
    HSMUX_STORE_RETURN_IF_ERROR(ExecStatic("PRAGMA synchronous=FULL"));
    HSMUX_STORE_RETURN_IF_ERROR(ExecStatic("PRAGMA foreign_keys=ON"));
    return Migrate();
  }

  // ---- registry ----

  absl::StatusOr<uint64_t> PutObject(const StoredObject& o) override {
    if (o.logical_id >
        static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": logical_id ", o.logical_id, " out of range"));
    }
    if (!ValidObjectState(o.state)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": invalid object state \"", o.state, "\""));
    }
    std::set<absl::string_view> members;
    for (const auto& r : o.replicas) {
      if (!members.insert(r.first).second) {
        return absl::InvalidArgumentError(absl::StrCat(
            path_, ": member \"", r.first, "\" listed twice for one object"));
      }
    }

    absl::MutexLock lock(&mu_);
    HSMUX_STORE_RETURN_IF_ERROR(Begin(true));
    absl::StatusOr<uint64_t> id = PutObjectLocked(o);
    if (!id.ok()) {
      Rollback();
      return id.status();
    }
    HSMUX_STORE_RETURN_IF_ERROR(Commit());
    return id;
  }

  absl::StatusOr<std::optional<StoredObject>> GetObject(
      uint64_t logical_id) override {
    absl::MutexLock lock(&mu_);
    HSMUX_STORE_RETURN_IF_ERROR(Begin(false));
    absl::StatusOr<std::vector<StoredObject>> found =
        SelectObjectsLocked(/*by_slot=*/false, logical_id);
    Rollback();  // read-only
    if (!found.ok()) return found.status();
    if (found->empty()) return std::optional<StoredObject>();
    return std::optional<StoredObject>(std::move(found->front()));
  }

  absl::StatusOr<std::vector<StoredObject>> ListObjects(
      uint64_t slot_id) override {
    absl::MutexLock lock(&mu_);
    HSMUX_STORE_RETURN_IF_ERROR(Begin(false));
    absl::StatusOr<std::vector<StoredObject>> found =
        SelectObjectsLocked(/*by_slot=*/true, slot_id);
    Rollback();
    return found;
  }

  // Removing an object that is not there is not an error (idempotent, so
  // a rollback after a crash can simply be repeated).
  absl::Status DeleteObject(uint64_t logical_id) override {
    absl::MutexLock lock(&mu_);
    HSMUX_STORE_RETURN_IF_ERROR(Begin(true));
    absl::Status st = [&]() -> absl::Status {
      for (const char* sql : {"DELETE FROM replicas WHERE logical_id = ?1",
                              "DELETE FROM objects WHERE logical_id = ?1"}) {
        Stmt s;
        HSMUX_STORE_RETURN_IF_ERROR(Prepare(sql, &s));
        HSMUX_STORE_RETURN_IF_ERROR(BindInt(s, 1, ToSql(logical_id)));
        HSMUX_STORE_RETURN_IF_ERROR(Done(s, "delete object"));
      }
      return absl::OkStatus();
    }();
    if (!st.ok()) {
      Rollback();
      return st;
    }
    return Commit();
  }

  // ---- journal ----

  absl::StatusOr<uint64_t> AppendJournal(const JournalEntry& e) override {
    if (!ValidJournalState(e.state)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": invalid journal state \"", e.state, "\""));
    }
    if (e.op.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": journal entry without op"));
    }
    const int64_t created =
        e.created_unix_ms != 0 ? e.created_unix_ms : NowUnixMs();
    absl::MutexLock lock(&mu_);
    Stmt s;
    HSMUX_STORE_RETURN_IF_ERROR(
        Prepare("INSERT INTO journal(slot_id, logical_id, op, payload, state, "
                "created_unix_ms) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
                &s));
    HSMUX_STORE_RETURN_IF_ERROR(BindInt(s, 1, ToSql(e.slot_id)));
    HSMUX_STORE_RETURN_IF_ERROR(BindInt(s, 2, ToSql(e.logical_id)));
    HSMUX_STORE_RETURN_IF_ERROR(BindText(s, 3, e.op));
    HSMUX_STORE_RETURN_IF_ERROR(BindBlob(s, 4, e.payload));
    HSMUX_STORE_RETURN_IF_ERROR(BindText(s, 5, e.state));
    HSMUX_STORE_RETURN_IF_ERROR(BindInt(s, 6, created));
    HSMUX_STORE_RETURN_IF_ERROR(Done(s, "append journal"));
    return FromSql(sqlite3_last_insert_rowid(db_));
  }

  absl::Status SetJournalState(uint64_t seq,
                               const std::string& state) override {
    if (!ValidJournalState(state)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": invalid journal state \"", state, "\""));
    }
    absl::MutexLock lock(&mu_);
    Stmt s;
    HSMUX_STORE_RETURN_IF_ERROR(
        Prepare("UPDATE journal SET state = ?1 WHERE seq = ?2", &s));
    HSMUX_STORE_RETURN_IF_ERROR(BindText(s, 1, state));
    HSMUX_STORE_RETURN_IF_ERROR(BindInt(s, 2, ToSql(seq)));
    HSMUX_STORE_RETURN_IF_ERROR(Done(s, "set journal state"));
    if (sqlite3_changes(db_) == 0) {
      return absl::NotFoundError(
          absl::StrCat(path_, ": no journal entry with seq ", seq));
    }
    return absl::OkStatus();
  }

  // `state` empty: every entry of the group.
  absl::StatusOr<std::vector<JournalEntry>> ListJournal(
      uint64_t slot_id, const std::string& state) override {
    absl::MutexLock lock(&mu_);
    Stmt s;
    HSMUX_STORE_RETURN_IF_ERROR(Prepare(
        state.empty()
            ? "SELECT seq, slot_id, logical_id, op, payload, state, "
              "created_unix_ms FROM journal WHERE slot_id = ?1 ORDER BY seq"
            : "SELECT seq, slot_id, logical_id, op, payload, state, "
              "created_unix_ms FROM journal WHERE slot_id = ?1 AND state = ?2 "
              "ORDER BY seq",
        &s));
    HSMUX_STORE_RETURN_IF_ERROR(BindInt(s, 1, ToSql(slot_id)));
    if (!state.empty()) HSMUX_STORE_RETURN_IF_ERROR(BindText(s, 2, state));
    std::vector<JournalEntry> out;
    for (;;) {
      absl::StatusOr<bool> row = Step(s, "list journal");
      if (!row.ok()) return row.status();
      if (!*row) break;
      JournalEntry e;
      e.seq = FromSql(sqlite3_column_int64(s.get(), 0));
      e.slot_id = FromSql(sqlite3_column_int64(s.get(), 1));
      e.logical_id = FromSql(sqlite3_column_int64(s.get(), 2));
      e.op = ColumnText(s.get(), 3);
      e.payload = ColumnBytes(s.get(), 4);
      e.state = ColumnText(s.get(), 5);
      e.created_unix_ms = sqlite3_column_int64(s.get(), 6);
      out.push_back(std::move(e));
    }
    return out;
  }

  // ---- member catch-up ----

  // A member never recorded is at position 0 (nothing applied).
  absl::StatusOr<uint64_t> GetMemberPosition(
      uint64_t slot_id, const std::string& member) override {
    absl::MutexLock lock(&mu_);
    Stmt s;
    HSMUX_STORE_RETURN_IF_ERROR(Prepare(
        "SELECT seq FROM member_positions WHERE slot_id = ?1 AND member = ?2",
        &s));
    HSMUX_STORE_RETURN_IF_ERROR(BindInt(s, 1, ToSql(slot_id)));
    HSMUX_STORE_RETURN_IF_ERROR(BindText(s, 2, member));
    absl::StatusOr<bool> row = Step(s, "get member position");
    if (!row.ok()) return row.status();
    if (!*row) return uint64_t{0};
    return FromSql(sqlite3_column_int64(s.get(), 0));
  }

  absl::Status SetMemberPosition(uint64_t slot_id, const std::string& member,
                                 uint64_t seq) override {
    absl::MutexLock lock(&mu_);
    Stmt s;
    HSMUX_STORE_RETURN_IF_ERROR(Prepare(
        "INSERT INTO member_positions(slot_id, member, seq) VALUES(?1, ?2, ?3) "
        "ON CONFLICT(slot_id, member) DO UPDATE SET seq = excluded.seq",
        &s));
    HSMUX_STORE_RETURN_IF_ERROR(BindInt(s, 1, ToSql(slot_id)));
    HSMUX_STORE_RETURN_IF_ERROR(BindText(s, 2, member));
    HSMUX_STORE_RETURN_IF_ERROR(BindInt(s, 3, ToSql(seq)));
    return Done(s, "set member position");
  }

  // ---- PIN lockouts ----

  // An identity never recorded has no failures and is not locked.
  absl::StatusOr<Lockout> GetLockout(const std::string& identity,
                                     uint64_t slot_id) override {
    absl::MutexLock lock(&mu_);
    Stmt s;
    HSMUX_STORE_RETURN_IF_ERROR(
        Prepare("SELECT failures, locked FROM lockouts "
                "WHERE identity = ?1 AND slot_id = ?2",
                &s));
    HSMUX_STORE_RETURN_IF_ERROR(BindText(s, 1, identity));
    HSMUX_STORE_RETURN_IF_ERROR(BindInt(s, 2, ToSql(slot_id)));
    absl::StatusOr<bool> row = Step(s, "get lockout");
    if (!row.ok()) return row.status();
    Lockout l;
    l.identity = identity;
    l.slot_id = slot_id;
    if (*row) {
      l.failures = static_cast<uint32_t>(sqlite3_column_int64(s.get(), 0));
      l.locked = sqlite3_column_int64(s.get(), 1) != 0;
    }
    return l;
  }

  absl::Status PutLockout(const Lockout& l) override {
    absl::MutexLock lock(&mu_);
    Stmt s;
    HSMUX_STORE_RETURN_IF_ERROR(Prepare(
        "INSERT INTO lockouts(identity, slot_id, failures, locked) "
        "VALUES(?1, ?2, ?3, ?4) ON CONFLICT(identity, slot_id) DO UPDATE SET "
        "failures = excluded.failures, locked = excluded.locked",
        &s));
    HSMUX_STORE_RETURN_IF_ERROR(BindText(s, 1, l.identity));
    HSMUX_STORE_RETURN_IF_ERROR(BindInt(s, 2, ToSql(l.slot_id)));
    HSMUX_STORE_RETURN_IF_ERROR(BindInt(s, 3, l.failures));
    HSMUX_STORE_RETURN_IF_ERROR(BindInt(s, 4, l.locked ? 1 : 0));
    return Done(s, "put lockout");
  }

  absl::StatusOr<std::optional<std::string>> GetPinOverride(
      const std::string& identity, uint64_t slot_id) override {
    absl::MutexLock lock(&mu_);
    Stmt s;
    HSMUX_STORE_RETURN_IF_ERROR(
        Prepare("SELECT pin_hash FROM pin_overrides "
                "WHERE identity = ?1 AND slot_id = ?2",
                &s));
    HSMUX_STORE_RETURN_IF_ERROR(BindText(s, 1, identity));
    HSMUX_STORE_RETURN_IF_ERROR(BindInt(s, 2, ToSql(slot_id)));
    absl::StatusOr<bool> row = Step(s, "get pin override");
    if (!row.ok()) return row.status();
    if (!*row) return std::optional<std::string>();
    return std::optional<std::string>(ColumnText(s.get(), 0));
  }

  absl::Status PutPinOverride(const std::string& identity, uint64_t slot_id,
                              const std::string& pin_hash) override {
    absl::MutexLock lock(&mu_);
    Stmt s;
    HSMUX_STORE_RETURN_IF_ERROR(Prepare(
        "INSERT INTO pin_overrides(identity, slot_id, pin_hash) "
        "VALUES(?1, ?2, ?3) ON CONFLICT(identity, slot_id) DO UPDATE SET "
        "pin_hash = excluded.pin_hash",
        &s));
    HSMUX_STORE_RETURN_IF_ERROR(BindText(s, 1, identity));
    HSMUX_STORE_RETURN_IF_ERROR(BindInt(s, 2, ToSql(slot_id)));
    HSMUX_STORE_RETURN_IF_ERROR(BindText(s, 3, pin_hash));
    return Done(s, "put pin override");
  }

 private:
  // ---- helpers; all with mu_ held ----

  absl::Status Error(absl::string_view what, int rc)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::string msg = absl::StrCat(path_, ": ", what, ": ", sqlite3_errmsg(db_),
                                   " (", sqlite3_errstr(rc), ")");
    if ((rc & 0xff) == SQLITE_CONSTRAINT || (rc & 0xff) == SQLITE_RANGE ||
        (rc & 0xff) == SQLITE_TOOBIG || (rc & 0xff) == SQLITE_MISMATCH) {
      return absl::InvalidArgumentError(msg);
    }
    return absl::InternalError(msg);
  }

  absl::Status Prepare(const char* sql, Stmt* s)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    int rc = sqlite3_prepare_v2(db_, sql, -1, s->out(), nullptr);
    if (rc != SQLITE_OK) return Error(absl::StrCat("prepare ", sql), rc);
    return absl::OkStatus();
  }

  absl::Status BindInt(Stmt& s, int idx, int64_t v)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    int rc = sqlite3_bind_int64(s.get(), idx, v);
    return rc == SQLITE_OK ? absl::OkStatus() : Error("bind", rc);
  }
  absl::Status BindText(Stmt& s, int idx, const std::string& v)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    int rc = sqlite3_bind_text64(s.get(), idx, v.data(), v.size(),
                                 SQLITE_TRANSIENT, SQLITE_UTF8);
    return rc == SQLITE_OK ? absl::OkStatus() : Error("bind", rc);
  }
  // A zero-length blob stays a blob (not NULL): data() is never null.
  absl::Status BindBlob(Stmt& s, int idx, const std::string& v)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    int rc =
        sqlite3_bind_blob64(s.get(), idx, v.data(), v.size(), SQLITE_TRANSIENT);
    return rc == SQLITE_OK ? absl::OkStatus() : Error("bind", rc);
  }

  // true: a row is ready; false: done.
  absl::StatusOr<bool> Step(Stmt& s, absl::string_view what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    int rc = sqlite3_step(s.get());
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return Error(what, rc);
  }
  absl::Status Done(Stmt& s, absl::string_view what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    absl::StatusOr<bool> row = Step(s, what);
    if (!row.ok()) return row.status();
    return absl::OkStatus();
  }

  // Static SQL only (no values).
  absl::Status ExecStatic(const std::string& sql)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) return Error(sql, rc);
    return absl::OkStatus();
  }

  // Writers take the write lock up front (IMMEDIATE) so a busy database
  // waits in busy_timeout rather than failing at the first write.
  absl::Status Begin(bool write) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return ExecStatic(write ? "BEGIN IMMEDIATE" : "BEGIN");
  }
  absl::Status Commit() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    absl::Status st = ExecStatic("COMMIT");
    if (!st.ok()) Rollback();
    return st;
  }
  void Rollback() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!sqlite3_get_autocommit(db_)) {
      sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    }
  }

  absl::Status Migrate() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    HSMUX_STORE_RETURN_IF_ERROR(Begin(true));
    absl::Status st = [&]() -> absl::Status {
      Stmt s;
      HSMUX_STORE_RETURN_IF_ERROR(Prepare("PRAGMA user_version", &s));
      absl::StatusOr<bool> row = Step(s, "read user_version");
      if (!row.ok()) return row.status();
      const int64_t version = *row ? sqlite3_column_int64(s.get(), 0) : 0;
      if (version > kLatestVersion) {
        return absl::FailedPreconditionError(absl::StrCat(
            path_, ": schema version ", version,
            " is newer than this hsmuxd understands (", kLatestVersion, ")"));
      }
      for (const Migration& m : kMigrations) {
        if (m.version <= version) continue;
        HSMUX_STORE_RETURN_IF_ERROR(ExecStatic(m.sql));
        // A pragma takes no parameters; m.version is a compile-time constant.
        HSMUX_STORE_RETURN_IF_ERROR(
            ExecStatic(absl::StrCat("PRAGMA user_version = ", m.version)));
      }
      return absl::OkStatus();
    }();
    if (!st.ok()) {
      Rollback();
      return st;
    }
    return Commit();
  }

  absl::StatusOr<uint64_t> PutObjectLocked(const StoredObject& o)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    uint64_t id = o.logical_id;
    {
      Stmt s;
      if (id == 0) {
        HSMUX_STORE_RETURN_IF_ERROR(Prepare(
            "INSERT INTO objects(slot_id, object_class, key_type, cka_id, "
            "label, fingerprint, attributes, state) "
            "VALUES(?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            &s));
      } else {
        HSMUX_STORE_RETURN_IF_ERROR(Prepare(
            "INSERT INTO objects(logical_id, slot_id, object_class, key_type, "
            "cka_id, label, fingerprint, attributes, state) "
            "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) "
            "ON CONFLICT(logical_id) DO UPDATE SET slot_id = excluded.slot_id, "
            "object_class = excluded.object_class, "
            "key_type = excluded.key_type, cka_id = excluded.cka_id, "
            "label = excluded.label, fingerprint = excluded.fingerprint, "
            "attributes = excluded.attributes, state = excluded.state",
            &s));
        HSMUX_STORE_RETURN_IF_ERROR(BindInt(s, 1, ToSql(id)));
      }
      HSMUX_STORE_RETURN_IF_ERROR(BindInt(s, 2, ToSql(o.slot_id)));
      HSMUX_STORE_RETURN_IF_ERROR(BindInt(s, 3, ToSql(o.object_class)));
      HSMUX_STORE_RETURN_IF_ERROR(BindInt(s, 4, ToSql(o.key_type)));
      HSMUX_STORE_RETURN_IF_ERROR(BindBlob(s, 5, o.cka_id));
      HSMUX_STORE_RETURN_IF_ERROR(BindBlob(s, 6, o.label));
      HSMUX_STORE_RETURN_IF_ERROR(BindBlob(s, 7, o.fingerprint));
      HSMUX_STORE_RETURN_IF_ERROR(BindBlob(s, 8, o.attributes));
      HSMUX_STORE_RETURN_IF_ERROR(BindText(s, 9, o.state));
      HSMUX_STORE_RETURN_IF_ERROR(Done(s, "put object"));
      if (id == 0) id = FromSql(sqlite3_last_insert_rowid(db_));
    }
    {
      Stmt s;
      HSMUX_STORE_RETURN_IF_ERROR(
          Prepare("DELETE FROM replicas WHERE logical_id = ?1", &s));
      HSMUX_STORE_RETURN_IF_ERROR(BindInt(s, 1, ToSql(id)));
      HSMUX_STORE_RETURN_IF_ERROR(Done(s, "put object replicas"));
    }
    if (!o.replicas.empty()) {
      Stmt s;
      HSMUX_STORE_RETURN_IF_ERROR(Prepare(
          "INSERT INTO replicas(logical_id, member, proof) VALUES(?1, ?2, ?3)",
          &s));
      for (const auto& r : o.replicas) {
        sqlite3_reset(s.get());
        HSMUX_STORE_RETURN_IF_ERROR(BindInt(s, 1, ToSql(id)));
        HSMUX_STORE_RETURN_IF_ERROR(BindText(s, 2, r.first));
        HSMUX_STORE_RETURN_IF_ERROR(BindText(s, 3, r.second));
        HSMUX_STORE_RETURN_IF_ERROR(Done(s, "put object replicas"));
      }
    }
    return id;
  }

  // Objects with their replicas, by slot or by logical_id.
  absl::StatusOr<std::vector<StoredObject>> SelectObjectsLocked(bool by_slot,
                                                                uint64_t key)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::vector<StoredObject> out;
    std::map<uint64_t, size_t> index;
    {
      Stmt s;
      HSMUX_STORE_RETURN_IF_ERROR(Prepare(
          by_slot
              ? "SELECT logical_id, slot_id, object_class, key_type, "
                "cka_id, label, fingerprint, attributes, state FROM objects "
                "WHERE slot_id = ?1 ORDER BY logical_id"
              : "SELECT logical_id, slot_id, object_class, key_type, "
                "cka_id, label, fingerprint, attributes, state FROM objects "
                "WHERE logical_id = ?1",
          &s));
      HSMUX_STORE_RETURN_IF_ERROR(BindInt(s, 1, ToSql(key)));
      for (;;) {
        absl::StatusOr<bool> row = Step(s, "read objects");
        if (!row.ok()) return row.status();
        if (!*row) break;
        StoredObject o;
        o.logical_id = FromSql(sqlite3_column_int64(s.get(), 0));
        o.slot_id = FromSql(sqlite3_column_int64(s.get(), 1));
        o.object_class = FromSql(sqlite3_column_int64(s.get(), 2));
        o.key_type = FromSql(sqlite3_column_int64(s.get(), 3));
        o.cka_id = ColumnBytes(s.get(), 4);
        o.label = ColumnBytes(s.get(), 5);
        o.fingerprint = ColumnBytes(s.get(), 6);
        o.attributes = ColumnBytes(s.get(), 7);
        o.state = ColumnText(s.get(), 8);
        index[o.logical_id] = out.size();
        out.push_back(std::move(o));
      }
    }
    if (out.empty()) return out;
    {
      Stmt s;
      HSMUX_STORE_RETURN_IF_ERROR(Prepare(
          by_slot ? "SELECT r.logical_id, r.member, r.proof FROM replicas r "
                    "JOIN objects o ON o.logical_id = r.logical_id "
                    "WHERE o.slot_id = ?1 ORDER BY r.logical_id, r.member"
                  : "SELECT logical_id, member, proof FROM replicas "
                    "WHERE logical_id = ?1 ORDER BY member",
          &s));
      HSMUX_STORE_RETURN_IF_ERROR(BindInt(s, 1, ToSql(key)));
      for (;;) {
        absl::StatusOr<bool> row = Step(s, "read replicas");
        if (!row.ok()) return row.status();
        if (!*row) break;
        auto it = index.find(FromSql(sqlite3_column_int64(s.get(), 0)));
        if (it == index.end()) continue;
        out[it->second].replicas.emplace_back(ColumnText(s.get(), 1),
                                              ColumnText(s.get(), 2));
      }
    }
    return out;
  }

  const std::string path_;
  absl::Mutex mu_;
  sqlite3* db_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<StateStore>> OpenSqliteStateStore(
    const std::string& path) {
  if (path.empty()) {
    return absl::InvalidArgumentError("state database path is empty");
  }
  HSMUX_STORE_RETURN_IF_ERROR(PrepareDbFile(path));
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg =
        absl::StrCat("cannot open state database ", path, ": ",
                     db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    sqlite3_close_v2(db);
    return absl::InternalError(msg);
  }
  auto store = std::make_unique<SqliteStateStore>(path, db);
  HSMUX_STORE_RETURN_IF_ERROR(store->Init());
  return std::unique_ptr<StateStore>(std::move(store));
}

}  // namespace hsmux::agent
