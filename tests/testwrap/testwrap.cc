// libhsmux-testwrap.so: a PKCS#11 library that wraps another one (SoftHSMv2
// in the tests) and is the independent witness and fault injector for the
// pool, routing and HA tests (DESIGN.md §8). File formats: README.md.
//
// All 68 C_* entry points are generated from the project's function table.
// Session handles are the wrapper's own (never reused), mapped to the
// target's handles, so that sessions lost to a power-off stay invalid even
// when the target hands out the same numbers again.
#include <dlfcn.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <shared_mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "testwrap_files.h"
#include "wire/cryptoki.h"
#include "wire/function_table.h"

// --- Argument names from the table's parameter lists --------------------
// TW_NAMES(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData) -> hSession, pData
// by pasting TW_STRIP_ onto each parameter's type. A type the table starts
// using without a line here fails to compile.
#define TW_STRIP_CK_ATTRIBUTE_PTR
#define TW_STRIP_CK_BBOOL
#define TW_STRIP_CK_BYTE_PTR
#define TW_STRIP_CK_FLAGS
#define TW_STRIP_CK_FUNCTION_LIST_PTR_PTR
#define TW_STRIP_CK_INFO_PTR
#define TW_STRIP_CK_MECHANISM_INFO_PTR
#define TW_STRIP_CK_MECHANISM_PTR
#define TW_STRIP_CK_MECHANISM_TYPE
#define TW_STRIP_CK_MECHANISM_TYPE_PTR
#define TW_STRIP_CK_NOTIFY
#define TW_STRIP_CK_OBJECT_HANDLE
#define TW_STRIP_CK_OBJECT_HANDLE_PTR
#define TW_STRIP_CK_SESSION_HANDLE
#define TW_STRIP_CK_SESSION_HANDLE_PTR
#define TW_STRIP_CK_SESSION_INFO_PTR
#define TW_STRIP_CK_SLOT_ID
#define TW_STRIP_CK_SLOT_ID_PTR
#define TW_STRIP_CK_SLOT_INFO_PTR
#define TW_STRIP_CK_TOKEN_INFO_PTR
#define TW_STRIP_CK_ULONG
#define TW_STRIP_CK_ULONG_PTR
#define TW_STRIP_CK_USER_TYPE
#define TW_STRIP_CK_UTF8CHAR_PTR
#define TW_STRIP_CK_VOID_PTR

#define TW_NAME(p) TW_STRIP_##p
#define TW_CAT_(a, b) a##b
#define TW_CAT(a, b) TW_CAT_(a, b)
#define TW_NARGS_(_1, _2, _3, _4, _5, _6, _7, _8, N, ...) N
#define TW_NARGS(...) TW_NARGS_(__VA_ARGS__, 8, 7, 6, 5, 4, 3, 2, 1, 0)
#define TW_NAMES_1(a) TW_NAME(a)
#define TW_NAMES_2(a, ...) TW_NAME(a), TW_NAMES_1(__VA_ARGS__)
#define TW_NAMES_3(a, ...) TW_NAME(a), TW_NAMES_2(__VA_ARGS__)
#define TW_NAMES_4(a, ...) TW_NAME(a), TW_NAMES_3(__VA_ARGS__)
#define TW_NAMES_5(a, ...) TW_NAME(a), TW_NAMES_4(__VA_ARGS__)
#define TW_NAMES_6(a, ...) TW_NAME(a), TW_NAMES_5(__VA_ARGS__)
#define TW_NAMES_7(a, ...) TW_NAME(a), TW_NAMES_6(__VA_ARGS__)
#define TW_NAMES_8(a, ...) TW_NAME(a), TW_NAMES_7(__VA_ARGS__)
#define TW_NAMES(...) TW_CAT(TW_NAMES_, TW_NARGS(__VA_ARGS__))(__VA_ARGS__)
#define TW_FIRST_(a, ...) TW_NAME(a)
#define TW_FIRST(...) TW_FIRST_(__VA_ARGS__, ~)

