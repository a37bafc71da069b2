// Tests of the SQLite state store (agent/sqlite_state_store.cc).

#include "state_store.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace hsmux::agent {
namespace {

class StateStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* base = getenv("TEST_TMPDIR");
    std::string tmpl =
        absl::StrCat(base != nullptr ? base : "/tmp", "/hsmux-store-XXXXXX");
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    root_ = tmpl;
    // A state directory that does not exist yet: the store creates it.
    dir_ = root_ + "/state/sub";
    path_ = dir_ + "/hsmux-state.db";
  }
  void TearDown() override {
    std::string cmd = absl::StrCat("rm -rf '", root_, "'");
    ASSERT_EQ(system(cmd.c_str()), 0);
  }

  std::unique_ptr<StateStore> Open() {
    absl::StatusOr<std::unique_ptr<StateStore>> store =
        OpenSqliteStateStore(path_);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(*store) : nullptr;
  }

  static StoredObject MakeObject(uint64_t slot, const std::string& label) {
    StoredObject o;
    o.slot_id = slot;
    o.object_class = 3;  // CKO_PRIVATE_KEY
    o.key_type = 3;      // CKK_EC
    o.cka_id = std::string("\x01\x00\xff", 3);
    o.label = label;
    o.fingerprint = std::string("fp\0bin", 6);
    o.attributes = std::string("\x0a\x00\x10", 3);
    o.state = "live";
    o.replicas = {{"hsm-a", "attributes"}, {"hsm-b", "sign-verify"}};
    return o;
  }

  std::string root_;
  std::string dir_;
  std::string path_;
};

void ExpectSameObject(const StoredObject& a, const StoredObject& b) {
  EXPECT_EQ(a.logical_id, b.logical_id);
  EXPECT_EQ(a.slot_id, b.slot_id);
  EXPECT_EQ(a.object_class, b.object_class);
  EXPECT_EQ(a.key_type, b.key_type);
  EXPECT_EQ(a.cka_id, b.cka_id);
  EXPECT_EQ(a.label, b.label);
  EXPECT_EQ(a.fingerprint, b.fingerprint);
  EXPECT_EQ(a.attributes, b.attributes);
  EXPECT_EQ(a.state, b.state);
  EXPECT_EQ(a.replicas, b.replicas);
}

TEST_F(StateStoreTest, PutGetListDeleteObjects) {
  auto store = Open();
  ASSERT_NE(store, nullptr);

  StoredObject a = MakeObject(7, "key-a");
  absl::StatusOr<uint64_t> id_a = store->PutObject(a);
  ASSERT_TRUE(id_a.ok()) << id_a.status();
  EXPECT_GT(*id_a, 0u);
  a.logical_id = *id_a;

  StoredObject b = MakeObject(7, "key-b");
  b.replicas = {};
  b.cka_id.clear();  // empty blobs stay empty (not NULL)
  absl::StatusOr<uint64_t> id_b = store->PutObject(b);
  ASSERT_TRUE(id_b.ok()) << id_b.status();
  EXPECT_NE(*id_a, *id_b);
  b.logical_id = *id_b;

  StoredObject other = MakeObject(8, "other-slot");
  ASSERT_TRUE(store->PutObject(other).ok());

  absl::StatusOr<std::optional<StoredObject>> got = store->GetObject(*id_a);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(got->has_value());
  ExpectSameObject(**got, a);

  absl::StatusOr<std::vector<StoredObject>> list = store->ListObjects(7);
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->size(), 2u);
  ExpectSameObject((*list)[0], a);
  ExpectSameObject((*list)[1], b);

  // Replace by logical_id: the replica set is replaced too.
  a.state = "tombstone";
  a.replicas = {{"hsm-c", "created"}};
  a.attributes = "new";
  absl::StatusOr<uint64_t> again = store->PutObject(a);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, a.logical_id);
  got = store->GetObject(a.logical_id);
  ASSERT_TRUE(got.ok() && got->has_value());
  ExpectSameObject(**got, a);
  // Tombstones are listed.
  list = store->ListObjects(7);
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->size(), 2u);

  ASSERT_TRUE(store->DeleteObject(a.logical_id).ok());
  got = store->GetObject(a.logical_id);
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(got->has_value());
  list = store->ListObjects(7);
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  ExpectSameObject((*list)[0], b);
  // Deleting again is harmless.
  EXPECT_TRUE(store->DeleteObject(a.logical_id).ok());

  list = store->ListObjects(99);
  ASSERT_TRUE(list.ok());
  EXPECT_TRUE(list->empty());
}

