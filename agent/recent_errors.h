// The agent's recent errors (issue 7, `hsmuxctl status`): a bounded list in
// memory of the last distinct error events, for an operator who asks what
// went wrong lately. One mechanism, fed where the agent already logs the
// event: a member taken out or failing a call, a member not readmitted, a
// call answered CKR_DEVICE_ERROR, a PIN lockout, a refused client identity.
//
// Callers pass names, Cryptoki function and return value names, identities
// and slots only: never a PIN, key material or a key label. Messages are cut
// to kRecentErrorMessageMax bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"

namespace hsmux::agent {

inline constexpr size_t kRecentErrorsKept = 20;
inline constexpr size_t kRecentErrorMessageMax = 200;

struct RecentError {
  absl::Time when;  // the last occurrence
  std::string kind;
  std::string group;
  std::string member;
  std::string message;
  uint64_t count = 1;
};

// Records an event. The same event again (kind, group, member and message
// alike) moves to the end with its count raised; past kRecentErrorsKept
// distinct events the oldest is dropped. Thread-safe.
void RecordError(std::string_view kind, std::string_view group, std::string_view member,
                 std::string_view message);

// The list, oldest first.
std::vector<RecentError> RecentErrors();

// Empties the list (tests).
void ClearRecentErrors();

}  // namespace hsmux::agent
