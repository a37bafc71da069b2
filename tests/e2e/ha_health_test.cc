// Health (DESIGN §5, issue 4 items 2 and 5): a client's garbage never ejects
// a member; with one member left the token still serves; with none, calls
// answer CKR_DEVICE_ERROR while the token stays listed, and service resumes
// by itself when a member returns. Members behind testwrap (ha.cmake).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "group_util.h"
#include "ha_fixture.h"

namespace hsmux::grouptest {
namespace {

// Tests open their own sessions (OpenSession tolerates the fixture's login).
using HaHealth = HaTest;

// An RSA pair whose private half may decrypt.
CK_RV GenRsaDecrypt(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, const std::string& label, Pair* out) {
  CK_MECHANISM m = {CKM_RSA_PKCS_KEY_PAIR_GEN, nullptr, 0};
  Attrs pub, priv;
  pub.Bool(CKA_TOKEN, true).Ulong(CKA_MODULUS_BITS, 2048).Raw(CKA_PUBLIC_EXPONENT, {1, 0, 1});
  pub.Bool(CKA_ENCRYPT, true).Str(CKA_LABEL, label).Raw(CKA_ID, ToBytes(label));
  priv.Bool(CKA_TOKEN, true).Bool(CKA_PRIVATE, true).Bool(CKA_SENSITIVE, true);
  priv.Bool(CKA_DECRYPT, true).Str(CKA_LABEL, label).Raw(CKA_ID, ToBytes(label));
  return p->C_GenerateKeyPair(s, &m, pub.data(), pub.size(), priv.data(), priv.size(), &out->pub,
                              &out->priv);
}

size_t Count(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

TEST_F(HaHealth, GarbageCiphertextEjectsNobody) {
  CK_RV rv;
  CK_SESSION_HANDLE s = OpenSession(p_, ClientPin(), &rv);
  ASSERT_EQ(rv, CKR_OK);
  Pair rsa;
  ASSERT_EQ(GenRsaDecrypt(p_, s, Unique("garbage-rsa"), &rsa), CKR_OK);
  const std::string log_path = Env("HSMUX_TEST_DIR") + "/hsmuxd.log";
  const size_t taken_before = Count(ReadFile(log_path), " taken out: ");
  auto before = GroupStatus();
  ASSERT_EQ(before.size(), 3u);

  std::vector<CK_RV> answers;
  for (int i = 0; i < 20; ++i) {
    // Below the modulus (leading zero byte) but not a PKCS#1 v1.5 block.
    Bytes garbage = RandomBytes(256);
    garbage[0] = 0x00;
    garbage[1] = 0x07;
    CK_MECHANISM m = {CKM_RSA_PKCS, nullptr, 0};
    ASSERT_EQ(p_->C_DecryptInit(s, &m, rsa.priv), CKR_OK);
    Bytes out(256);
    CK_ULONG len = out.size();
    answers.push_back(p_->C_Decrypt(s, garbage.data(), garbage.size(), out.data(), &len));
    auto st = GroupStatus();
    for (const auto& [name, ms] : st) EXPECT_EQ(ms.state, "healthy") << "after garbage " << i;
  }
  std::printf("HEALTH garbage C_Decrypt answers %s (x%zu)\n", RvStr(answers[0]).c_str(),
              answers.size());
  for (CK_RV a : answers) {
    EXPECT_EQ(a, answers[0]);
    EXPECT_NE(a, CKR_OK);
    EXPECT_NE(a, CKR_DEVICE_ERROR);
  }
  // SoftHSM answers CKR_GENERAL_ERROR to a bad PKCS#1 block (DESIGN §5).
  EXPECT_EQ(answers[0], static_cast<CK_RV>(CKR_GENERAL_ERROR)) << RvStr(answers[0]);
  auto after = GroupStatus();
  uint64_t failovers = 0;
  for (const auto& [name, ms] : after) {
    EXPECT_EQ(ms.state, "healthy") << name;
    failovers += ms.failovers;
  }
  EXPECT_EQ(failovers, 0u) << "garbage moved operations off members";
  EXPECT_EQ(Count(ReadFile(log_path), " taken out: "), taken_before);
  // The key still works afterwards.
  Bytes plain = ToBytes("still fine");
  CK_MECHANISM m = {CKM_RSA_PKCS, nullptr, 0};
  ASSERT_EQ(p_->C_EncryptInit(s, &m, rsa.pub), CKR_OK);
  Bytes ct(256);
  CK_ULONG len = ct.size();
  ASSERT_EQ(p_->C_Encrypt(s, plain.data(), plain.size(), ct.data(), &len), CKR_OK);
  ASSERT_EQ(p_->C_DecryptInit(s, &m, rsa.priv), CKR_OK);
  Bytes back(256);
  len = back.size();
  ASSERT_EQ(p_->C_Decrypt(s, ct.data(), ct.size(), back.data(), &len), CKR_OK);
  back.resize(len);
  EXPECT_EQ(back, plain);
  p_->C_CloseSession(s);
}

TEST_F(HaHealth, OneLeftServesNoneLeftFailsThenResumes) {
  CK_RV rv;
  CK_SESSION_HANDLE s = OpenSession(p_, ClientPin(), &rv);
  ASSERT_EQ(rv, CKR_OK);
  const std::string label = Unique("health-ec");
  Pair ec;
  ASSERT_EQ(GenEc(p_, s, label, ToBytes(label), true, &ec), CKR_OK);
  const Bytes point = EcPointOctets(Attr(p_, s, ec.pub, CKA_EC_POINT));
  auto sign_ok = [&](const std::string& what) -> CK_RV {
    const Bytes digest = Sha256(ToBytes(what));
    CK_RV r;
    Bytes sig = Sign(p_, s, CKM_ECDSA, ec.priv, digest, &r);
    if (r == CKR_OK && !OpenSslVerifyEcdsa(point, digest, sig)) return CKR_SIGNATURE_INVALID;
    return r;
  };

  // One member left: still serving, at once and afterwards.
  ASSERT_TRUE(TestwrapCtl("member-a", {"power=off"}));
  ASSERT_TRUE(TestwrapCtl("member-b", {"power=off"}));
  for (int i = 0; i < 10; ++i) EXPECT_EQ(sign_ok("one left " + std::to_string(i)), CKR_OK) << i;
  std::string raw;
  auto st = GroupStatus(&raw);
  EXPECT_EQ(st["a"].state, "OUT") << raw;
  EXPECT_EQ(st["b"].state, "OUT") << raw;
  EXPECT_EQ(st["c"].state, "healthy") << raw;

  // None left: CKR_DEVICE_ERROR, while the token is still listed.
  ASSERT_TRUE(TestwrapCtl("member-c", {"power=off"}));
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(sign_ok("none left " + std::to_string(i)), static_cast<CK_RV>(CKR_DEVICE_ERROR)) << i;
  }
  CK_ULONG n = 0;
  ASSERT_EQ(p_->C_GetSlotList(CK_TRUE, nullptr, &n), CKR_OK);
  std::vector<CK_SLOT_ID> slots(n);
  ASSERT_EQ(p_->C_GetSlotList(CK_TRUE, slots.data(), &n), CKR_OK);
  EXPECT_NE(std::find(slots.begin(), slots.end(), kSlot), slots.end());
  CK_TOKEN_INFO ti;
  ASSERT_EQ(p_->C_GetTokenInfo(kSlot, &ti), CKR_OK);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(ti.label), 10), "hsmux-demo");
  // Objects are still found (from the registry).
  EXPECT_EQ(FindLabel(p_, s, label).size(), 2u);
  st = GroupStatus(&raw);
  for (const auto& [name, ms] : st) EXPECT_EQ(ms.state, "OUT") << raw;

  // One returns: service resumes by itself (the health monitor readmits it).
  ASSERT_TRUE(TestwrapCtl("member-c", {"power=on"}));
  const auto back = std::chrono::steady_clock::now();
  CK_RV last = CKR_DEVICE_ERROR;
  while (std::chrono::steady_clock::now() - back < std::chrono::seconds(30)) {
    last = sign_ok("resumed");
    if (last == CKR_OK) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(last, CKR_OK);
  std::printf("HEALTH service resumed %.2f s after member-c came back\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - back).count());
  for (int i = 0; i < 5; ++i) EXPECT_EQ(sign_ok("after " + std::to_string(i)), CKR_OK) << i;
  p_->C_CloseSession(s);
}

}  // namespace
}  // namespace hsmux::grouptest