namespace hsmux::testwrap {
namespace {

using namespace std::chrono_literals;  // NOLINT(google-build-using-namespace)

constexpr int kMaxId = 68;
constexpr int kGetSlotInfo = 6;
constexpr int kInitToken = 10;
constexpr int kOpenSession = 13;
constexpr int kCloseSession = 14;
constexpr int kCloseAllSessions = 15;
constexpr int kLogin = 19;
constexpr auto kControlCheckInterval = 20ms;
constexpr auto kFlushInterval = 20ms;
constexpr auto kHangPoll = 5ms;
constexpr char kDefaultTarget[] = "/usr/lib/softhsm/libsofthsm2.so";

const char *FunctionName(int id) {
  switch (id) {
#define TW_NAME_CASE(id, name, params, body) \
  case id:                                   \
    return "C_" #name;
    HSMUX_CRYPTOKI_FUNCTIONS(TW_NAME_CASE)
#undef TW_NAME_CASE
    default:
      return nullptr;
  }
}

int FunctionId(std::string name) {
  if (name.compare(0, 2, "C_") != 0) name = "C_" + name;
  for (int id = 1; id <= kMaxId; ++id) {
    if (name == FunctionName(id)) return id;
  }
  return 0;
}

enum class Kind { kGlobal, kSlot, kSession };

constexpr Kind KindOf(int id) {
  switch (id) {
    case 1:   // C_Initialize
    case 2:   // C_Finalize
    case 3:   // C_GetInfo
    case 4:   // C_GetFunctionList
    case 5:   // C_GetSlotList
    case 68:  // C_WaitForSlotEvent
      return Kind::kGlobal;
    case 6:   // C_GetSlotInfo
    case 7:   // C_GetTokenInfo
    case 8:   // C_GetMechanismList
    case 9:   // C_GetMechanismInfo
    case 10:  // C_InitToken
    case 13:  // C_OpenSession
    case 15:  // C_CloseAllSessions
      return Kind::kSlot;
    default:
      return Kind::kSession;
  }
}

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string Trim(const std::string &s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

// --- Faults (the control file) -------------------------------------------

struct Faults {
  long latency_ms = 0;
  bool serialize = false;
  CK_RV fail_rv = CKR_OK;  // CKR_OK: no injected failures
  bool fail_all = true;
  bool fail_fn[kMaxId + 1] = {};
  long fail_count = -1;
  std::string fail_key;  // fail_rv|fail_functions|fail_count|fail_id as read
  bool hang = false;
  bool power_off = false;
};

bool Truthy(const std::string &v) { return v == "1" || v == "true" || v == "yes" || v == "on"; }

Faults ParseControl(const std::string &text) {
  Faults f;
  std::string rv_text, fns_text = "*", count_text = "-1", id_text;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    std::string line = Trim(text.substr(pos, nl - pos));
    pos = nl + 1;
    if (line.empty() || line[0] == '#') continue;
    size_t eq = line.find('=');
    if (eq == std::string::npos) continue;
    std::string key = Trim(line.substr(0, eq));
    std::string value = Trim(line.substr(eq + 1));
    if (key == "latency_ms") {
      f.latency_ms = std::strtol(value.c_str(), nullptr, 0);
    } else if (key == "serialize") {
      f.serialize = Truthy(value);
    } else if (key == "fail_rv") {
      rv_text = value;
      f.fail_rv = std::strtoul(value.c_str(), nullptr, 0);
    } else if (key == "fail_functions") {
      fns_text = value;
    } else if (key == "fail_count") {
      count_text = value;
      f.fail_count = std::strtol(value.c_str(), nullptr, 0);
    } else if (key == "fail_id") {
      id_text = value;
    } else if (key == "hang") {
      f.hang = Truthy(value);
    } else if (key == "power") {
      f.power_off = value == "off" || value == "0" || value == "false";
    }
  }
  f.fail_all = false;
  size_t start = 0;
  while (start <= fns_text.size()) {
    size_t comma = fns_text.find(',', start);
    if (comma == std::string::npos) comma = fns_text.size();
    std::string name = Trim(fns_text.substr(start, comma - start));
    start = comma + 1;
    if (name == "*") {
      f.fail_all = true;
    } else if (int id = FunctionId(name); id != 0) {
      f.fail_fn[id] = true;
    } else if (!name.empty()) {
      std::fprintf(stderr, "hsmux-testwrap: unknown function in fail_functions: %s\n",
                   name.c_str());
    }
  }
  f.fail_key = rv_text + "|" + fns_text + "|" + count_text + "|" + id_text;
  return f;
}

// --- Per-token state -------------------------------------------------------

struct Token {
  std::string label;
  std::string stats_path;
  std::string control_path;

