#include "member.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "log.h"
#include "wire/errors.h"

namespace hsmux::agent {
namespace {

std::string Trimmed(const unsigned char* field, size_t size) {
  std::string s(reinterpret_cast<const char*>(field), size);
  return std::string(absl::StripTrailingAsciiWhitespace(s));
}

}  // namespace

absl::StatusOr<std::shared_ptr<MemberLibrary>> MemberLibrary::Load(
    const std::string& path, std::map<std::string, std::shared_ptr<MemberLibrary>>& cache) {
  if (auto it = cache.find(path); it != cache.end()) return it->second;
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    return wire::CkError(CKR_GENERAL_ERROR, absl::StrCat("cannot load ", path, ": ", dlerror()));
  }
  auto get_list = reinterpret_cast<CK_C_GetFunctionList>(dlsym(handle, "C_GetFunctionList"));
  CK_FUNCTION_LIST* fn = nullptr;
  if (get_list == nullptr || get_list(&fn) != CKR_OK || fn == nullptr) {
    return wire::CkError(CKR_GENERAL_ERROR, absl::StrCat(path, ": no C_GetFunctionList"));
  }
  CK_C_INITIALIZE_ARGS args;
  std::memset(&args, 0, sizeof(args));
  args.flags = CKF_OS_LOCKING_OK;
  CK_RV rv = fn->C_Initialize(&args);
  if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    return wire::CkError(rv, absl::StrCat(path, ": C_Initialize: ", wire::CkRvName(rv)));
  }
  auto lib = std::shared_ptr<MemberLibrary>(new MemberLibrary(path, handle, fn));
  cache[path] = lib;
  LogInfo(absl::StrCat("loaded library ", path));
  return lib;
}

bool IsDeviceFailure(CK_RV rv) {
  switch (rv) {
    case kMemberTimedOut:
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_REMOVED:
    case CKR_DEVICE_MEMORY:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_TOKEN_NOT_RECOGNIZED:
    case CKR_SESSION_HANDLE_INVALID:  // our member session, not the client's
    case CKR_SESSION_CLOSED:
    case CKR_USER_NOT_LOGGED_IN:  // the member lost its login
    case CKR_CRYPTOKI_NOT_INITIALIZED:
      return true;
    default:
      return false;
  }
}

Member::Member(MemberConfig config, std::shared_ptr<MemberLibrary> library)
    : config_(std::move(config)), library_(std::move(library)), executor_(config_.name) {}

namespace {

struct ConnectResult {
  CK_SLOT_ID slot = 0;
  CK_SESSION_HANDLE holder = CK_INVALID_HANDLE;
  std::vector<CK_SESSION_HANDLE> pool;
  CK_RV rv = CKR_OK;
  std::string why;
};

// Runs on a worker: everything it needs is in `r` and `cfg`.
void ConnectOnWorker(CK_FUNCTION_LIST* fn, const MemberConfig& cfg, uint32_t pool_min,
                     ConnectResult& r) {
  CK_ULONG count = 0;
  CK_RV rv = fn->C_GetSlotList(CK_TRUE, nullptr, &count);
  std::vector<CK_SLOT_ID> slots(count);
  if (rv == CKR_OK) rv = fn->C_GetSlotList(CK_TRUE, slots.data(), &count);
  if (rv != CKR_OK) {
    r.rv = rv;
    r.why = "C_GetSlotList: " + wire::CkRvName(rv);
    return;
  }
  slots.resize(count);
  int found = 0;
  for (CK_SLOT_ID s : slots) {
    CK_TOKEN_INFO info;
    std::memset(&info, 0, sizeof(info));
    if (fn->C_GetTokenInfo(s, &info) != CKR_OK) continue;
    if (!(info.flags & CKF_TOKEN_INITIALIZED)) continue;
    const bool label_ok =
        cfg.token_label.empty() || Trimmed(info.label, sizeof(info.label)) == cfg.token_label;
    const bool serial_ok =
        cfg.token_serial.empty() ||
        Trimmed(info.serialNumber, sizeof(info.serialNumber)) == cfg.token_serial;
    if (label_ok && serial_ok) {
      ++found;
      r.slot = s;
    }
  }
  if (found != 1) {
    r.rv = CKR_TOKEN_NOT_PRESENT;
    r.why = found == 0 ? absl::StrCat("no token labelled '", cfg.token_label, "' serial '",
                                      cfg.token_serial, "'")
                       : "more than one token matches";
    return;
  }
  rv = fn->C_OpenSession(r.slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &r.holder);
  if (rv != CKR_OK) {
    r.rv = rv;
    r.why = "C_OpenSession: " + wire::CkRvName(rv);
    return;
  }
  std::string pin = cfg.pin;
  rv = fn->C_Login(r.holder, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(pin.data()), pin.size());
  std::fill(pin.begin(), pin.end(), '\0');
  if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
    // The rv says why; the PIN itself is never logged.
    r.rv = rv;
    r.why = "login failed: " + wire::CkRvName(rv);
    fn->C_CloseSession(r.holder);
    return;
  }
  for (uint32_t i = 0; i < pool_min; ++i) {
    CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
    if (fn->C_OpenSession(r.slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &h) !=
        CKR_OK) {
      break;
    }
    r.pool.push_back(h);
  }
}

}  // namespace

