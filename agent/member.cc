#include "member.h"

#include <dlfcn.h>

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

absl::StatusOr<std::unique_ptr<Member>> Member::Open(const MemberConfig& config,
                                                     std::shared_ptr<MemberLibrary> library) {
  CK_FUNCTION_LIST* fn = library->fn();
  CK_ULONG count = 0;
  CK_RV rv = fn->C_GetSlotList(CK_TRUE, nullptr, &count);
  if (rv != CKR_OK) return wire::CkError(rv, "C_GetSlotList");
  std::vector<CK_SLOT_ID> slots(count);
  rv = fn->C_GetSlotList(CK_TRUE, slots.data(), &count);
  if (rv != CKR_OK) return wire::CkError(rv, "C_GetSlotList");
  slots.resize(count);
  bool found = false;
  CK_SLOT_ID slot = 0;
  for (CK_SLOT_ID s : slots) {
    CK_TOKEN_INFO info;
    std::memset(&info, 0, sizeof(info));
    if (fn->C_GetTokenInfo(s, &info) != CKR_OK) continue;
    if (!(info.flags & CKF_TOKEN_INITIALIZED)) continue;
    const bool label_ok = config.token_label.empty() ||
                          Trimmed(info.label, sizeof(info.label)) == config.token_label;
    const bool serial_ok = config.token_serial.empty() ||
                           Trimmed(info.serialNumber, sizeof(info.serialNumber)) ==
                               config.token_serial;
    if (label_ok && serial_ok) {
      if (found) {
        return wire::CkError(CKR_GENERAL_ERROR,
                             absl::StrCat("member ", config.name, ": more than one token matches"));
      }
      found = true;
      slot = s;
    }
  }
  if (!found) {
    return wire::CkError(CKR_TOKEN_NOT_PRESENT,
                         absl::StrCat("member ", config.name, ": no token labelled '",
                                      config.token_label, "' serial '", config.token_serial, "'"));
  }
  std::unique_ptr<Member> member(new Member(config.name, std::move(library), slot));
  rv = fn->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr,
                         &member->holder_);
  if (rv != CKR_OK) return wire::CkError(rv, absl::StrCat("member ", config.name, ": C_OpenSession"));
  std::string pin = config.pin;
  rv = fn->C_Login(member->holder_, CKU_USER,
                   reinterpret_cast<CK_UTF8CHAR_PTR>(pin.data()), pin.size());
  std::fill(pin.begin(), pin.end(), '\0');
  if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
    // The rv says why; the PIN itself is never logged.
    return wire::CkError(rv, absl::StrCat("member ", config.name, ": login failed: ",
                                          wire::CkRvName(rv)));
  }
  LogInfo(absl::StrCat("member ", config.name, ": token slot ", slot, " logged in"));
  return member;
}

void Member::ConfigurePool(uint32_t min, uint32_t max, uint32_t wait_ms) {
  pool_min_ = min;
  pool_max_ = max;
  pool_wait_ms_ = wait_ms;
  std::vector<CK_SESSION_HANDLE> opened;
  for (uint32_t i = 0; i < min && i + 1 < max; ++i) {
    CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
    if (fn()->C_OpenSession(slot_, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &h) !=
        CKR_OK) {
      break;
    }
    opened.push_back(h);
  }
  absl::MutexLock lock(&pool_mu_);
  open_ += static_cast<uint32_t>(opened.size());
  idle_.insert(idle_.end(), opened.begin(), opened.end());
}

absl::StatusOr<CK_SESSION_HANDLE> Member::Acquire() {
  {
    absl::MutexLock lock(&pool_mu_);
    // The holder session takes one of the member's `max` sessions.
    auto available = [this] { return !idle_.empty() || open_ + 1 < pool_max_; };
    if (!pool_mu_.AwaitWithTimeout(absl::Condition(&available),
                                   absl::Milliseconds(pool_wait_ms_))) {
      LogWarning(absl::StrCat("member ", name_, ": all ", pool_max_,
                              " sessions busy for ", pool_wait_ms_, " ms"));
      return wire::CkError(CKR_DEVICE_ERROR, "member session pool exhausted");
    }
    if (!idle_.empty()) {
      CK_SESSION_HANDLE h = idle_.back();
      idle_.pop_back();
      return h;
    }
    ++open_;  // reserved; opened below without the lock
  }
  CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
  CK_RV rv = fn()->C_OpenSession(slot_, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &h);
  if (rv != CKR_OK) {
    {
      absl::MutexLock lock(&pool_mu_);
      --open_;
    }
    LogWarning(absl::StrCat("member ", name_, ": C_OpenSession: ", wire::CkRvName(rv)));
    return wire::CkError(rv == CKR_SESSION_COUNT ? CKR_DEVICE_MEMORY : CKR_DEVICE_ERROR,
                         "member session");
  }
  return h;
}

void Member::Release(CK_SESSION_HANDLE session, bool dirty) {
  if (!dirty) {
    absl::MutexLock lock(&pool_mu_);
    idle_.push_back(session);
    return;
  }
  fn()->C_CloseSession(session);
  absl::MutexLock lock(&pool_mu_);
  --open_;
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