  std::mutex mu;  // everything below up to `engine`
  Faults faults;
  long fail_left = 0;  // remaining injected failures, -1 = forever
  std::string armed_fail_key;
  uint64_t calls[kMaxId + 1] = {};
  uint64_t total_calls = 0;
  uint64_t forwarded_calls = 0;
  uint64_t injected_failures = 0;
  uint64_t open_sessions = 0;
  uint64_t max_open_sessions = 0;
  uint64_t sessions_opened = 0;
  uint64_t sessions_lost = 0;
  uint64_t logins = 0;
  uint64_t in_flight = 0;
  uint64_t max_in_flight = 0;
  uint64_t hung = 0;
  uint64_t queued = 0;
  bool dirty = true;

  std::mutex engine;        // serialize=1: one call at a time
  std::shared_mutex power;  // target calls: shared; power-off: exclusive
  std::mutex file_mu;       // one stats writer at a time
  std::mutex control_mu;    // one control reader at a time
  std::atomic<int64_t> next_control_check{0};
  bool control_exists = false;  // under control_mu
  struct stat control_stat {};  // under control_mu
};

struct Session {
  CK_SESSION_HANDLE real = 0;
  CK_SLOT_ID slot = 0;
  Token *token = nullptr;  // nullptr: no accounting
  bool dead = false;       // lost to a power-off
};

struct State {
  std::mutex load_mu;
  std::atomic<CK_FUNCTION_LIST *> target{nullptr};

  std::mutex mu;  // everything below
  std::string dir;
  std::map<std::string, Token *> tokens;  // leaked, never freed
  std::unordered_map<CK_SESSION_HANDLE, Session> sessions;
  CK_SESSION_HANDLE next_handle = 1;
  std::unordered_map<CK_SLOT_ID, std::string> slot_labels;

