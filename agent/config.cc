#include "config.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <map>
#include <new>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "pin_hash.h"

namespace hsmux::agent {
namespace {

// A config is a few kilobytes; refusing anything huge keeps a wrong path
// (a log file, a device) from being slurped into memory.
constexpr size_t kMaxConfigBytes = size_t{1} << 20;
// PINs longer than this are certainly a wrong file, not a PIN.
constexpr size_t kMaxPinBytes = 255;
// How much of a pin_file is read to find its first line.
constexpr size_t kPinFileReadBytes = 4096;

// Field lengths fixed by CK_TOKEN_INFO / CK_SLOT_INFO (blank-padded arrays).
constexpr size_t kLabelLen = 32;
constexpr size_t kSerialLen = 16;
constexpr size_t kModelLen = 16;
constexpr size_t kManufacturerLen = 32;
constexpr size_t kSlotDescriptionLen = 64;
// Member names go into logs and metric labels: short and tame.
constexpr size_t kMemberNameLen = 64;
// X.509 ub-common-name.
constexpr size_t kCommonNameLen = 64;
constexpr size_t kSanLen = 1024;
constexpr size_t kPathLen = 4096;

// Handles, slot IDs included, stay below 2^32 because CK_ULONG is 32 bits on
// Windows (DESIGN.md §2).
constexpr uint64_t kMaxSlotId = 0xffffffffu;

// Shortens and sanitises text copied from the config into a message (key
// names only; values are never echoed, they might be secrets).
std::string Printable(absl::string_view text) {
  std::string out;
  for (char c : text) {
    if (out.size() >= 40) {
      out += "...";
      break;
    }
    const unsigned char u = static_cast<unsigned char>(c);
    out += (u >= 0x20 && u < 0x7f) ? c : '?';
  }
  return out;
}

// yaml-cpp throws from Node::Mark() on an invalid (zombie) node; this never
// does.
YAML::Mark MarkOf(const YAML::Node& node) {
  if (!node.IsDefined()) return YAML::Mark::null_mark();
  return node.Mark();
}

// Reads a whole regular file of at most `max_bytes` bytes.
absl::Status ReadSmallFile(const std::string& path, size_t max_bytes, std::string* out) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is larger than ", max_bytes, " bytes"));
  }
  out->clear();
  char buf[4096];
  while (true) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      close(fd);
      return absl::InternalError(absl::StrCat("cannot read ", path, ": ", std::strerror(err)));
    }
    if (n == 0) break;
    if (out->size() + static_cast<size_t>(n) > max_bytes) {
      close(fd);
      return absl::InvalidArgumentError(
          absl::StrCat(path, " is larger than ", max_bytes, " bytes"));
    }
    out->append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return absl::OkStatus();
}

// The first line of a PIN file, trailing "\n" / "\r\n" stripped. Messages
// name the file, never its content.
absl::Status ReadPinFile(const std::string& path, std::string* pin) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  struct stat st;
  // A FIFO or device would block the agent's start or never end.
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  }
  char buf[kPinFileReadBytes];
  size_t len = 0;
  while (len < sizeof buf) {
    ssize_t n = read(fd, buf + len, sizeof buf - len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      close(fd);
      OPENSSL_cleanse(buf, sizeof buf);
      return absl::InternalError(absl::StrCat("cannot read ", path, ": ", std::strerror(err)));
    }
    if (n == 0) break;
    len += static_cast<size_t>(n);
  }
  close(fd);
  absl::string_view content(buf, len);
  size_t eol = content.find('\n');
  absl::string_view line = content.substr(0, eol);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  absl::Status status = absl::OkStatus();
  if (line.empty()) {
    status = absl::InvalidArgumentError(absl::StrCat(path, ": first line (the PIN) is empty"));
  } else if (line.size() > kMaxPinBytes) {
    status = absl::InvalidArgumentError(
        absl::StrCat(path, ": first line (the PIN) is longer than ", kMaxPinBytes, " bytes"));
  } else {
    pin->assign(line.data(), line.size());
  }
  OPENSSL_cleanse(buf, sizeof buf);
  return status;
}

bool IsEnvName(absl::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
    const bool digit = c >= '0' && c <= '9';
    if (!alpha && !(digit && i > 0)) return false;
  }
  return true;
}

bool IsMemberName(absl::string_view name) {
  for (char c : name) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-' || c == '.';
    if (!ok) return false;
  }
  return true;
}

// One key of a mapping, with where it was.
struct Entry {
  std::string key;
  YAML::Mark key_mark;
  YAML::Node value;

