#include "client_pins.h"

#include <openssl/crypto.h>

#include "absl/strings/str_cat.h"
#include "audit.h"
#include "log.h"
#include "pin_hash.h"
#include "recent_errors.h"
#include "wire/errors.h"

namespace hsmux::agent {

CK_RV ClientPins::CheckLocked(const ClientConfig& client, const GroupAccess& access,
                              const std::string& pin) {
  const std::string who = ClientKey(client);
  auto lock = store_.GetLockout(who, access.slot_id);
  if (!lock.ok()) {
    LogError(absl::StrCat("state store: ", lock.status().message()));
    return CKR_GENERAL_ERROR;
  }
  if (lock->locked) {
    LogWarning(absl::StrCat("audit: login refused, PIN locked: ", who, " slot ", access.slot_id));
    Audit("login_refused_locked", who, {{"slot", std::to_string(access.slot_id)}});
    RecordError("lockout", "", "",
                absl::StrCat("login refused: ", who, " is locked on slot ", access.slot_id));
    return CKR_PIN_LOCKED;
  }
  if (pin.size() < kMinLen || pin.size() > kMaxLen) return CKR_PIN_LEN_RANGE;
  std::string hash = access.pin_hash;
  auto override_hash = store_.GetPinOverride(who, access.slot_id);
  if (override_hash.ok() && override_hash->has_value()) hash = **override_hash;
  auto ok = VerifyPin(pin, hash);
  if (!ok.ok()) {
    LogError(absl::StrCat("stored PIN hash for ", who, " unusable"));
    return CKR_GENERAL_ERROR;
  }
  Lockout next = *lock;
  next.identity = who;
  next.slot_id = access.slot_id;
  if (*ok) {
    if (next.failures != 0) {
      next.failures = 0;
      (void)store_.PutLockout(next);
    }
    return CKR_OK;
  }
  ++next.failures;
  next.locked = next.failures >= max_;
  if (auto s = store_.PutLockout(next); !s.ok()) {
    LogError(absl::StrCat("state store: ", s.message()));
  }
  Audit(next.locked ? "lockout" : "login_failed", who,
        {{"slot", std::to_string(access.slot_id)}, {"failures", std::to_string(next.failures)}});
  LogWarning(absl::StrCat("audit: wrong PIN for ", who, " on slot ", access.slot_id, " (",
                          next.failures, " of ", max_, ")",
                          next.locked ? ": identity locked" : ""));
  if (next.locked) {
    RecordError("lockout", "", "",
                absl::StrCat(who, " locked on slot ", access.slot_id, " after ", next.failures,
                             " wrong PINs"));
  }
  return next.locked ? CKR_PIN_LOCKED : CKR_PIN_INCORRECT;
}

CK_RV ClientPins::Check(const ClientConfig& client, const GroupAccess& access,
                        const std::string& pin) {
  absl::MutexLock lock(&mu_);
  return CheckLocked(client, access, pin);
}

CK_RV ClientPins::Change(const ClientConfig& client, const GroupAccess& access,
                         const std::string& old_pin, const std::string& new_pin) {
  absl::MutexLock lock(&mu_);
  CK_RV rv = CheckLocked(client, access, old_pin);
  if (rv != CKR_OK) return rv;
  if (new_pin.size() < kMinLen || new_pin.size() > kMaxLen) return CKR_PIN_LEN_RANGE;
  auto hash = HashPin(new_pin);
  if (!hash.ok()) return CKR_GENERAL_ERROR;
  if (auto s = store_.PutPinOverride(ClientKey(client), access.slot_id, *hash); !s.ok()) {
    LogError(absl::StrCat("state store: ", s.message()));
    return CKR_GENERAL_ERROR;
  }
  LogInfo(absl::StrCat("audit: PIN changed by ", ClientKey(client), " on slot ", access.slot_id));
  Audit("pin_changed", ClientKey(client), {{"slot", std::to_string(access.slot_id)}});
  return CKR_OK;
}

CK_FLAGS ClientPins::Flags(const ClientConfig& client, uint64_t slot) {
  auto lock = store_.GetLockout(ClientKey(client), slot);
  if (!lock.ok()) return 0;
  if (lock->locked) return CKF_USER_PIN_LOCKED;
  CK_FLAGS flags = 0;
  if (lock->failures > 0) flags |= CKF_USER_PIN_COUNT_LOW;
  if (lock->failures + 1 == max_) flags |= CKF_USER_PIN_FINAL_TRY;
  return flags;
}

absl::Status ClientPins::Unlock(const std::string& client_key, uint64_t slot) {
  absl::MutexLock lock(&mu_);
  auto current = store_.GetLockout(client_key, slot);
  if (!current.ok()) return current.status();
  if (!current->locked && current->failures == 0) {
    return absl::NotFoundError(absl::StrCat(client_key, " is not locked on slot ", slot));
  }
  Lockout cleared;
  cleared.identity = client_key;
  cleared.slot_id = slot;
  HSMUX_RETURN_IF_ERROR(store_.PutLockout(cleared));
  LogInfo(absl::StrCat("audit: admin unlocked ", client_key, " on slot ", slot));
  Audit("admin_unlock", "admin", {{"client", client_key}, {"slot", std::to_string(slot)}});
  return absl::OkStatus();
}

}  // namespace hsmux::agent