  std::mutex flusher_mu;
  std::condition_variable flusher_cv;
  bool flusher_stop = false;
  std::thread *flusher = nullptr;
};

// Leaked on purpose: no destructor runs at exit while other threads may
// still call in.
State &S() {
  static State *state = new State;
  return *state;
}

CK_FUNCTION_LIST *Target() {
  State &s = S();
  CK_FUNCTION_LIST *list = s.target.load(std::memory_order_acquire);
  if (list != nullptr) return list;
  std::lock_guard<std::mutex> lock(s.load_mu);
  list = s.target.load();
  if (list != nullptr) return list;
  const char *path = std::getenv("HSMUX_TESTWRAP_TARGET");
  if (path == nullptr || *path == '\0') path = kDefaultTarget;
  void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    std::fprintf(stderr, "hsmux-testwrap: dlopen %s: %s\n", path, dlerror());
    return nullptr;
  }
  auto get_list = reinterpret_cast<CK_C_GetFunctionList>(dlsym(lib, "C_GetFunctionList"));
  if (get_list == nullptr || get_list(&list) != CKR_OK || list == nullptr) {
    std::fprintf(stderr, "hsmux-testwrap: %s: no C_GetFunctionList\n", path);
    dlclose(lib);
    return nullptr;
  }
  s.target.store(list, std::memory_order_release);
  return list;
}

void MarkDirty(Token *t) { t->dirty = true; }

std::string JsonString(const std::string &s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

// Under t->mu.
std::string StatsJson(const Token &t) {
  std::string j = "{\n";
  auto num = [&j](const char *key, uint64_t v) {
    j += "  \"";
    j += key;
    j += "\": " + std::to_string(v) + ",\n";
  };
  j += "  \"label\": " + JsonString(t.label) + ",\n";
  j += "  \"pid\": " + std::to_string(getpid()) + ",\n";
  j += std::string("  \"power\": \"") + (t.faults.power_off ? "off" : "on") + "\",\n";
  num("total_calls", t.total_calls);
  num("forwarded_calls", t.forwarded_calls);
  num("injected_failures", t.injected_failures);
  num("open_sessions", t.open_sessions);
  num("max_open_sessions", t.max_open_sessions);
  num("sessions_opened", t.sessions_opened);
  num("sessions_lost", t.sessions_lost);
  num("logins", t.logins);
  num("in_flight", t.in_flight);
  num("max_in_flight", t.max_in_flight);
  num("hung", t.hung);
  num("queued", t.queued);
  j += "  \"calls\": {";
  bool first = true;
  for (int id = 1; id <= kMaxId; ++id) {
    if (t.calls[id] == 0) continue;
    j += first ? "\n" : ",\n";
    first = false;
    j += std::string("    \"") + FunctionName(id) + "\": " + std::to_string(t.calls[id]);
  }
  j += first ? "}\n" : "\n  }\n";
  j += "}\n";
  return j;
}

void Flush(Token *t) {
  std::lock_guard<std::mutex> file_lock(t->file_mu);
  std::string json;
  {
    std::lock_guard<std::mutex> lock(t->mu);
    if (!t->dirty) return;
    t->dirty = false;
    json = StatsJson(*t);
  }
  if (!WriteFileAtomically(t->stats_path, json)) {
    std::fprintf(stderr, "hsmux-testwrap: cannot write %s\n", t->stats_path.c_str());
  }
}

bool PoweredOff(Token *t) {
  std::lock_guard<std::mutex> lock(t->mu);
  return t->faults.power_off;
}

// Power just went off: the token's sessions are gone, which also logs it
// out. Waits for the target calls in progress on this token.
void LoseSessions(Token *t) {
  State &s = S();
  CK_FUNCTION_LIST *list = Target();
  std::unique_lock<std::shared_mutex> power(t->power);
  std::vector<CK_SESSION_HANDLE> real;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    for (auto &[handle, session] : s.sessions) {
      if (session.token == t && !session.dead) {
        session.dead = true;
        real.push_back(session.real);
      }
    }
  }
  for (CK_SESSION_HANDLE h : real) list->C_CloseSession(h);
  {
    std::lock_guard<std::mutex> lock(t->mu);
    t->open_sessions -= std::min<uint64_t>(t->open_sessions, real.size());
    t->sessions_lost += real.size();
    MarkDirty(t);
  }
}

// Re-reads the control file when it changed, at most every 20 ms unless
// forced.
void RefreshControl(Token *t) {
  int64_t now = NowNs();
  if (now < t->next_control_check.load(std::memory_order_relaxed)) return;
  std::unique_lock<std::mutex> control(t->control_mu, std::try_to_lock);
  if (!control.owns_lock()) return;
  t->next_control_check.store(
      now + std::chrono::duration_cast<std::chrono::nanoseconds>(kControlCheckInterval).count(),
      std::memory_order_relaxed);
  struct stat st {};
  bool exists = stat(t->control_path.c_str(), &st) == 0;
  if (exists == t->control_exists &&
      (!exists || (st.st_ino == t->control_stat.st_ino && st.st_dev == t->control_stat.st_dev &&
                   st.st_size == t->control_stat.st_size &&
                   st.st_mtim.tv_sec == t->control_stat.st_mtim.tv_sec &&
                   st.st_mtim.tv_nsec == t->control_stat.st_mtim.tv_nsec))) {
    return;
  }
  std::string text;
  if (exists && !ReadFile(t->control_path, &text)) return;  // try again next time
  t->control_exists = exists;
  t->control_stat = st;
  Faults f = ParseControl(text);
  bool went_off = false;
  {
    std::lock_guard<std::mutex> lock(t->mu);
    went_off = f.power_off && !t->faults.power_off;
    if (f.fail_key != t->armed_fail_key) {
      t->armed_fail_key = f.fail_key;
      t->fail_left = f.fail_rv == CKR_OK ? 0 : f.fail_count;
    }
    t->faults = f;
    MarkDirty(t);
  }
  control.unlock();
  if (went_off) LoseSessions(t);
  Flush(t);
}

// Under s.mu.
Token *TokenLocked(State &s, const std::string &label) {
  if (s.dir.empty() || label.empty()) return nullptr;
  auto it = s.tokens.find(label);
  if (it != s.tokens.end()) return it->second;
  Token *t = new Token;
  t->label = label;
  t->stats_path = StatsPath(s.dir, label);
  t->control_path = ControlPath(s.dir, label);
  s.tokens.emplace(label, t);
  return t;
}

// The token in `slot`, or nullptr when there is no state dir or no
// initialized token there.
Token *TokenForSlot(CK_SLOT_ID slot) {
  State &s = S();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.dir.empty()) return nullptr;
    auto it = s.slot_labels.find(slot);
    if (it != s.slot_labels.end()) return TokenLocked(s, it->second);
  }
  CK_FUNCTION_LIST *list = Target();
  if (list == nullptr) return nullptr;
  CK_TOKEN_INFO info{};
  if (list->C_GetTokenInfo(slot, &info) != CKR_OK) return nullptr;
  std::string label;
  if ((info.flags & CKF_TOKEN_INITIALIZED) != 0) {
    label.assign(reinterpret_cast<const char *>(info.label), sizeof info.label);
    size_t end = label.find_last_not_of(std::string(" \0", 2));
    label.resize(end == std::string::npos ? 0 : end + 1);
  }
  std::lock_guard<std::mutex> lock(s.mu);
  s.slot_labels[slot] = label;
  return TokenLocked(s, label);
}

