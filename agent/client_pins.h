// Client PINs (DESIGN §2 "Login"): checked against the salted hash from the
// config, or the one C_SetPIN stored since; wrong PINs counted per identity
// and group, and `max_pin_failures` in a row lock the identity out of the
// group until an operator unlocks it. Counts and locks live in the state
// store, so they survive restarts.
#pragma once

#include <cstdint>
#include <string>

#include "absl/synchronization/mutex.h"
#include "config.h"
#include "state_store.h"
#include "wire/cryptoki.h"

namespace hsmux::agent {

class ClientPins {
 public:
  ClientPins(StateStore& store, uint32_t max_failures) : store_(store), max_(max_failures) {}

  // CKR_OK, CKR_PIN_INCORRECT (counted), CKR_PIN_LOCKED, CKR_PIN_LEN_RANGE,
  // or CKR_GENERAL_ERROR for an unusable stored hash / store failure.
  CK_RV Check(const ClientConfig& client, const GroupAccess& access, const std::string& pin);

  // C_SetPIN: the old PIN must be right (a wrong one counts as a failure).
  CK_RV Change(const ClientConfig& client, const GroupAccess& access, const std::string& old_pin,
               const std::string& new_pin);

  // CKF_USER_PIN_COUNT_LOW / _FINAL_TRY / _LOCKED for the token info.
  CK_FLAGS Flags(const ClientConfig& client, uint64_t slot);

  // hsmuxctl unlock. NotFound if the identity is not locked.
  absl::Status Unlock(const std::string& client_key, uint64_t slot);

  static constexpr size_t kMinLen = 4;
  static constexpr size_t kMaxLen = 255;

 private:
  CK_RV CheckLocked(const ClientConfig& client, const GroupAccess& access, const std::string& pin)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  StateStore& store_;
  const uint32_t max_;
  absl::Mutex mu_;  // one PIN decision at a time: the count must not race
};

}  // namespace hsmux::agent
