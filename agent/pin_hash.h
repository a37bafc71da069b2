// Client PINs are stored as salted slow hashes (scrypt from OpenSSL 3).
// Format: "scrypt$<log2 N>$<r>$<p>$<salt base64>$<hash base64>".
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace hsmux::agent {

// Hashes a PIN with a fresh random 16-byte salt. Default cost: N=2^15, r=8, p=1.
absl::StatusOr<std::string> HashPin(std::string_view pin);

// Checks the encoded hash is well formed (for config validation).
absl::Status ValidatePinHash(std::string_view encoded);

// True if `pin` matches; constant-time comparison of the derived keys.
// Errors only for a malformed `encoded`.
absl::StatusOr<bool> VerifyPin(std::string_view pin, std::string_view encoded);

}  // namespace hsmux::agent