bool FindSession(CK_SESSION_HANDLE h, Session *out) {
  State &s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.sessions.find(h);
  if (it == s.sessions.end()) return false;
  *out = it->second;
  return true;
}

// Removes the handle; true if it was a live session.
bool RemoveSession(CK_SESSION_HANDLE h) {
  State &s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.sessions.find(h);
  if (it == s.sessions.end()) return false;
  bool live = !it->second.dead;
  s.sessions.erase(it);
  return live;
}

// Counts the call, then applies (in this order) power, hang, a lost session
// and an injected failure. CKR_OK: go on to the engine.
CK_RV Gate(int id, Token *t, CK_SESSION_HANDLE h, bool power_exempt) {
  {
    std::lock_guard<std::mutex> lock(t->mu);
    ++t->calls[id];
    ++t->total_calls;
    MarkDirty(t);
  }
  bool hung = false;
  for (;;) {
    RefreshControl(t);
    std::unique_lock<std::mutex> lock(t->mu);
    bool off = t->faults.power_off && !power_exempt;
    if (!off && t->faults.hang) {
      if (!hung) {
        hung = true;
        ++t->hung;
        MarkDirty(t);
      }
      lock.unlock();
      std::this_thread::sleep_for(kHangPoll);
      continue;
    }
    if (hung) {
      --t->hung;
      MarkDirty(t);
    }
    if (off) return CKR_DEVICE_REMOVED;
    break;
  }
  if (h != 0) {
    Session session;
    if (!FindSession(h, &session) || session.dead) return CKR_SESSION_HANDLE_INVALID;
  }
  std::lock_guard<std::mutex> lock(t->mu);
  const Faults &f = t->faults;
  if (f.fail_rv != CKR_OK && t->fail_left != 0 && (f.fail_all || f.fail_fn[id])) {
    if (t->fail_left > 0) --t->fail_left;
    ++t->injected_failures;
    MarkDirty(t);
    return f.fail_rv;
  }
  return CKR_OK;
}

// The token's engine: serialization, in-flight accounting, latency, then
// `call` under the shared power lock.
template <typename Call>
CK_RV Engine(Token *t, Call &&call) {
  std::unique_lock<std::mutex> engine(t->engine, std::defer_lock);
  bool queued = false;
  {
    std::lock_guard<std::mutex> lock(t->mu);
    queued = t->faults.serialize;
    if (queued) {
      ++t->queued;
      MarkDirty(t);
    }
  }
  if (queued) engine.lock();
  long latency_ms = 0;
  {
    std::lock_guard<std::mutex> lock(t->mu);
    if (queued) --t->queued;
    ++t->in_flight;
    if (t->in_flight > t->max_in_flight) t->max_in_flight = t->in_flight;
    latency_ms = t->faults.latency_ms;
    MarkDirty(t);
  }
  if (latency_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(latency_ms));
  CK_RV rv;
  {
    std::shared_lock<std::shared_mutex> power(t->power);
    rv = call();
  }
  {
    std::lock_guard<std::mutex> lock(t->mu);
    --t->in_flight;
    MarkDirty(t);
  }
  return rv;
}

void CountForwarded(Token *t) {
  if (t == nullptr) return;
  std::lock_guard<std::mutex> lock(t->mu);
  ++t->forwarded_calls;
  MarkDirty(t);
}

// Bookkeeping after a target call on a session (under the power lock).
void AfterSessionCall(int id, CK_SESSION_HANDLE h, Token *t, CK_RV rv) {
  if (id == kCloseSession && (rv == CKR_OK || rv == CKR_SESSION_HANDLE_INVALID)) {
    if (RemoveSession(h) && t != nullptr) {
      std::lock_guard<std::mutex> lock(t->mu);
      if (t->open_sessions > 0) --t->open_sessions;
      MarkDirty(t);
    }
  } else if (id == kLogin && rv == CKR_OK && t != nullptr) {
    std::lock_guard<std::mutex> lock(t->mu);
    ++t->logins;
    MarkDirty(t);
  }
}