  // Where to point at the value. An empty value ("tls:") has no position of
  // its own (yaml-cpp reports the next token's), so point at the key.
  YAML::Mark ValueMark() const { return value.IsNull() ? key_mark : MarkOf(value); }
};

// A mapping whose keys have been checked against the schema: no unknown
// keys, no duplicates.
struct Map {
  std::string path;  // "groups[0]"; empty for the top level
  YAML::Mark mark;
  std::vector<Entry> entries;

  const Entry* Find(absl::string_view key) const {
    for (const Entry& e : entries) {
      if (e.key == key) return &e;
    }
    return nullptr;
  }
  std::string PathOf(absl::string_view key) const {
    return path.empty() ? std::string(key) : absl::StrCat(path, ".", key);
  }
};

enum class Need { kRequired, kOptional };

enum class PathKind { kFile, kDirectory, kAny };

class Loader {
 public:
  explicit Loader(std::string file) : file_(std::move(file)) {}

  // "file:line: path: reason" (line and path left out when unknown).
  absl::Status Error(const YAML::Mark& mark, absl::string_view path,
                     absl::string_view reason) const {
    std::string msg = file_;
    if (!mark.is_null()) absl::StrAppend(&msg, ":", mark.line + 1);
    absl::StrAppend(&msg, ": ");
    if (!path.empty()) absl::StrAppend(&msg, path, ": ");
    absl::StrAppend(&msg, reason);
    return absl::InvalidArgumentError(msg);
  }