TEST_F(StateStoreTest, AssignsAndHonoursLogicalIds) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  StoredObject o = MakeObject(1, "explicit");
  o.logical_id = 1000;
  absl::StatusOr<uint64_t> id = store->PutObject(o);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(*id, 1000u);
  // New ids never reuse or go below an id already handed out.
  absl::StatusOr<uint64_t> next = store->PutObject(MakeObject(1, "auto"));
  ASSERT_TRUE(next.ok());
  EXPECT_GT(*next, 1000u);
  ASSERT_TRUE(store->DeleteObject(*next).ok());
  absl::StatusOr<uint64_t> after = store->PutObject(MakeObject(1, "auto2"));
  ASSERT_TRUE(after.ok());
  EXPECT_GT(*after, *next);

  // Large slot ids (all 64 bits) round-trip.
  StoredObject big = MakeObject(~uint64_t{0}, "big");
  big.object_class = 0x80000001u;
  absl::StatusOr<uint64_t> big_id = store->PutObject(big);
  ASSERT_TRUE(big_id.ok());
  absl::StatusOr<std::vector<StoredObject>> list =
      store->ListObjects(~uint64_t{0});
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].slot_id, ~uint64_t{0});
  EXPECT_EQ((*list)[0].object_class, 0x80000001u);
}