// `call(list, real_handle)` makes the target call.
template <typename Call>
CK_RV SessionCall(int id, CK_SESSION_HANDLE h, Call &&call) {
  CK_FUNCTION_LIST *list = Target();
  if (list == nullptr) return CKR_GENERAL_ERROR;
  Session session;
  if (!FindSession(h, &session)) return CKR_SESSION_HANDLE_INVALID;
  Token *t = session.token;
  CK_RV rv;
  if (t == nullptr) {
    rv = session.dead ? CKR_SESSION_HANDLE_INVALID : call(list, session.real);
    AfterSessionCall(id, h, nullptr, rv);
    return rv;
  }
  rv = Gate(id, t, h, false);
  if (rv == CKR_OK) {
    rv = Engine(t, [&]() -> CK_RV {
      if (PoweredOff(t)) return CKR_DEVICE_REMOVED;
      Session now;
      if (!FindSession(h, &now) || now.dead) return CKR_SESSION_HANDLE_INVALID;
      CK_RV r = call(list, now.real);
      CountForwarded(t);
      AfterSessionCall(id, h, t, r);
      return r;
    });
  } else if (rv == CKR_SESSION_HANDLE_INVALID && id == kCloseSession) {
    RemoveSession(h);  // a handle lost to a power-off: forget it
  }
  if (id == kCloseSession || id == kLogin) Flush(t);
  return rv;
}

// Bookkeeping after a target call on a slot (under the power lock).
void AfterSlotCall(int id, CK_SLOT_ID slot, Token *t, CK_RV rv) {
  State &s = S();
  if (id == kInitToken && rv == CKR_OK) {
    std::lock_guard<std::mutex> lock(s.mu);
    s.slot_labels.erase(slot);
  } else if (id == kCloseAllSessions && rv == CKR_OK) {
    uint64_t closed = 0;
    {
      std::lock_guard<std::mutex> lock(s.mu);
      for (auto it = s.sessions.begin(); it != s.sessions.end();) {
        if (it->second.slot == slot) {
          if (!it->second.dead) ++closed;
          it = s.sessions.erase(it);
        } else {
          ++it;
        }
      }
    }
    if (t != nullptr) {
      std::lock_guard<std::mutex> lock(t->mu);
      t->open_sessions -= std::min(t->open_sessions, closed);
      MarkDirty(t);
    }
  }
}

// `call(list, token)` makes the target call (token may be nullptr).
template <typename Call>
CK_RV SlotCall(int id, CK_SLOT_ID slot, Call &&call) {
  CK_FUNCTION_LIST *list = Target();
  if (list == nullptr) return CKR_GENERAL_ERROR;
  Token *t = TokenForSlot(slot);
  CK_RV rv;
  if (t == nullptr) {
    rv = call(list, nullptr);
    AfterSlotCall(id, slot, nullptr, rv);
    return rv;
  }
  bool power_exempt = id == kGetSlotInfo;
  rv = Gate(id, t, 0, power_exempt);
  if (rv != CKR_OK) return rv;
  rv = Engine(t, [&]() -> CK_RV {
    if (!power_exempt && PoweredOff(t)) return CKR_DEVICE_REMOVED;
    CK_RV r = call(list, t);
    CountForwarded(t);
    AfterSlotCall(id, slot, t, r);
    return r;
  });
  if (id == kOpenSession || id == kCloseAllSessions) Flush(t);
  return rv;
}

// --- Stats flusher -----------------------------------------------------------

std::vector<Token *> AllTokens() {
  State &s = S();
  std::lock_guard<std::mutex> lock(s.mu);
  std::vector<Token *> out;
  for (auto &[label, t] : s.tokens) out.push_back(t);
  return out;
}

void FlusherLoop() {
  State &s = S();
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(s.flusher_mu);
      if (s.flusher_cv.wait_for(lock, kFlushInterval, [&s] { return s.flusher_stop; })) return;
    }
    for (Token *t : AllTokens()) {
      RefreshControl(t);
      Flush(t);
    }
  }
}

void StartFlusher() {
  State &s = S();
  std::lock_guard<std::mutex> lock(s.flusher_mu);
  if (s.flusher != nullptr) return;
  s.flusher_stop = false;
  s.flusher = new std::thread(FlusherLoop);
}

void StopFlusher() {
  State &s = S();
  std::thread *thread;
  {
    std::lock_guard<std::mutex> lock(s.flusher_mu);
    thread = s.flusher;
    s.flusher = nullptr;
    s.flusher_stop = true;
  }
  s.flusher_cv.notify_all();
  if (thread != nullptr) {
    thread->join();
    delete thread;
  }
}

// --- Entry points answered here -------------------------------------------