absl::Status Member::Connect(absl::Duration timeout) {
  auto result = std::make_shared<ConnectResult>();
  auto cfg = std::make_shared<MemberConfig>(config_);
  const uint32_t pool_min = pool_max_ > 1 ? std::min(pool_min_, pool_max_ - 1) : 0;
  CK_FUNCTION_LIST* f = fn();
  const bool done = executor_.Run(
      timeout, [result, cfg, f, pool_min] { ConnectOnWorker(f, *cfg, pool_min, *result); });
  if (!done) return wire::CkError(CKR_DEVICE_ERROR, "member did not answer in time");
  if (result->rv != CKR_OK) return wire::CkError(result->rv, result->why);
  {
    absl::MutexLock hlock(&holder_mu_);
    slot_ = result->slot;
    holder_ = result->holder;
  }
  absl::MutexLock lock(&pool_mu_);
  idle_ = result->pool;
  current_ = std::set<CK_SESSION_HANDLE>(result->pool.begin(), result->pool.end());
  open_ = static_cast<uint32_t>(result->pool.size());
  down_reason_.clear();
  LogInfo(absl::StrCat("member ", name(), ": token slot ", slot_, " logged in, ", open_,
                       " pooled sessions"));
  return absl::OkStatus();
}

void Member::Disconnect() {
  healthy.store(false);
  std::vector<CK_SESSION_HANDLE> idle;
  CK_SESSION_HANDLE holder;
  {
    absl::MutexLock lock(&pool_mu_);
    idle.swap(idle_);
    current_.clear();
    open_ = 0;
  }
  {
    absl::MutexLock hlock(&holder_mu_);
    holder = holder_;
    holder_ = CK_INVALID_HANDLE;
  }
  // Closing may hang on a hung member: never wait for it.
  for (CK_SESSION_HANDLE h : idle) CloseWhenIdle(h);
  if (holder != CK_INVALID_HANDLE) CloseWhenIdle(holder);
}

void Member::BeginUse(CK_SESSION_HANDLE session) {
  if (session == CK_INVALID_HANDLE) return;
  absl::MutexLock lock(&use_mu_);
  ++in_use_[session];
}

void Member::EndUse(CK_SESSION_HANDLE session) {
  if (session == CK_INVALID_HANDLE) return;
  bool close = false;
  {
    absl::MutexLock lock(&use_mu_);
    auto it = in_use_.find(session);
    if (it == in_use_.end() || --it->second > 0) return;
    in_use_.erase(it);
    close = closing_.erase(session) > 0;
  }
  // On the worker that ran the call, now that it has returned.
  if (close) fn()->C_CloseSession(session);
}

void Member::CloseWhenIdle(CK_SESSION_HANDLE session) {
  {
    absl::MutexLock lock(&use_mu_);
    if (in_use_.count(session) > 0) {
      closing_.insert(session);
      return;
    }
  }
  CK_FUNCTION_LIST* f = fn();
  executor_.Post([f, session] { f->C_CloseSession(session); });
}