TEST_F(StateStoreTest, RejectsBadObjects) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  StoredObject o = MakeObject(1, "x");
  o.state = "zombie";
  EXPECT_EQ(store->PutObject(o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = MakeObject(1, "x");
  o.replicas = {{"hsm-a", "attributes"}, {"hsm-a", "mac"}};
  EXPECT_EQ(store->PutObject(o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = MakeObject(1, "x");
  o.logical_id = ~uint64_t{0};
  EXPECT_EQ(store->PutObject(o).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::StatusOr<std::vector<StoredObject>> list = store->ListObjects(1);
  ASSERT_TRUE(list.ok());
  EXPECT_TRUE(list->empty());
}

TEST_F(StateStoreTest, Journal) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  std::vector<uint64_t> seqs;
  for (int i = 0; i < 5; ++i) {
    JournalEntry e;
    e.slot_id = i % 2 == 0 ? 1 : 2;
    e.logical_id = 100 + i;
    e.op = i == 4 ? "destroy" : "create";
    e.payload = std::string("wrapped\0", 8) + std::to_string(i);
    e.created_unix_ms = i == 0 ? 0 : 1700000000000 + i;
    absl::StatusOr<uint64_t> seq = store->AppendJournal(e);
    ASSERT_TRUE(seq.ok()) << seq.status();
    if (!seqs.empty()) EXPECT_GT(*seq, seqs.back());
    seqs.push_back(*seq);
  }

  absl::StatusOr<std::vector<JournalEntry>> all = store->ListJournal(1, "");
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 3u);
  EXPECT_EQ((*all)[0].seq, seqs[0]);
  EXPECT_EQ((*all)[1].seq, seqs[2]);
  EXPECT_EQ((*all)[2].seq, seqs[4]);
  EXPECT_EQ((*all)[0].logical_id, 100u);
  EXPECT_EQ((*all)[0].payload, std::string("wrapped\0", 8) + "0");
  EXPECT_EQ((*all)[0].state, "pending");
  EXPECT_GT((*all)[0].created_unix_ms, 0);  // filled in when 0
  EXPECT_EQ((*all)[1].created_unix_ms, 1700000000002);
  EXPECT_EQ((*all)[2].op, "destroy");

  ASSERT_TRUE(store->SetJournalState(seqs[2], "acked").ok());
  ASSERT_TRUE(store->SetJournalState(seqs[4], "rolled_back").ok());
  absl::StatusOr<std::vector<JournalEntry>> pending =
      store->ListJournal(1, "pending");
  ASSERT_TRUE(pending.ok());
  ASSERT_EQ(pending->size(), 1u);
  EXPECT_EQ((*pending)[0].seq, seqs[0]);
  absl::StatusOr<std::vector<JournalEntry>> acked =
      store->ListJournal(1, "acked");
  ASSERT_TRUE(acked.ok());
  ASSERT_EQ(acked->size(), 1u);
  EXPECT_EQ((*acked)[0].seq, seqs[2]);
  EXPECT_EQ((*acked)[0].state, "acked");
  absl::StatusOr<std::vector<JournalEntry>> slot2 =
      store->ListJournal(2, "pending");
  ASSERT_TRUE(slot2.ok());
  EXPECT_EQ(slot2->size(), 2u);

  EXPECT_EQ(store->SetJournalState(seqs[0], "bogus").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->SetJournalState(999999, "acked").code(),
            absl::StatusCode::kNotFound);
  JournalEntry bad;
  bad.op = "create";
  bad.state = "bogus";
  EXPECT_EQ(store->AppendJournal(bad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(StateStoreTest, MemberPositions) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<uint64_t> pos = store->GetMemberPosition(1, "hsm-a");
  ASSERT_TRUE(pos.ok());
  EXPECT_EQ(*pos, 0u);
  ASSERT_TRUE(store->SetMemberPosition(1, "hsm-a", 42).ok());
  ASSERT_TRUE(store->SetMemberPosition(2, "hsm-a", 7).ok());
  ASSERT_TRUE(store->SetMemberPosition(1, "hsm-a", 43).ok());
  EXPECT_EQ(*store->GetMemberPosition(1, "hsm-a"), 43u);
  EXPECT_EQ(*store->GetMemberPosition(2, "hsm-a"), 7u);
  EXPECT_EQ(*store->GetMemberPosition(1, "hsm-b"), 0u);
}

TEST_F(StateStoreTest, LockoutsAndPinOverrides) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<Lockout> l = store->GetLockout("alice", 1);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->identity, "alice");
  EXPECT_EQ(l->slot_id, 1u);
  EXPECT_EQ(l->failures, 0u);
  EXPECT_FALSE(l->locked);

  Lockout put{"alice", 1, 3, false};
  ASSERT_TRUE(store->PutLockout(put).ok());
  put.failures = 5;
  put.locked = true;
  ASSERT_TRUE(store->PutLockout(put).ok());
  l = store->GetLockout("alice", 1);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->failures, 5u);
  EXPECT_TRUE(l->locked);
  l = store->GetLockout("alice", 2);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->failures, 0u);

  absl::StatusOr<std::optional<std::string>> pin =
      store->GetPinOverride("alice", 1);
  ASSERT_TRUE(pin.ok());
  EXPECT_FALSE(pin->has_value());
  ASSERT_TRUE(store->PutPinOverride("alice", 1, "scrypt$1").ok());
  ASSERT_TRUE(store->PutPinOverride("alice", 1, "scrypt$2").ok());
  pin = store->GetPinOverride("alice", 1);
  ASSERT_TRUE(pin.ok() && pin->has_value());
  EXPECT_EQ(**pin, "scrypt$2");
  pin = store->GetPinOverride("bob", 1);
  ASSERT_TRUE(pin.ok());
  EXPECT_FALSE(pin->has_value());
}