CK_RV InitializeImpl(CK_VOID_PTR init_args);
CK_RV FinalizeImpl(CK_VOID_PTR reserved);
CK_RV GetFunctionListImpl(CK_FUNCTION_LIST_PTR_PTR list);
CK_RV GetSlotListImpl(CK_BBOOL token_present, CK_SLOT_ID_PTR slots, CK_ULONG_PTR count);
CK_RV GetSlotInfoImpl(CK_SLOT_ID slot, CK_SLOT_INFO_PTR info);
CK_RV OpenSessionImpl(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify,
                      CK_SESSION_HANDLE_PTR session);

template <typename T, typename... Rest>
T First(T first, Rest...) {
  return first;
}

// One entry point. `forward(list, real_handle...)` calls the target with
// the caller's arguments, the session handle replaced when one is given.
template <int Id, typename Forward, typename... A>
CK_RV Run(Forward &&forward, A... a) {
  if constexpr (Id == 1) {
    return InitializeImpl(a...);
  } else if constexpr (Id == 2) {
    return FinalizeImpl(a...);
  } else if constexpr (Id == 4) {
    return GetFunctionListImpl(a...);
  } else if constexpr (Id == 5) {
    return GetSlotListImpl(a...);
  } else if constexpr (Id == kGetSlotInfo) {
    return GetSlotInfoImpl(a...);
  } else if constexpr (Id == kOpenSession) {
    return OpenSessionImpl(a...);
  } else if constexpr (KindOf(Id) == Kind::kGlobal) {
    CK_FUNCTION_LIST *list = Target();
    return list == nullptr ? CKR_GENERAL_ERROR : forward(list);
  } else if constexpr (KindOf(Id) == Kind::kSlot) {
    return SlotCall(Id, First(a...),
                    [&](CK_FUNCTION_LIST *list, Token *) { return forward(list); });
  } else {
    return SessionCall(Id, First(a...), [&](CK_FUNCTION_LIST *list, CK_SESSION_HANDLE real) {
      return forward(list, real);
    });
  }
}

template <typename Body>
CK_RV Guard(Body &&body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc &) {
    return CKR_HOST_MEMORY;
  } catch (...) {
    return CKR_GENERAL_ERROR;
  }
}

}  // namespace
}  // namespace hsmux::testwrap

#define TW_EXPORT __attribute__((visibility("default")))

extern "C" {
#define TW_WRAPPER(id, name, params, body)                           \
  TW_EXPORT CK_RV C_##name params {                                  \
    return ::hsmux::testwrap::Guard([&]() -> CK_RV {                 \
      return ::hsmux::testwrap::Run<id>(                             \
          [&](CK_FUNCTION_LIST *tw_list, auto... tw_real) -> CK_RV { \
            ((TW_FIRST params = tw_real), ...);                      \
            return tw_list->C_##name(TW_NAMES params);               \
          },                                                         \
          TW_NAMES params);                                          \
    });                                                              \
  }
HSMUX_CRYPTOKI_FUNCTIONS(TW_WRAPPER)
#undef TW_WRAPPER
}

