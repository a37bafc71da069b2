#include "pin_hash.h"

#include <openssl/evp.h>

#include <chrono>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace hsmux::agent {
namespace {

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t pos = s.find('$', start);
    parts.push_back(s.substr(start, pos - start));
    if (pos == std::string::npos) return parts;
    start = pos + 1;
  }
}

// Standard base64; `pad` keeps the '=' padding.
std::string B64(const std::string& raw, bool pad) {
  std::string out(4 * ((raw.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(raw.data()),
                          static_cast<int>(raw.size()));
  out.resize(n);
  while (!pad && !out.empty() && out.back() == '=') out.pop_back();
  return out;
}

// An encoded hash made independently of pin_hash.cc, with OpenSSL directly.
std::string MakeHash(const std::string& pin, const std::string& salt,
                     int log2_n, int r, int p, size_t len, bool pad) {
  std::string key(len, '\0');
  EXPECT_EQ(EVP_PBE_scrypt(pin.data(), pin.size(),
                           reinterpret_cast<const unsigned char*>(salt.data()),
                           salt.size(), uint64_t{1} << log2_n, r, p,
                           uint64_t{1} << 30,
                           reinterpret_cast<unsigned char*>(key.data()), len),
            1);
  return "scrypt$" + std::to_string(log2_n) + "$" + std::to_string(r) + "$" +
         std::to_string(p) + "$" + B64(salt, pad) + "$" + B64(key, pad);
}

TEST(PinHashTest, RoundTrip) {
  absl::StatusOr<std::string> hash = HashPin("1234");
  ASSERT_TRUE(hash.ok()) << hash.status();
  EXPECT_TRUE(ValidatePinHash(*hash).ok());
  absl::StatusOr<bool> ok = VerifyPin("1234", *hash);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_TRUE(*ok);
}

TEST(PinHashTest, FormatAndDefaults) {
  absl::StatusOr<std::string> hash = HashPin("1234");
  ASSERT_TRUE(hash.ok());
  std::vector<std::string> parts = Split(*hash);
  ASSERT_EQ(parts.size(), 6u) << *hash;
  EXPECT_EQ(parts[0], "scrypt");
  EXPECT_EQ(parts[1], "15");
  EXPECT_EQ(parts[2], "8");
  EXPECT_EQ(parts[3], "1");
  EXPECT_EQ(parts[4].size(), 22u);  // 16 bytes, unpadded
  EXPECT_EQ(parts[5].size(), 43u);  // 32 bytes, unpadded
  EXPECT_EQ(hash->find('='), std::string::npos);
  EXPECT_EQ(hash->find("1234"), std::string::npos);
}

TEST(PinHashTest, SaltIsFresh) {
  absl::StatusOr<std::string> a = HashPin("1234");
  absl::StatusOr<std::string> b = HashPin("1234");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(*a, *b);
}

TEST(PinHashTest, WrongPinIsFalse) {
  absl::StatusOr<std::string> hash = HashPin("1234");
  ASSERT_TRUE(hash.ok());
  for (const char* wrong : {"1235", "12345", "123", "", "1234\n", " 1234"}) {
    absl::StatusOr<bool> ok = VerifyPin(wrong, *hash);
    ASSERT_TRUE(ok.ok()) << ok.status();
    EXPECT_FALSE(*ok) << wrong;
  }
}

TEST(PinHashTest, EmptyPinIsNotHashed) { EXPECT_FALSE(HashPin("").ok()); }

TEST(PinHashTest, BinaryPin) {
  const std::string pin("a\0b\xff", 4);
  absl::StatusOr<std::string> hash = HashPin(pin);
  ASSERT_TRUE(hash.ok());
  EXPECT_TRUE(*VerifyPin(pin, *hash));
  EXPECT_FALSE(*VerifyPin(std::string("a"), *hash));
}

TEST(PinHashTest, InteroperatesWithOtherCostsAndPadding) {
  const std::string salt = "0123456789abcdef";
  for (bool pad : {false, true}) {
    for (size_t len : {16u, 32u, 64u}) {
      std::string hash = MakeHash("s3cret", salt, 10, 1, 1, len, pad);
      ASSERT_TRUE(ValidatePinHash(hash).ok()) << hash;
      absl::StatusOr<bool> ok = VerifyPin("s3cret", hash);
      ASSERT_TRUE(ok.ok()) << ok.status() << " " << hash;
      EXPECT_TRUE(*ok) << hash;
      EXPECT_FALSE(*VerifyPin("s3creT", hash));
    }
  }
  std::string hash = MakeHash("s3cret", salt, 11, 4, 2, 32, false);
  EXPECT_TRUE(*VerifyPin("s3cret", hash));
}

TEST(PinHashTest, MalformedHashesAreErrors) {
  const std::string good =
      MakeHash("x", "0123456789abcdef", 10, 1, 1, 32, false);
  const std::vector<std::string> p = Split(good);
  auto join = [](const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) s += (i ? "$" : "") + v[i];
    return s;
  };
  auto with = [&](size_t i, const std::string& value) {
    std::vector<std::string> v = p;
    v[i] = value;
    return join(v);
  };
  const std::vector<std::string> bad = {
      "",
      "scrypt",
      "$$$$$",
      "pbkdf2$10$1$1$" + p[4] + "$" + p[5],
      good + "$",
      good + "$extra",
      "scrypt$10$1$1$" + p[4],
      with(1, ""),
      with(1, "x"),
      with(1, "010"),  // leading zero
      with(1, "+10"),
      with(1, " 10"),
      with(1, "99999999999"),
      with(2, "-1"),
      with(2, "0"),
      with(3, "0"),
      with(4, ""),
      with(4, "!!!!"),
      with(4, p[4] + "="),  // wrong padding for the length
      with(4, p[4] + "==="),
      with(4, "AAAAA"),                    // length 1 mod 4
      with(4, "AAAAAAA"),                  // 5 bytes: too short a salt
      with(4, "MDEyMzQ1Njc4OWFiY2Rl Zg"),  // whitespace
      with(5, p[5].substr(0, 20)),         // 15 bytes: too short a hash
      with(5, std::string(100, 'A')),      // 75 bytes: too long
      with(5, p[5].substr(0, 42) + "B"),   // non-zero trailing bits
  };
  for (const std::string& b : bad) {
    EXPECT_FALSE(ValidatePinHash(b).ok()) << b;
    absl::StatusOr<bool> ok = VerifyPin("x", b);
    EXPECT_FALSE(ok.ok()) << b;
  }
  EXPECT_TRUE(*VerifyPin("x", good));
}

TEST(PinHashTest, CostCapsEnforced) {
  const std::string salt = "MDEyMzQ1Njc4OWFiY2RlZg";
  const std::string key(43, 'A');
  auto enc = [&](const std::string& n, const std::string& r,
                 const std::string& p) {
    return "scrypt$" + n + "$" + r + "$" + p + "$" + salt + "$" + key;
  };
  EXPECT_TRUE(ValidatePinHash(enc("10", "1", "1")).ok());
  EXPECT_TRUE(ValidatePinHash(enc("20", "1", "4")).ok());   // 128 MiB
  EXPECT_TRUE(ValidatePinHash(enc("20", "2", "1")).ok());   // 256 MiB
  EXPECT_TRUE(ValidatePinHash(enc("17", "16", "1")).ok());  // 256 MiB
  EXPECT_FALSE(ValidatePinHash(enc("9", "1", "1")).ok());
  EXPECT_FALSE(ValidatePinHash(enc("21", "1", "1")).ok());
  EXPECT_FALSE(ValidatePinHash(enc("63", "1", "1")).ok());
  EXPECT_FALSE(ValidatePinHash(enc("64", "1", "1")).ok());
  EXPECT_FALSE(ValidatePinHash(enc("10", "17", "1")).ok());
  EXPECT_FALSE(ValidatePinHash(enc("10", "1", "5")).ok());
  // Each value within its own cap, but together 2 GiB / 512 MiB.
  EXPECT_FALSE(ValidatePinHash(enc("20", "16", "1")).ok());
  EXPECT_FALSE(ValidatePinHash(enc("20", "4", "1")).ok());
  EXPECT_FALSE(ValidatePinHash(enc("18", "16", "4")).ok());

  // A hostile hash is refused before any work is done.
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<bool> ok = VerifyPin("x", enc("20", "16", "4"));
  EXPECT_FALSE(ok.ok());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));
}

TEST(PinHashTest, ErrorsDoNotEchoTheInput) {
  const std::string secretish = "scrypt$15$8$1$my-pin-0000$oops";
  absl::Status s = ValidatePinHash(secretish);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(std::string(s.message()).find("my-pin-0000"), std::string::npos);
}

}  // namespace
}  // namespace hsmux::agent