TEST_F(StateStoreTest, SurvivesCloseAndReopen) {
  uint64_t id = 0;
  uint64_t seq = 0;
  {
    auto store = Open();
    ASSERT_NE(store, nullptr);
    absl::StatusOr<uint64_t> put = store->PutObject(MakeObject(3, "kept"));
    ASSERT_TRUE(put.ok());
    id = *put;
    JournalEntry e;
    e.slot_id = 3;
    e.logical_id = id;
    e.op = "create";
    e.payload = "blob";
    absl::StatusOr<uint64_t> s = store->AppendJournal(e);
    ASSERT_TRUE(s.ok());
    seq = *s;
    ASSERT_TRUE(store->SetJournalState(seq, "acked").ok());
    ASSERT_TRUE(store->SetMemberPosition(3, "hsm-a", seq).ok());
    ASSERT_TRUE(store->PutLockout({"alice", 3, 2, true}).ok());
    ASSERT_TRUE(store->PutPinOverride("alice", 3, "hash").ok());
  }
  auto store = Open();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<std::optional<StoredObject>> got = store->GetObject(id);
  ASSERT_TRUE(got.ok() && got->has_value());
  StoredObject want = MakeObject(3, "kept");
  want.logical_id = id;
  ExpectSameObject(**got, want);
  absl::StatusOr<std::vector<JournalEntry>> j = store->ListJournal(3, "acked");
  ASSERT_TRUE(j.ok());
  ASSERT_EQ(j->size(), 1u);
  EXPECT_EQ((*j)[0].seq, seq);
  EXPECT_EQ(*store->GetMemberPosition(3, "hsm-a"), seq);
  absl::StatusOr<Lockout> l = store->GetLockout("alice", 3);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->failures, 2u);
  EXPECT_TRUE(l->locked);
  EXPECT_EQ(**store->GetPinOverride("alice", 3), "hash");
  // New ids continue after the old ones.
  absl::StatusOr<uint64_t> next = store->PutObject(MakeObject(3, "next"));
  ASSERT_TRUE(next.ok());
  EXPECT_GT(*next, id);
}

// The store is leaked (never closed, WAL never checkpointed) and a second
// connection opens the file: it sees every acknowledged write.
// Kept reachable from a global so LeakSanitizer (HSMUX_SANITIZE) does not
// count it; volatile so the store is not optimised away.
StateStore* volatile leaked_store = nullptr;

TEST_F(StateStoreTest, LeakedStoreWritesAreVisible) {
  StateStore* leaked = Open().release();
  leaked_store = leaked;
  ASSERT_NE(leaked, nullptr);
  absl::StatusOr<uint64_t> id = leaked->PutObject(MakeObject(5, "leaked"));
  ASSERT_TRUE(id.ok());
  auto store = Open();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<std::optional<StoredObject>> got = store->GetObject(*id);
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->label, "leaked");
  // Intentionally not deleting `leaked`.
}

// A child process writes, reports the acknowledged ids through a pipe, and
// is killed with SIGKILL before it can close anything. The parent reopens
// the file and finds the writes.
TEST_F(StateStoreTest, AcknowledgedWriteSurvivesSigkill) {
  // Create the database (and schema) first, then close it.
  ASSERT_NE(Open(), nullptr);
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(fds[0]);
    absl::StatusOr<std::unique_ptr<StateStore>> store =
        OpenSqliteStateStore(path_);
    if (!store.ok()) _exit(2);
    absl::StatusOr<uint64_t> id =
        (*store)->PutObject(MakeObject(9, "crash-proof"));
    if (!id.ok()) _exit(3);
    JournalEntry e;
    e.slot_id = 9;
    e.logical_id = *id;
    e.op = "create";
    e.payload = "wrapped";
    e.state = "acked";
    absl::StatusOr<uint64_t> seq = (*store)->AppendJournal(e);
    if (!seq.ok()) _exit(4);
    uint64_t msg[2] = {*id, *seq};
    if (write(fds[1], msg, sizeof msg) != sizeof msg) _exit(5);
    for (;;) pause();  // wait for SIGKILL, store still open
  }
  close(fds[1]);
  uint64_t msg[2] = {0, 0};
  ssize_t n = read(fds[0], msg, sizeof msg);
  close(fds[0]);
  kill(pid, SIGKILL);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_EQ(n, static_cast<ssize_t>(sizeof msg))
      << "child exited with " << (WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGKILL);

  auto store = Open();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<std::optional<StoredObject>> got = store->GetObject(msg[0]);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(got->has_value());
  EXPECT_EQ((*got)->label, "crash-proof");
  EXPECT_EQ((*got)->replicas.size(), 2u);
  absl::StatusOr<std::vector<JournalEntry>> j = store->ListJournal(9, "acked");
  ASSERT_TRUE(j.ok());
  ASSERT_EQ(j->size(), 1u);
  EXPECT_EQ((*j)[0].seq, msg[1]);
}

