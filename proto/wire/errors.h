// Errors travel as values: an absl::Status that carries the CK_RV the caller
// must see. Module and agent both build statuses with CkError and turn them
// back into a CK_RV with GetCkRv, in one place per side.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "wire/cryptoki.h"

namespace hsmux::wire {

// Builds a non-OK status carrying `rv`. `rv` must not be CKR_OK.
absl::Status CkError(CK_RV rv, std::string_view message);

// The CK_RV a status carries: CKR_OK for OK, the payload if there is one,
// CKR_GENERAL_ERROR otherwise.
CK_RV GetCkRv(const absl::Status& status);

// "CKR_PIN_INCORRECT" etc., or "CKR_0x...", for log lines.
std::string CkRvName(CK_RV rv);

}  // namespace hsmux::wire

// Evaluates a Status expression and returns it from the enclosing function if
// it is not OK.
#define HSMUX_RETURN_IF_ERROR(expr)          \
  do {                                       \
    ::absl::Status hsmux_status_ = (expr);   \
    if (!hsmux_status_.ok()) return hsmux_status_; \
  } while (0)

#define HSMUX_CONCAT_INNER_(a, b) a##b
#define HSMUX_CONCAT_(a, b) HSMUX_CONCAT_INNER_(a, b)
// Assigns the value of a StatusOr expression to `lhs`, or returns its status.
#define HSMUX_ASSIGN_OR_RETURN(lhs, expr) \
  HSMUX_ASSIGN_OR_RETURN_IMPL_(HSMUX_CONCAT_(hsmux_statusor_, __LINE__), lhs, expr)
#define HSMUX_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()
