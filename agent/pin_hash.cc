#include "pin_hash.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace hsmux::agent {
namespace {

constexpr absl::string_view kScheme = "scrypt";

// Defaults for new hashes: OpenSSL's and RFC 7914's interactive-login
// recommendation (32 MiB, roughly 0.1 s on a current core).
constexpr int kDefaultLog2N = 15;
constexpr uint64_t kDefaultR = 8;
constexpr uint64_t kDefaultP = 1;
constexpr size_t kDefaultSaltLen = 16;
constexpr size_t kDefaultHashLen = 32;

// Caps on what a config may ask for. The hash is recomputed on every C_Login,
// so a hostile or mistyped config must not make the agent allocate gigabytes
// or burn seconds of CPU per login attempt.
constexpr int kMinLog2N = 10;
constexpr int kMaxLog2N = 20;
constexpr uint64_t kMaxR = 16;
constexpr uint64_t kMaxP = 4;
// scrypt's big buffer is 128 * r * N bytes. The individual caps above would
// still allow 2 GiB (N = 2^20, r = 16), so the product is capped as well.
constexpr uint64_t kMaxScryptMemory = uint64_t{256} << 20;  // 256 MiB
// Salt and derived-key lengths accepted from a config (we emit 16 and 32).
constexpr size_t kMinSaltLen = 8;
constexpr size_t kMaxSaltLen = 64;
constexpr size_t kMinHashLen = 16;
constexpr size_t kMaxHashLen = 64;

struct ScryptParams {
  int log2_n = 0;
  uint64_t r = 0;
  uint64_t p = 0;
  std::string salt;  // raw bytes
  std::string hash;  // raw bytes
};

// Unpadded standard base64 (RFC 4648 §4 alphabet, '=' padding stripped).
std::string Base64Encode(absl::string_view raw) {
  if (raw.empty()) return "";
  // EVP_EncodeBlock writes 4 * ceil(n / 3) characters plus a NUL.
  std::string out(4 * ((raw.size() + 2) / 3) + 1, '\0');
  int written =
      EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                      reinterpret_cast<const unsigned char*>(raw.data()),
                      static_cast<int>(raw.size()));
  out.resize(written > 0 ? static_cast<size_t>(written) : 0);
  while (!out.empty() && out.back() == '=') out.pop_back();
  return out;
}

bool IsBase64Char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
         (c >= '0' && c <= '9') || c == '+' || c == '/';
}

// Decodes base64 with or without '=' padding. Strict: only the standard
// alphabet, no whitespace, and the encoding must be canonical (it re-encodes
// to the same text), so one hash has exactly one spelling.
bool Base64Decode(absl::string_view text, std::string* raw) {
  // Accept correct padding from other tools, but no more than two '='.
  size_t padding = 0;
  while (!text.empty() && text.back() == '=' && padding < 2) {
    text.remove_suffix(1);
    ++padding;
  }
  if (text.empty()) return false;
  for (char c : text) {
    if (!IsBase64Char(c)) return false;
  }
  // A length of 1 mod 4 cannot come from any byte string.
  if (text.size() % 4 == 1) return false;
  const size_t missing = (4 - text.size() % 4) % 4;
  if (padding != 0 && padding != missing) return false;
  // EVP_DecodeBlock wants whole 4-character groups; it decodes the padding
  // as zero bytes and counts them, so they are cut off again below.
  std::string padded(text);
  padded.append(missing, '=');
  std::string out(padded.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(padded.data()),
                          static_cast<int>(padded.size()));
  if (n < 0 || static_cast<size_t>(n) != out.size()) return false;
  out.resize(out.size() - missing);
  if (Base64Encode(out) != text) return false;  // non-zero trailing bits
  *raw = std::move(out);
  return true;
}

// A small decimal number: digits only, no sign, no leading zeros, no spaces.
bool ParseSmallUint(absl::string_view text, uint64_t* value) {
  if (text.empty() || text.size() > 6) return false;
  if (text.size() > 1 && text[0] == '0') return false;
  uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  *value = v;
  return true;
}

absl::Status CheckCost(int log2_n, uint64_t r, uint64_t p) {
  if (log2_n < kMinLog2N || log2_n > kMaxLog2N) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scrypt log2 N must be between ", kMinLog2N, " and ", kMaxLog2N));
  }
  if (r < 1 || r > kMaxR) {
    return absl::InvalidArgumentError(
        absl::StrCat("scrypt r must be between 1 and ", kMaxR));
  }
  if (p < 1 || p > kMaxP) {
    return absl::InvalidArgumentError(
        absl::StrCat("scrypt p must be between 1 and ", kMaxP));
  }
  if ((uint64_t{128} * r) << log2_n > kMaxScryptMemory) {
    return absl::InvalidArgumentError(
        absl::StrCat("scrypt cost needs more than ", kMaxScryptMemory >> 20,
                     " MiB (128 * r * N)"));
  }
  return absl::OkStatus();
}