namespace hsmux::testwrap {
namespace {

// A trivially destructible aggregate: nothing runs at exit.
CK_FUNCTION_LIST function_list = {{CRYPTOKI_VERSION_MAJOR, CRYPTOKI_VERSION_MINOR},
#define TW_FN_PTR(id, name, params, body) &C_##name,
                                  HSMUX_CRYPTOKI_FUNCTIONS(TW_FN_PTR)
#undef TW_FN_PTR
};

CK_RV GetFunctionListImpl(CK_FUNCTION_LIST_PTR_PTR list) {
  if (list == nullptr) return CKR_ARGUMENTS_BAD;
  if (Target() == nullptr) return CKR_GENERAL_ERROR;
  *list = &function_list;
  return CKR_OK;
}

CK_RV InitializeImpl(CK_VOID_PTR init_args) {
  CK_FUNCTION_LIST *list = Target();
  if (list == nullptr) return CKR_GENERAL_ERROR;
  CK_RV rv = list->C_Initialize(init_args);
  if (rv != CKR_OK) return rv;
  State &s = S();
  const char *dir = std::getenv("HSMUX_TESTWRAP_DIR");
  std::string new_dir = dir == nullptr ? "" : dir;
  while (new_dir.size() > 1 && new_dir.back() == '/') new_dir.pop_back();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (new_dir != s.dir) {
      s.tokens.clear();  // a new state dir starts from zero; the old tokens leak
      s.dir = new_dir;
    }
    s.sessions.clear();
    s.slot_labels.clear();
  }
  if (!new_dir.empty()) StartFlusher();
  return CKR_OK;
}

CK_RV FinalizeImpl(CK_VOID_PTR reserved) {
  CK_FUNCTION_LIST *list = Target();
  if (list == nullptr) return CKR_GENERAL_ERROR;
  StopFlusher();
  CK_RV rv = list->C_Finalize(reserved);
  State &s = S();
  if (rv != CKR_OK) {
    bool has_dir;
    {
      std::lock_guard<std::mutex> lock(s.mu);
      has_dir = !s.dir.empty();
    }
    if (has_dir && rv != CKR_CRYPTOKI_NOT_INITIALIZED) StartFlusher();
    return rv;
  }
  {
    std::lock_guard<std::mutex> lock(s.mu);
    s.sessions.clear();
    s.slot_labels.clear();
  }
  for (Token *t : AllTokens()) {
    {
      std::lock_guard<std::mutex> lock(t->mu);
      t->open_sessions = 0;
      MarkDirty(t);
    }
    Flush(t);
  }
  return CKR_OK;
}

CK_RV GetSlotListImpl(CK_BBOOL token_present, CK_SLOT_ID_PTR slots, CK_ULONG_PTR count) {
  CK_FUNCTION_LIST *list = Target();
  if (list == nullptr) return CKR_GENERAL_ERROR;
  bool has_dir;
  {
    std::lock_guard<std::mutex> lock(S().mu);
    has_dir = !S().dir.empty();
  }
  if (token_present == CK_FALSE || !has_dir || count == nullptr) {
    return list->C_GetSlotList(token_present, slots, count);
  }
  // Tokens that are powered off are not present.
  std::vector<CK_SLOT_ID> all;
  CK_RV rv;
  do {
    CK_ULONG n = 0;
    rv = list->C_GetSlotList(token_present, nullptr, &n);
    if (rv != CKR_OK) return rv;
    all.resize(n);
    rv = list->C_GetSlotList(token_present, all.data(), &n);
    all.resize(n);
  } while (rv == CKR_BUFFER_TOO_SMALL);
  if (rv != CKR_OK) return rv;
  std::vector<CK_SLOT_ID> present;
  for (CK_SLOT_ID slot : all) {
    Token *t = TokenForSlot(slot);
    if (t != nullptr) {
      RefreshControl(t);
      if (PoweredOff(t)) continue;
    }
    present.push_back(slot);
  }
  if (slots == nullptr) {
    *count = present.size();
    return CKR_OK;
  }
  if (*count < present.size()) {
    *count = present.size();
    return CKR_BUFFER_TOO_SMALL;
  }
  std::copy(present.begin(), present.end(), slots);
  *count = present.size();
  return CKR_OK;
}

CK_RV GetSlotInfoImpl(CK_SLOT_ID slot, CK_SLOT_INFO_PTR info) {
  return SlotCall(kGetSlotInfo, slot, [&](CK_FUNCTION_LIST *list, Token *t) {
    CK_RV rv = list->C_GetSlotInfo(slot, info);
    if (rv == CKR_OK && info != nullptr && t != nullptr && PoweredOff(t)) {
      info->flags &= ~static_cast<CK_FLAGS>(CKF_TOKEN_PRESENT);
    }
    return rv;
  });
}

CK_RV OpenSessionImpl(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify,
                      CK_SESSION_HANDLE_PTR session) {
  if (session == nullptr) return CKR_ARGUMENTS_BAD;
  return SlotCall(kOpenSession, slot, [&](CK_FUNCTION_LIST *list, Token *t) {
    CK_SESSION_HANDLE real = 0;
    CK_RV rv = list->C_OpenSession(slot, flags, app, notify, &real);
    if (rv != CKR_OK) return rv;
    State &s = S();
    {
      std::lock_guard<std::mutex> lock(s.mu);
      CK_SESSION_HANDLE h = s.next_handle++;
      s.sessions[h] = Session{real, slot, t, false};
      *session = h;
    }
    if (t != nullptr) {
      std::lock_guard<std::mutex> lock(t->mu);
      ++t->open_sessions;
      ++t->sessions_opened;
      if (t->open_sessions > t->max_open_sessions) t->max_open_sessions = t->open_sessions;
      MarkDirty(t);
    }
    return rv;
  });
}

}  // namespace
}  // namespace hsmux::testwrap