  // Sees only where documents start (yaml-cpp's public event interface).
  class DocumentStarts : public YAML::EventHandler {
   public:
    std::vector<YAML::Mark> starts;
    void OnDocumentStart(const YAML::Mark& mark) override { starts.push_back(mark); }
    void OnDocumentEnd() override {}
    void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
    void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
    void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  const std::string&) override {}
    void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                         YAML::EmitterStyle::value) override {}
    void OnSequenceEnd() override {}
    void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                    YAML::EmitterStyle::value) override {}
    void OnMapEnd() override {}
  };

  absl::Status CheckDocumentCount(const std::string& text) {
    std::istringstream in(text);
    YAML::Parser parser(in);
    DocumentStarts handler;
    while (handler.starts.size() < 2 && parser.HandleNextDocument(handler)) {
    }
    if (handler.starts.size() < 2) return absl::OkStatus();
    const YAML::Mark& first = handler.starts[0];
    const YAML::Mark& second = handler.starts[1];
    if (second.pos == first.pos) {
      return Error(first, "", "not valid YAML (the parser cannot get past this point)");
    }
    return Error(second, "", "more than one YAML document; expected exactly one");
  }

  absl::Status Load(AgentConfig* config) {
    std::string text;
    if (absl::Status s = ReadSmallFile(file_, kMaxConfigBytes, &text); !s.ok()) {
      return absl::Status(s.code(), s.message());
    }
    // yaml-cpp 0.7's LoadAll never returns on some malformed input (a file
    // holding just ","): its parser hands out empty documents without
    // consuming anything, and LoadAll collects them until memory runs out
    // (found by fuzz/fuzz_agent_config). So count the documents first, in a
    // bounded loop; with at most one, LoadAll's identical parse ends too.
    if (absl::Status s = CheckDocumentCount(text); !s.ok()) return s;
    // LoadAll, so that a stray "---" does not silently drop the rest.
    std::vector<YAML::Node> docs = YAML::LoadAll(text);
    if (docs.empty() || docs[0].IsNull()) {
      return Error(YAML::Mark::null_mark(), "", "config is empty");
    }
    if (docs.size() > 1) {
      return Error(MarkOf(docs[1]), "", "more than one YAML document; expected exactly one");
    }
    return LoadTop(docs[0], config);
  }

 private:
  absl::Status ReadMap(const YAML::Node& node, std::string path,
                       std::initializer_list<absl::string_view> allowed, Map* map) const {
    if (!node.IsMap()) {
      return Error(MarkOf(node), path, "must be a mapping");
    }
    map->path = std::move(path);
    map->mark = MarkOf(node);
    for (auto it = node.begin(); it != node.end(); ++it) {
      // Copies: it-> yields a proxy that dies at the end of the statement.
      const YAML::Node key = it->first;
      const YAML::Node value = it->second;
      if (!key.IsScalar()) {
        return Error(MarkOf(key), map->path, "keys must be plain names");
      }
      const std::string& name = key.Scalar();
      bool known = false;
      for (absl::string_view a : allowed) known = known || a == name;
      if (!known) {
        std::string reason =
            absl::StrCat("unknown key '", Printable(name),
                         "' (expected one of: ", absl::StrJoin(allowed, ", "), ")");
        if (name == "pin" || name == "user_pin" || name == "password") {
          // Someone tried to put a secret inline: say where it belongs.
          reason = absl::StrCat("unknown key '", name,
                                "'; PINs are given with pin_file or pin_env "
                                "(members) or pin_hash (clients)");
        }
        return Error(MarkOf(key), map->path, reason);
      }
      if (map->Find(name) != nullptr) {
        return Error(MarkOf(key), map->path, absl::StrCat("duplicate key '", name, "'"));
      }
      map->entries.push_back(Entry{name, MarkOf(key), value});
    }
    return absl::OkStatus();
  }

  absl::Status Missing(const Map& map, absl::string_view key) const {
    return Error(map.mark, map.path, absl::StrCat(key, " is required"));
  }

  // A string field. `max_len` in bytes; `padded` for Cryptoki's blank-padded
  // fields, where a trailing blank would be lost.
  absl::Status GetString(const Map& map, absl::string_view key, Need need, size_t max_len,
                         bool padded, std::string* out, bool* present = nullptr) const {
    if (present != nullptr) *present = false;
    const Entry* e = map.Find(key);
    if (e == nullptr || e->value.IsNull()) {
      if (need == Need::kOptional) return absl::OkStatus();
      return e == nullptr ? Missing(map, key)
                          : Error(e->key_mark, map.PathOf(key), "must not be empty");
    }
    const std::string path = map.PathOf(key);
    if (!e->value.IsScalar()) {
      return Error(e->ValueMark(), path, "must be a string");
    }
    const std::string& value = e->value.Scalar();
    if (value.empty()) {
      return Error(e->ValueMark(), path, "must not be empty");
    }
    if (value.size() > max_len) {
      return Error(e->ValueMark(), path,
                   absl::StrCat("must be at most ", max_len, " bytes (is ", value.size(), ")"));
    }
    for (char c : value) {
      const unsigned char u = static_cast<unsigned char>(c);
      if (u < 0x20 || u == 0x7f) {
        return Error(e->ValueMark(), path, "must not contain control characters");
      }
    }
    if (padded && (value.back() == ' ' || value.front() == ' ')) {
      return Error(e->ValueMark(), path,
                   "must not begin or end with a blank (Cryptoki pads it "
                   "with blanks)");
    }
    *out = value;
    if (present != nullptr) *present = true;
    return absl::OkStatus();
  }

  // An absolute path; with kFile/kDirectory it must exist and (for files)
  // be readable by us.
  absl::Status GetPath(const Map& map, absl::string_view key, Need need, PathKind kind,
                       std::string* out, bool* present = nullptr) const {
    bool here = false;
    if (absl::Status s = GetString(map, key, need, kPathLen, false, out, &here); !s.ok() || !here) {
      if (present != nullptr) *present = false;
      return s;
    }
    if (present != nullptr) *present = true;
    const Entry* e = map.Find(key);
    const std::string path = map.PathOf(key);
    if ((*out)[0] != '/') {
      return Error(e->ValueMark(), path, "must be an absolute path");
    }
    if (kind == PathKind::kAny) return absl::OkStatus();
    struct stat st;
    if (stat(out->c_str(), &st) != 0) {
      return Error(e->ValueMark(), path,
                   absl::StrCat("cannot use ", *out, ": ", std::strerror(errno)));
    }
    if (kind == PathKind::kFile) {
      if (!S_ISREG(st.st_mode)) {
        return Error(e->ValueMark(), path, absl::StrCat(*out, " is not a regular file"));
      }
      if (access(out->c_str(), R_OK) != 0) {
        return Error(e->ValueMark(), path,
                     absl::StrCat("cannot read ", *out, ": ", std::strerror(errno)));
      }
    } else if (!S_ISDIR(st.st_mode)) {
      return Error(e->ValueMark(), path, absl::StrCat(*out, " is not a directory"));
    }
    return absl::OkStatus();
  }

  // A decimal integer in [min, max]; left as is when optional and absent.
  absl::Status GetUint(const Map& map, absl::string_view key, Need need, uint64_t min, uint64_t max,
                       uint64_t* out) const {
    const Entry* e = map.Find(key);
    if (e == nullptr) {
      return need == Need::kOptional ? absl::OkStatus() : Missing(map, key);
    }
    const std::string path = map.PathOf(key);
    const std::string range = absl::StrCat("an integer from ", min, " to ", max);
    if (!e->value.IsScalar()) {
      return Error(e->ValueMark(), path, absl::StrCat("must be ", range));
    }
    const std::string& text = e->value.Scalar();
    uint64_t v = 0;
    bool ok = !text.empty() && text.size() <= 20;
    for (char c : text) {
      if (!ok) break;
      if (c < '0' || c > '9') {
        ok = false;
        break;
      }
      const uint64_t digit = static_cast<uint64_t>(c - '0');
      if (v > (UINT64_MAX - digit) / 10) {
        ok = false;
        break;
      }
      v = v * 10 + digit;
    }
    if (!ok || v < min || v > max) {
      return Error(e->ValueMark(), path, absl::StrCat("must be ", range));
    }
    *out = v;
    return absl::OkStatus();
  }

  // A required, non-empty sequence field.
  absl::Status GetSequence(const Map& map, absl::string_view key, const YAML::Node** out) const {
    const Entry* e = map.Find(key);
    if (e == nullptr) return Missing(map, key);
    if (!e->value.IsSequence() || e->value.size() == 0) {
      return Error(e->value.IsSequence() ? e->ValueMark() : e->key_mark, map.PathOf(key),
                   "must be a non-empty list");
    }
    *out = &e->value;
    return absl::OkStatus();
  }

  absl::Status LoadListen(const Map& top, AgentConfig* config) const {
    bool present = false;
    std::string listen;
    if (absl::Status s = GetString(top, "listen", Need::kOptional, 300, false, &listen, &present);
        !s.ok() || !present) {
      return s;
    }
    const YAML::Mark mark = top.Find("listen")->ValueMark();
    const absl::string_view reason = "must be host:port, e.g. 127.0.0.1:7443 or [::1]:7443";
    const size_t colon = listen.rfind(':');
    if (colon == std::string::npos || colon == 0) {
      return Error(mark, "listen", reason);
    }
    absl::string_view host = absl::string_view(listen).substr(0, colon);
    absl::string_view port = absl::string_view(listen).substr(colon + 1);
    if (host.front() == '[' ? host.back() != ']' || host.size() < 3
                            : host.find(':') != absl::string_view::npos) {
      return Error(mark, "listen", reason);
    }
    uint32_t p = 0;
    bool ok = !port.empty() && port.size() <= 5;
    for (char c : port) {
      ok = ok && c >= '0' && c <= '9';
      if (ok) p = p * 10 + static_cast<uint32_t>(c - '0');
    }
    if (!ok || p == 0 || p > 65535) return Error(mark, "listen", reason);
    config->listen = listen;
    return absl::OkStatus();
  }

  absl::Status LoadTls(const Map& top, TlsConfig* tls) const {
    const Entry* e = top.Find("tls");
    if (e == nullptr) return Missing(top, "tls");
    Map map;
    if (e->value.IsNull()) return Error(e->key_mark, "tls", "must be a mapping");
    if (absl::Status s = ReadMap(e->value, "tls", {"ca", "cert", "key"}, &map); !s.ok()) {
      return s;
    }
    if (absl::Status s = GetPath(map, "ca", Need::kRequired, PathKind::kFile, &tls->ca_file);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = GetPath(map, "cert", Need::kRequired, PathKind::kFile, &tls->cert_file);
        !s.ok()) {
      return s;
    }
    return GetPath(map, "key", Need::kRequired, PathKind::kFile, &tls->key_file);
  }

  absl::Status LoadMember(const YAML::Node& node, const std::string& path,
                          MemberConfig* member) const {
    Map map;
    if (absl::Status s = ReadMap(
            node, path, {"name", "library", "token_label", "token_serial", "pin_file", "pin_env"},
            &map);
        !s.ok()) {
      return s;
    }
    if (absl::Status s =
            GetString(map, "name", Need::kRequired, kMemberNameLen, false, &member->name);
        !s.ok()) {
      return s;
    }
    if (!IsMemberName(member->name)) {
      return Error(map.Find("name")->ValueMark(), map.PathOf("name"),
                   "may contain only letters, digits, '_', '-' and '.'");
    }
    if (absl::Status s =
            GetPath(map, "library", Need::kRequired, PathKind::kFile, &member->library);
        !s.ok()) {
      return s;
    }
    bool has_label = false;
    bool has_serial = false;
    if (absl::Status s = GetString(map, "token_label", Need::kOptional, kLabelLen, true,
                                   &member->token_label, &has_label);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = GetString(map, "token_serial", Need::kOptional, kSerialLen, true,
                                   &member->token_serial, &has_serial);
        !s.ok()) {
      return s;
    }
    if (!has_label && !has_serial) {
      return Error(map.mark, path, "token_label or token_serial is required");
    }
    // The PIN itself: from a file or the environment, exactly one.
    const bool has_file = map.Find("pin_file") != nullptr;
    const bool has_env = map.Find("pin_env") != nullptr;
    if (has_file == has_env) {
      return Error(map.mark, path, "exactly one of pin_file and pin_env is required");
    }
    if (has_file) {
      std::string pin_file;
      if (absl::Status s = GetPath(map, "pin_file", Need::kRequired, PathKind::kAny, &pin_file);
          !s.ok()) {
        return s;
      }
      if (absl::Status s = ReadPinFile(pin_file, &member->pin); !s.ok()) {
        return Error(map.Find("pin_file")->ValueMark(), map.PathOf("pin_file"), s.message());
      }
      return absl::OkStatus();
    }
    std::string env;
    if (absl::Status s = GetString(map, "pin_env", Need::kRequired, 255, false, &env); !s.ok()) {
      return s;
    }
    const YAML::Mark mark = map.Find("pin_env")->ValueMark();
    if (!IsEnvName(env)) {
      return Error(mark, map.PathOf("pin_env"),
                   "must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)");
    }
    const char* value = std::getenv(env.c_str());
    if (value == nullptr) {
      return Error(mark, map.PathOf("pin_env"),
                   absl::StrCat("environment variable ", env, " is not set"));
    }
    const size_t len = std::strlen(value);
    if (len == 0 || len > kMaxPinBytes) {
      return Error(
          mark, map.PathOf("pin_env"),
          absl::StrCat(
              "environment variable ", env,
              len == 0 ? " is empty" : absl::StrCat(" is longer than ", kMaxPinBytes, " bytes")));
    }
    member->pin.assign(value, len);
    return absl::OkStatus();
  }

  absl::Status LoadGroup(const YAML::Node& node, const std::string& path,
                         GroupConfig* group) const {
    Map map;
    if (absl::Status s =
            ReadMap(node, path,
                    {"slot_id", "label", "serial", "model", "manufacturer", "slot_description",
                     "replication", "pool_min_sessions", "pool_max_sessions", "pool_wait_ms",
                     "external_wait_ms", "call_timeout_ms", "keygen_timeout_ms",
                     "probe_interval_ms", "probe_timeout_ms", "replay_buffer_bytes", "members"},
                    &map);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = GetUint(map, "slot_id", Need::kRequired, 0, kMaxSlotId, &group->slot_id);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = GetString(map, "label", Need::kRequired, kLabelLen, true, &group->label);
        !s.ok()) {
      return s;
    }
    if (absl::Status s =
            GetString(map, "serial", Need::kRequired, kSerialLen, true, &group->serial);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = GetString(map, "model", Need::kOptional, kModelLen, true, &group->model);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = GetString(map, "manufacturer", Need::kOptional, kManufacturerLen, true,
                                   &group->manufacturer);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = GetString(map, "slot_description", Need::kOptional, kSlotDescriptionLen,
                                   true, &group->slot_description);
        !s.ok()) {
      return s;
    }
    bool has_replication = false;
    if (absl::Status s = GetString(map, "replication", Need::kOptional, 16, false,
                                   &group->replication, &has_replication);
        !s.ok()) {
      return s;
    }
    if (group->replication != "wrap" && group->replication != "external" &&
        group->replication != "none") {
      const Entry* e = map.Find("replication");
      return Error(e != nullptr ? e->key_mark : YAML::Mark(), map.PathOf("replication"),
                   "must be one of wrap, external, none");
    }
    uint64_t pool_min = group->pool_min_sessions, pool_max = group->pool_max_sessions,
             pool_wait = group->pool_wait_ms;
    if (absl::Status s = GetUint(map, "pool_min_sessions", Need::kOptional, 0, 1024, &pool_min);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = GetUint(map, "pool_max_sessions", Need::kOptional, 2, 4096, &pool_max);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = GetUint(map, "pool_wait_ms", Need::kOptional, 1, 600000, &pool_wait);
        !s.ok()) {
      return s;
    }
    if (pool_min >= pool_max) {
      const Entry* e = map.Find("pool_min_sessions");
      return Error(e != nullptr ? e->key_mark : YAML::Mark(), map.PathOf("pool_min_sessions"),
                   "must be below pool_max_sessions");
    }
    uint64_t external_wait = group->external_wait_ms;
    if (absl::Status s =
            GetUint(map, "external_wait_ms", Need::kOptional, 0, 600000, &external_wait);
        !s.ok()) {
      return s;
    }
    group->external_wait_ms = static_cast<uint32_t>(external_wait);
    struct Limit {
      const char* key;
      uint64_t min, max;
      uint32_t* field;
    };
    for (const Limit& l :
         {Limit{"call_timeout_ms", 10, 600000, &group->call_timeout_ms},
          Limit{"keygen_timeout_ms", 100, 3600000, &group->keygen_timeout_ms},
          Limit{"probe_interval_ms", 50, 600000, &group->probe_interval_ms},
          Limit{"probe_timeout_ms", 10, 600000, &group->probe_timeout_ms},
          Limit{"replay_buffer_bytes", 0, 1u << 30, &group->replay_buffer_bytes}}) {
      uint64_t v = *l.field;
      if (absl::Status s = GetUint(map, l.key, Need::kOptional, l.min, l.max, &v); !s.ok()) {
        return s;
      }
      *l.field = static_cast<uint32_t>(v);
    }
    group->pool_min_sessions = static_cast<uint32_t>(pool_min);
    group->pool_max_sessions = static_cast<uint32_t>(pool_max);
    group->pool_wait_ms = static_cast<uint32_t>(pool_wait);
    const YAML::Node* members = nullptr;
    if (absl::Status s = GetSequence(map, "members", &members); !s.ok()) {
      return s;
    }
    std::map<std::string, std::string> names;  // name -> path of first use
    size_t i = 0;
    for (auto it = members->begin(); it != members->end(); ++it, ++i) {
      const std::string member_path = absl::StrCat(path, ".members[", i, "]");
      MemberConfig& member = group->members.emplace_back();
      if (absl::Status s = LoadMember(*it, member_path, &member); !s.ok()) {
        return s;
      }
      auto [first, inserted] = names.emplace(member.name, member_path);
      if (!inserted) {
        return Error(
            MarkOf((*it)["name"]), member_path + ".name",
            absl::StrCat("duplicate member name '", member.name, "' (also ", first->second, ")"));
      }
    }
    return absl::OkStatus();
  }

  absl::Status LoadClient(const YAML::Node& node, const std::string& path,
                          const std::set<uint64_t>& slots, ClientConfig* client) const {
    Map map;
    if (absl::Status s = ReadMap(node, path, {"common_name", "san", "groups"}, &map); !s.ok()) {
      return s;
    }
    bool has_cn = false;
    bool has_san = false;
    if (absl::Status s = GetString(map, "common_name", Need::kOptional, kCommonNameLen, false,
                                   &client->common_name, &has_cn);
        !s.ok()) {
      return s;
    }
    if (absl::Status s =
            GetString(map, "san", Need::kOptional, kSanLen, false, &client->san, &has_san);
        !s.ok()) {
      return s;
    }
    if (!has_cn && !has_san) {
      return Error(map.mark, path, "common_name or san is required");
    }
    const YAML::Node* groups = nullptr;
    if (absl::Status s = GetSequence(map, "groups", &groups); !s.ok()) {
      return s;
    }
    std::set<uint64_t> seen;
    size_t i = 0;
    for (auto it = groups->begin(); it != groups->end(); ++it, ++i) {
      const std::string access_path = absl::StrCat(path, ".groups[", i, "]");
      Map access_map;
      if (absl::Status s =
              ReadMap(*it, access_path,
                      {"slot_id", "pin_hash", "allowed_keys", "allowed_mechanisms"}, &access_map);
          !s.ok()) {
        return s;
      }
      GroupAccess& access = client->groups.emplace_back();
      if (absl::Status s =
              GetUint(access_map, "slot_id", Need::kRequired, 0, kMaxSlotId, &access.slot_id);
          !s.ok()) {
        return s;
      }
      const YAML::Mark slot_mark = access_map.Find("slot_id")->ValueMark();
      if (slots.count(access.slot_id) == 0) {
        return Error(slot_mark, access_path + ".slot_id",
                     absl::StrCat("no group has slot_id ", access.slot_id));
      }
      if (!seen.insert(access.slot_id).second) {
        return Error(slot_mark, access_path + ".slot_id",
                     absl::StrCat("slot_id ", access.slot_id, " is listed twice for this client"));
      }
      if (absl::Status s =
              GetString(access_map, "pin_hash", Need::kRequired, 1024, false, &access.pin_hash);
          !s.ok()) {
        return s;
      }
      if (absl::Status s = ValidatePinHash(access.pin_hash); !s.ok()) {
        return Error(access_map.Find("pin_hash")->ValueMark(), access_path + ".pin_hash",
                     absl::StrCat(s.message(), " (make one with: hsmuxctl hash-pin)"));
      }
      for (const auto& [key, out] :
           {std::make_pair("allowed_keys", &access.allowed_keys),
            std::make_pair("allowed_mechanisms", &access.allowed_mechanisms)}) {
        const Entry* e = access_map.Find(key);
        if (e == nullptr) continue;
        const YAML::Node* list = nullptr;
        if (absl::Status s = GetSequence(access_map, key, &list); !s.ok()) return s;
        for (const auto& item : *list) {
          if (!item.IsScalar() || item.Scalar().empty()) {
            return Error(item.Mark(), access_path + "." + key, "entries must be non-empty strings");
          }
          out->push_back(item.Scalar());
        }
      }
    }
    return absl::OkStatus();
  }

  absl::Status LoadTop(const YAML::Node& root, AgentConfig* config) const {
    Map top;
    if (absl::Status s =
            ReadMap(root, "",
                    {"listen", "tls", "state_dir", "lease_seconds", "max_sessions_per_instance",
                     "max_pin_failures", "metrics_listen", "audit_log", "max_template_attributes",
                     "max_attribute_bytes", "max_objects_per_instance", "max_concurrent_calls",
                     "max_streams", "listen_unix", "groups", "clients"},
                    &top);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = LoadListen(top, config); !s.ok()) return s;
    if (absl::Status s =
            GetPath(top, "listen_unix", Need::kOptional, PathKind::kAny, &config->listen_unix);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = LoadTls(top, &config->tls); !s.ok()) return s;
    // state_dir may not exist yet: the agent (or systemd) creates it.
    if (absl::Status s =
            GetPath(top, "state_dir", Need::kOptional, PathKind::kAny, &config->state_dir);
        !s.ok()) {
      return s;
    }
    if (absl::Status s =
            GetString(top, "metrics_listen", Need::kOptional, 256, false, &config->metrics_listen);
        !s.ok()) {
      return s;
    }
    if (absl::Status s =
            GetString(top, "audit_log", Need::kOptional, 4096, false, &config->audit_log);
        !s.ok()) {
      return s;
    }
    struct TopLimit {
      const char* key;
      uint64_t min, max;
      uint32_t* field;
    };
    for (const TopLimit& l :
         {TopLimit{"max_template_attributes", 1, 100000, &config->max_template_attributes},
          TopLimit{"max_attribute_bytes", 16, 64u << 20, &config->max_attribute_bytes},
          TopLimit{"max_objects_per_instance", 1, 100000000, &config->max_objects_per_instance},
          TopLimit{"max_concurrent_calls", 4, 100000, &config->max_concurrent_calls}}) {
      uint64_t v = *l.field;
      if (absl::Status s = GetUint(top, l.key, Need::kOptional, l.min, l.max, &v); !s.ok()) {
        return s;
      }
      *l.field = static_cast<uint32_t>(v);
    }
    uint64_t streams = config->max_concurrent_calls / 2;
    if (absl::Status s =
            GetUint(top, "max_streams", Need::kOptional, 0, config->max_concurrent_calls, &streams);
        !s.ok()) {
      return s;
    }
    config->max_streams = static_cast<uint32_t>(streams);
    uint64_t failures = config->max_pin_failures;
    if (absl::Status s = GetUint(top, "max_pin_failures", Need::kOptional, 1, 100, &failures);
        !s.ok()) {
      return s;
    }
    config->max_pin_failures = static_cast<uint32_t>(failures);
    uint64_t v = config->lease_seconds;
    if (absl::Status s = GetUint(top, "lease_seconds", Need::kOptional, 5, 3600, &v); !s.ok()) {
      return s;
    }
    config->lease_seconds = static_cast<uint32_t>(v);
    v = config->max_sessions_per_instance;
    if (absl::Status s = GetUint(top, "max_sessions_per_instance", Need::kOptional, 1, 1000000, &v);
        !s.ok()) {
      return s;
    }
    config->max_sessions_per_instance = static_cast<uint32_t>(v);

    const YAML::Node* groups = nullptr;
    if (absl::Status s = GetSequence(top, "groups", &groups); !s.ok()) {
      return s;
    }
    // Slots are selected by ID, label or serial (DESIGN.md §2): each must
    // name exactly one group.
    std::map<uint64_t, std::string> slot_ids;
    std::map<std::string, std::string> labels;
    std::map<std::string, std::string> serials;
    size_t i = 0;
    for (auto it = groups->begin(); it != groups->end(); ++it, ++i) {
      const std::string path = absl::StrCat("groups[", i, "]");
      GroupConfig& group = config->groups.emplace_back();
      if (absl::Status s = LoadGroup(*it, path, &group); !s.ok()) return s;
      if (auto [first, ok] = slot_ids.emplace(group.slot_id, path); !ok) {
        return Error(
            MarkOf((*it)["slot_id"]), path + ".slot_id",
            absl::StrCat("duplicate slot_id ", group.slot_id, " (also ", first->second, ")"));
      }
      if (auto [first, ok] = labels.emplace(group.label, path); !ok) {
        return Error(
            MarkOf((*it)["label"]), path + ".label",
            absl::StrCat("duplicate label '", group.label, "' (also ", first->second, ")"));
      }
      if (auto [first, ok] = serials.emplace(group.serial, path); !ok) {
        return Error(
            MarkOf((*it)["serial"]), path + ".serial",
            absl::StrCat("duplicate serial '", group.serial, "' (also ", first->second, ")"));
      }
    }
    std::set<uint64_t> slots;
    for (const auto& [id, unused] : slot_ids) slots.insert(id);

    const YAML::Node* clients = nullptr;
    if (absl::Status s = GetSequence(top, "clients", &clients); !s.ok()) {
      return s;
    }
    // An identity must select one client entry, or which PIN applies would
    // depend on the order of the list.
    std::map<std::string, std::string> cns;
    std::map<std::string, std::string> sans;
    i = 0;
    for (auto it = clients->begin(); it != clients->end(); ++it, ++i) {
      const std::string path = absl::StrCat("clients[", i, "]");
      ClientConfig& client = config->clients.emplace_back();
      if (absl::Status s = LoadClient(*it, path, slots, &client); !s.ok()) {
        return s;
      }
      if (!client.common_name.empty()) {
        if (auto [first, ok] = cns.emplace(client.common_name, path); !ok) {
          return Error(MarkOf((*it)["common_name"]), path + ".common_name",
                       absl::StrCat("duplicate common_name '", client.common_name, "' (also ",
                                    first->second, ")"));
        }
      }
      if (!client.san.empty()) {
        if (auto [first, ok] = sans.emplace(client.san, path); !ok) {
          return Error(MarkOf((*it)["san"]), path + ".san",
                       absl::StrCat("duplicate san '", client.san, "' (also ", first->second, ")"));
        }
      }
    }
    return absl::OkStatus();
  }

  std::string file_;
};