// Never mentions the text itself: it is config content, and a careless
// operator may have pasted a PIN there.
absl::StatusOr<ScryptParams> Parse(absl::string_view encoded) {
  std::vector<absl::string_view> parts = absl::StrSplit(encoded, '$');
  if (parts.size() != 6 || parts[0] != kScheme) {
    return absl::InvalidArgumentError(
        "expected scrypt$<log2 N>$<r>$<p>$<salt>$<hash>");
  }
  ScryptParams params;
  uint64_t log2_n = 0;
  if (!ParseSmallUint(parts[1], &log2_n) ||
      !ParseSmallUint(parts[2], &params.r) ||
      !ParseSmallUint(parts[3], &params.p)) {
    return absl::InvalidArgumentError(
        "scrypt log2 N, r and p must be decimal numbers");
  }
  if (log2_n > 63) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scrypt log2 N must be between ", kMinLog2N, " and ", kMaxLog2N));
  }
  params.log2_n = static_cast<int>(log2_n);
  if (absl::Status s = CheckCost(params.log2_n, params.r, params.p); !s.ok()) {
    return s;
  }
  if (!Base64Decode(parts[4], &params.salt)) {
    return absl::InvalidArgumentError("scrypt salt is not valid base64");
  }
  if (params.salt.size() < kMinSaltLen || params.salt.size() > kMaxSaltLen) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scrypt salt must be ", kMinSaltLen, " to ", kMaxSaltLen, " bytes"));
  }
  if (!Base64Decode(parts[5], &params.hash)) {
    return absl::InvalidArgumentError("scrypt hash is not valid base64");
  }
  if (params.hash.size() < kMinHashLen || params.hash.size() > kMaxHashLen) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scrypt hash must be ", kMinHashLen, " to ", kMaxHashLen, " bytes"));
  }
  return params;
}

// Derives `out_len` bytes into `out`. The caller cleanses `out`.
absl::Status Derive(absl::string_view pin, const std::string& salt, int log2_n,
                    uint64_t r, uint64_t p, unsigned char* out,
                    size_t out_len) {
  const uint64_t n = uint64_t{1} << log2_n;
  // What OpenSSL allocates: B (128 * r * p) plus V and scratch
  // (128 * r * (N + 2)); a little slack on top. Only reached after
  // CheckCost, so this stays under ~260 MiB.
  const uint64_t maxmem = 128 * r * (n + 2) + 128 * r * p + (uint64_t{1} << 20);
  // OpenSSL's scrypt treats a NULL password as "no password"; a
  // string_view of "" may have a null data(), so point it somewhere valid.
  static const char kEmpty[1] = {'\0'};
  const char* pass = pin.empty() ? kEmpty : pin.data();
  if (EVP_PBE_scrypt(pass, pin.size(),
                     reinterpret_cast<const unsigned char*>(salt.data()),
                     salt.size(), n, r, p, maxmem, out, out_len) != 1) {
    return absl::InternalError("scrypt failed (out of memory?)");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> HashPin(std::string_view pin_in) {
  const absl::string_view pin(pin_in.data(), pin_in.size());
  if (pin.empty()) return absl::InvalidArgumentError("PIN must not be empty");
  std::string salt(kDefaultSaltLen, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(salt.data()),
                 static_cast<int>(salt.size())) != 1) {
    return absl::InternalError("RAND_bytes failed");
  }
  unsigned char key[kDefaultHashLen];
  absl::Status s =
      Derive(pin, salt, kDefaultLog2N, kDefaultR, kDefaultP, key, sizeof key);
  if (!s.ok()) {
    OPENSSL_cleanse(key, sizeof key);
    return s;
  }
  std::string encoded =
      absl::StrCat(kScheme, "$", kDefaultLog2N, "$", kDefaultR, "$", kDefaultP,
                   "$", Base64Encode(salt), "$",
                   Base64Encode(absl::string_view(
                       reinterpret_cast<const char*>(key), sizeof key)));
  OPENSSL_cleanse(key, sizeof key);
  return encoded;
}

absl::Status ValidatePinHash(std::string_view encoded) {
  absl::StatusOr<ScryptParams> params =
      Parse(absl::string_view(encoded.data(), encoded.size()));
  if (!params.ok()) return params.status();
  return absl::OkStatus();
}

absl::StatusOr<bool> VerifyPin(std::string_view pin_in,
                               std::string_view encoded) {
  const absl::string_view pin(pin_in.data(), pin_in.size());
  absl::StatusOr<ScryptParams> params =
      Parse(absl::string_view(encoded.data(), encoded.size()));
  if (!params.ok()) return params.status();
  unsigned char key[kMaxHashLen];
  const size_t len = params->hash.size();
  absl::Status s =
      Derive(pin, params->salt, params->log2_n, params->r, params->p, key, len);
  if (!s.ok()) {
    OPENSSL_cleanse(key, sizeof key);
    return s;
  }
  // Constant time, so the comparison does not leak how much of the derived
  // key matched.
  const bool match = CRYPTO_memcmp(key, params->hash.data(), len) == 0;
  OPENSSL_cleanse(key, sizeof key);
  return match;
}

}  // namespace hsmux::agent