TEST_F(StateStoreTest, FileModesAndDirectory) {
  mode_t old = umask(022);
  auto store = Open();
  umask(old);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->PutObject(MakeObject(1, "x")).ok());
  struct stat st;
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  // The WAL carries the same data: it must not be wider.
  std::string wal = path_ + "-wal";
  ASSERT_EQ(stat(wal.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  ASSERT_EQ(stat(dir_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0700u);
}

TEST_F(StateStoreTest, ExistingWideFileIsTightened) {
  ASSERT_EQ(system(absl::StrCat("mkdir -p '", dir_, "' && touch '", path_,
                                "' && chmod 644 '", path_, "'")
                       .c_str()),
            0);
  auto store = Open();
  ASSERT_NE(store, nullptr);
  struct stat st;
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
}

TEST_F(StateStoreTest, OpenErrorsNameThePath) {
  // A directory where the database should be.
  ASSERT_EQ(system(absl::StrCat("mkdir -p '", path_, "'").c_str()), 0);
  absl::StatusOr<std::unique_ptr<StateStore>> store =
      OpenSqliteStateStore(path_);
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.status().message().find(path_), std::string::npos)
      << store.status();

  // Not a database.
  std::string junk = root_ + "/junk.db";
  FILE* f = fopen(junk.c_str(), "w");
  ASSERT_NE(f, nullptr);
  fputs("this is certainly not an SQLite database, just some text padding", f);
  fclose(f);
  store = OpenSqliteStateStore(junk);
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.status().message().find(junk), std::string::npos)
      << store.status();

  EXPECT_FALSE(OpenSqliteStateStore("").ok());
}

TEST_F(StateStoreTest, ConcurrentWritersKeepEveryRow) {
  auto store = Open();
  ASSERT_NE(store, nullptr);
  constexpr int kThreads = 8;
  constexpr int kPerThread = 25;
  std::vector<std::vector<uint64_t>> ids(kThreads), seqs(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        StoredObject o = MakeObject(4, absl::StrCat("t", t, "-", i));
        absl::StatusOr<uint64_t> id = store->PutObject(o);
        EXPECT_TRUE(id.ok()) << id.status();
        if (id.ok()) ids[t].push_back(*id);
        JournalEntry e;
        e.slot_id = 4;
        e.logical_id = id.ok() ? *id : 0;
        e.op = "create";
        e.payload = o.label;
        absl::StatusOr<uint64_t> seq = store->AppendJournal(e);
        EXPECT_TRUE(seq.ok()) << seq.status();
        if (seq.ok()) seqs[t].push_back(*seq);
      }
    });
  }
  for (std::thread& th : threads) th.join();

  std::set<uint64_t> all_ids, all_seqs;
  for (int t = 0; t < kThreads; ++t) {
    all_ids.insert(ids[t].begin(), ids[t].end());
    all_seqs.insert(seqs[t].begin(), seqs[t].end());
  }
  EXPECT_EQ(all_ids.size(), size_t{kThreads * kPerThread});
  EXPECT_EQ(all_seqs.size(), size_t{kThreads * kPerThread});

  absl::StatusOr<std::vector<StoredObject>> objects = store->ListObjects(4);
  ASSERT_TRUE(objects.ok());
  ASSERT_EQ(objects->size(), size_t{kThreads * kPerThread});
  for (const StoredObject& o : *objects) {
    EXPECT_EQ(o.replicas.size(), 2u) << o.logical_id;
    EXPECT_EQ(all_ids.count(o.logical_id), 1u);
  }
  absl::StatusOr<std::vector<JournalEntry>> journal =
      store->ListJournal(4, "pending");
  ASSERT_TRUE(journal.ok());
  ASSERT_EQ(journal->size(), size_t{kThreads * kPerThread});
  for (size_t i = 1; i < journal->size(); ++i) {
    EXPECT_LT((*journal)[i - 1].seq, (*journal)[i].seq);
  }
}

}  // namespace
}  // namespace hsmux::agent
