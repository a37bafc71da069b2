// Which functions belong to a cryptographic operation, and what part of it
// they are. Shared by the agent (which keeps the spec's operation state) and
// the module (which mirrors it to answer C_*Init without a round trip,
// docs/decisions/0010-round-trips.md), so both read the same table.
#pragma once

#include <cstddef>
#include <optional>

#include "wire/function_table.h"

namespace hsmux::wire {

enum class OpKind { kEncrypt, kDecrypt, kDigest, kSign, kVerify, kSignRecover, kVerifyRecover };
inline constexpr size_t kOpKinds = 7;

enum class Part { kInit, kSingle, kUpdate, kFinal };

struct OpRole {
  Part part;
  OpKind kind;
  // The second operation of a dual-function update (C_DigestEncryptUpdate...).
  std::optional<OpKind> second;
};

// The role of `f` in an operation; nullopt for functions outside operations.
std::optional<OpRole> OperationOf(F f);

// The C_*Init of a kind.
F InitOf(OpKind kind);

}  // namespace hsmux::wire