std::string Member::down_reason() {
  absl::MutexLock lock(&pool_mu_);
  return down_reason_;
}

void Member::set_down_reason(std::string why) {
  absl::MutexLock lock(&pool_mu_);
  down_reason_ = std::move(why);
}

void Member::ConfigurePool(uint32_t min, uint32_t max, uint32_t wait_ms, uint32_t open_timeout_ms) {
  pool_min_ = min;
  pool_max_ = max;
  pool_wait_ms_ = wait_ms;
  open_timeout_ms_ = open_timeout_ms;
}

absl::StatusOr<CK_SESSION_HANDLE> Member::Acquire() {
  {
    absl::MutexLock lock(&pool_mu_);
    // The holder session takes one of the member's `max` sessions.
    auto available = [this] { return !idle_.empty() || open_ + 1 < pool_max_; };
    if (!available()) pool_waits.fetch_add(1);
    if (!pool_mu_.AwaitWithTimeout(absl::Condition(&available),
                                   absl::Milliseconds(pool_wait_ms_))) {
      LogWarning(absl::StrCat("member ", name(), ": all ", pool_max_, " sessions busy for ",
                              pool_wait_ms_, " ms"));
      return wire::CkError(CKR_DEVICE_ERROR, "member session pool exhausted");
    }
    if (!idle_.empty()) {
      CK_SESSION_HANDLE h = idle_.back();
      idle_.pop_back();
      return h;
    }
    ++open_;  // reserved; opened below without the lock
  }
  auto h = std::make_shared<CK_SESSION_HANDLE>(CK_INVALID_HANDLE);
  const CK_SLOT_ID slot = slot_;
  CK_RV rv = Invoke<CK_SESSION_HANDLE>(
      absl::Milliseconds(open_timeout_ms_), h, [slot](CK_FUNCTION_LIST* f, CK_SESSION_HANDLE& out) {
        return f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &out);
      });
  absl::MutexLock lock(&pool_mu_);
  if (rv != CKR_OK) {
    --open_;
    LogWarning(absl::StrCat("member ", name(), ": C_OpenSession: ", wire::CkRvName(rv)));
    return wire::CkError(rv == kMemberTimedOut ? CKR_DEVICE_ERROR : rv, "member session");
  }
  current_.insert(*h);
  return *h;
}

void Member::Release(CK_SESSION_HANDLE session, bool dirty) {
  {
    absl::MutexLock lock(&pool_mu_);
    if (current_.count(session) == 0) return;  // of an earlier connection
    if (!dirty) {
      idle_.push_back(session);
      return;
    }
    current_.erase(session);
    --open_;
  }
  // Closing may hang on a sick member: never wait for it.
  CloseWhenIdle(session);
}

uint32_t Member::open_sessions() {
  absl::MutexLock lock(&pool_mu_);
  return open_ + 1;
}

absl::StatusOr<std::vector<std::pair<CK_MECHANISM_TYPE, CK_MECHANISM_INFO>>> Member::Mechanisms()
    const {
  CK_ULONG count = 0;
  CK_RV rv = fn()->C_GetMechanismList(slot_, nullptr, &count);
  if (rv != CKR_OK) return wire::CkError(rv, "C_GetMechanismList");
  std::vector<CK_MECHANISM_TYPE> types(count);
  rv = fn()->C_GetMechanismList(slot_, types.data(), &count);
  if (rv != CKR_OK) return wire::CkError(rv, "C_GetMechanismList");
  types.resize(count);
  std::vector<std::pair<CK_MECHANISM_TYPE, CK_MECHANISM_INFO>> out;
  for (CK_MECHANISM_TYPE t : types) {
    // SoftHSM ORs flags into the caller's structure: zero it first.
    CK_MECHANISM_INFO info;
    std::memset(&info, 0, sizeof(info));
    if (fn()->C_GetMechanismInfo(slot_, t, &info) == CKR_OK) out.emplace_back(t, info);
  }
  return out;
}

}  // namespace hsmux::agent