void WipePins(AgentConfig* config) {
  for (GroupConfig& group : config->groups) {
    for (MemberConfig& member : group.members) {
      if (!member.pin.empty()) {
        OPENSSL_cleanse(member.pin.data(), member.pin.size());
      }
      member.pin.clear();
    }
  }
}

}  // namespace

absl::StatusOr<AgentConfig> LoadAgentConfig(const std::string& path) {
  AgentConfig config;
  absl::Status status;
  // yaml-cpp reports errors by throwing (parse errors, bad conversions,
  // invalid nodes) and the standard library may throw bad_alloc. Nothing may
  // escape into the agent, so everything is turned into a status here.
  try {
    status = Loader(path).Load(&config);
  } catch (const YAML::Exception& e) {
    std::string msg = path;
    if (!e.mark.is_null()) absl::StrAppend(&msg, ":", e.mark.line + 1);
    // e.msg, not e.what(): what() repeats the position in its own words.
    absl::StrAppend(&msg, ": ", e.msg);
    status = absl::InvalidArgumentError(msg);
  } catch (const std::bad_alloc&) {
    status = absl::ResourceExhaustedError(
        absl::StrCat(path, ": out of memory while loading the config"));
  } catch (const std::exception& e) {
    status = absl::InternalError(absl::StrCat(path, ": unexpected error: ", e.what()));
  } catch (...) {
    status = absl::InternalError(absl::StrCat(path, ": unexpected error while loading the config"));
  }
  if (!status.ok()) {
    // A half-loaded config may already hold member PINs.
    WipePins(&config);
    return status;
  }
  return config;
}

}  // namespace hsmux::agent
