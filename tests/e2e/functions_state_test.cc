// E2E: spec-exact operation state (DESIGN §2 "Exact Cryptoki, even where a
// member is not"). One test per SoftHSM deviation (notes/softhsm-facts.md,
// "Where SoftHSM departs from the spec") that the virtual token corrects.
#include "functions_util.h"

namespace hsmux::testing {
namespace {

using SpecStateTest = P11Test;

const Bytes kBlock = ToBytes("sixteen byte blk");

// SoftHSM: after CKR_ARGUMENTS_BAD in C_Encrypt the operation stays active
// (the next C_EncryptInit answers CKR_OPERATION_ACTIVE). The spec ends it;
// here the module finds the error locally and tells the agent.
TEST_F(SpecStateTest, LocalArgumentErrorEndsEncryption) {
  auto s = UserSession();
  CK_OBJECT_HANDLE key = GenAes(s->h());
  Bytes iv(16, 3);
  CK_MECHANISM m = {CKM_AES_CBC_PAD, iv.data(), iv.size()};
  ASSERT_EQ(p->C_EncryptInit(s->h(), &m, key), CKR_OK);
  Bytes out(64);
  CK_ULONG len = out.size();
  EXPECT_EQ(p->C_Encrypt(s->h(), nullptr, 16, out.data(), &len), CKR_ARGUMENTS_BAD);
  len = out.size();
  EXPECT_EQ(
      p->C_Encrypt(s->h(), const_cast<CK_BYTE*>(kBlock.data()), kBlock.size(), out.data(), &len),
      CKR_OPERATION_NOT_INITIALIZED);
  ASSERT_EQ(p->C_EncryptInit(s->h(), &m, key), CKR_OK);
  len = out.size();
  EXPECT_EQ(
      p->C_Encrypt(s->h(), const_cast<CK_BYTE*>(kBlock.data()), kBlock.size(), out.data(), &len),
      CKR_OK);
  EXPECT_EQ(len, 32u);
}

// The same for a NULL length pointer in C_EncryptUpdate.
TEST_F(SpecStateTest, LocalArgumentErrorEndsMultiPartEncryption) {
  auto s = UserSession();
  CK_OBJECT_HANDLE key = GenAes(s->h());
  Bytes iv(16, 3);
  CK_MECHANISM m = {CKM_AES_CBC_PAD, iv.data(), iv.size()};
  ASSERT_EQ(p->C_EncryptInit(s->h(), &m, key), CKR_OK);
  Bytes out(64);
  EXPECT_EQ(p->C_EncryptUpdate(s->h(), const_cast<CK_BYTE*>(kBlock.data()), kBlock.size(),
                               out.data(), nullptr),
            CKR_ARGUMENTS_BAD);
  CK_ULONG len = out.size();
  EXPECT_EQ(p->C_EncryptFinal(s->h(), out.data(), &len), CKR_OPERATION_NOT_INITIALIZED);
  EXPECT_EQ(p->C_EncryptInit(s->h(), &m, key), CKR_OK);
}

// SoftHSM: C_Digest / C_DigestFinal keep working after an error.
TEST_F(SpecStateTest, ArgumentErrorEndsDigest) {
  Session s(p, false);
  CK_MECHANISM m = {CKM_SHA256, nullptr, 0};
  ASSERT_EQ(p->C_DigestInit(s.h(), &m), CKR_OK);
  Bytes d(32);
  CK_ULONG len = d.size();
  EXPECT_EQ(p->C_Digest(s.h(), nullptr, 5, d.data(), &len), CKR_ARGUMENTS_BAD);
  len = d.size();
  EXPECT_EQ(p->C_DigestFinal(s.h(), d.data(), &len), CKR_OPERATION_NOT_INITIALIZED);
  EXPECT_EQ(p->C_DigestInit(s.h(), &m), CKR_OK);
  EXPECT_EQ(p->C_DigestUpdate(s.h(), nullptr, 3), CKR_ARGUMENTS_BAD);
  len = d.size();
  EXPECT_EQ(p->C_DigestFinal(s.h(), d.data(), &len), CKR_OPERATION_NOT_INITIALIZED);
}

// An error found by the member (not the module) ends the operation too.
TEST_F(SpecStateTest, MemberErrorEndsDecryption) {
  auto s = UserSession();
  CK_OBJECT_HANDLE key = GenAes(s->h());
  Bytes iv(16, 3);
  CK_MECHANISM m = {CKM_AES_CBC_PAD, iv.data(), iv.size()};
  ASSERT_EQ(p->C_DecryptInit(s->h(), &m, key), CKR_OK);
  Bytes bad(15, 0x5A), out(64);  // not a multiple of the block size
  CK_ULONG len = out.size();
  const CK_RV rv = p->C_Decrypt(s->h(), bad.data(), bad.size(), out.data(), &len);
  EXPECT_NE(rv, CKR_OK);
  EXPECT_NE(rv, CKR_BUFFER_TOO_SMALL);
  Bytes good(16, 0);
  len = out.size();
  EXPECT_EQ(p->C_Decrypt(s->h(), good.data(), good.size(), out.data(), &len),
            CKR_OPERATION_NOT_INITIALIZED);
  EXPECT_EQ(p->C_DecryptInit(s->h(), &m, key), CKR_OK);
}

// SoftHSM: C_Encrypt after C_EncryptUpdate answers CKR_OK. hsmux refuses the
// mix with CKR_OPERATION_ACTIVE (and, as for any error, ends the operation).
TEST_F(SpecStateTest, SinglePartAfterMultiPartIsOperationActive) {
  auto s = UserSession();
  CK_OBJECT_HANDLE key = GenAes(s->h());
  Bytes iv(16, 3);
  CK_MECHANISM m = {CKM_AES_CBC_PAD, iv.data(), iv.size()};
  ASSERT_EQ(p->C_EncryptInit(s->h(), &m, key), CKR_OK);
  Bytes out(64);
  CK_ULONG len = out.size();
  ASSERT_EQ(p->C_EncryptUpdate(s->h(), const_cast<CK_BYTE*>(kBlock.data()), kBlock.size(),
                               out.data(), &len),
            CKR_OK);
  len = out.size();
  EXPECT_EQ(
      p->C_Encrypt(s->h(), const_cast<CK_BYTE*>(kBlock.data()), kBlock.size(), out.data(), &len),
      CKR_OPERATION_ACTIVE);
  EXPECT_EQ(p->C_EncryptInit(s->h(), &m, key), CKR_OK);
}

// SoftHSM: C_EncryptUpdate after a length-query C_Encrypt answers CKR_OK.
TEST_F(SpecStateTest, MultiPartAfterSinglePartLengthQueryIsOperationActive) {
  auto s = UserSession();
  CK_OBJECT_HANDLE key = GenAes(s->h());
  Bytes iv(16, 3);
  CK_MECHANISM m = {CKM_AES_CBC_PAD, iv.data(), iv.size()};
  ASSERT_EQ(p->C_EncryptInit(s->h(), &m, key), CKR_OK);
  CK_ULONG len = 0;
  ASSERT_EQ(p->C_Encrypt(s->h(), const_cast<CK_BYTE*>(kBlock.data()), kBlock.size(), nullptr, &len),
            CKR_OK);
  EXPECT_EQ(len, 32u);
  Bytes out(64);
  len = out.size();
  EXPECT_EQ(p->C_EncryptUpdate(s->h(), const_cast<CK_BYTE*>(kBlock.data()), kBlock.size(),
                               out.data(), &len),
            CKR_OPERATION_ACTIVE);
  EXPECT_EQ(p->C_EncryptInit(s->h(), &m, key), CKR_OK);
}

TEST_F(SpecStateTest, DigestMixIsOperationActive) {
  Session s(p, false);
  CK_MECHANISM m = {CKM_SHA256, nullptr, 0};
  Bytes d(32);
  ASSERT_EQ(p->C_DigestInit(s.h(), &m), CKR_OK);
  ASSERT_EQ(p->C_DigestUpdate(s.h(), const_cast<CK_BYTE*>(kBlock.data()), kBlock.size()), CKR_OK);
  CK_ULONG len = d.size();
  EXPECT_EQ(p->C_Digest(s.h(), const_cast<CK_BYTE*>(kBlock.data()), kBlock.size(), d.data(), &len),
            CKR_OPERATION_ACTIVE);

  ASSERT_EQ(p->C_DigestInit(s.h(), &m), CKR_OK);
  len = 0;
  ASSERT_EQ(p->C_Digest(s.h(), const_cast<CK_BYTE*>(kBlock.data()), kBlock.size(), nullptr, &len),
            CKR_OK);
  EXPECT_EQ(p->C_DigestUpdate(s.h(), const_cast<CK_BYTE*>(kBlock.data()), kBlock.size()),
            CKR_OPERATION_ACTIVE);
  // And an operation left alone is refused a second Init.
  ASSERT_EQ(p->C_DigestInit(s.h(), &m), CKR_OK);
  EXPECT_EQ(p->C_DigestInit(s.h(), &m), CKR_OPERATION_ACTIVE);
  len = d.size();
  EXPECT_EQ(p->C_Digest(s.h(), const_cast<CK_BYTE*>(kBlock.data()), kBlock.size(), d.data(), &len),
            CKR_OK);
  EXPECT_EQ(d, Sha256(kBlock));
}

// SoftHSM: a bogus key handle in C_EncryptInit is CKR_OBJECT_HANDLE_INVALID.
TEST_F(SpecStateTest, BogusKeyHandleIsKeyHandleInvalid) {
  auto s = UserSession();
  Bytes iv(16, 3);
  CK_MECHANISM m = {CKM_AES_CBC_PAD, iv.data(), iv.size()};
  EXPECT_EQ(p->C_EncryptInit(s->h(), &m, 0x7ffffff7), CKR_KEY_HANDLE_INVALID);
  EXPECT_EQ(p->C_DecryptInit(s->h(), &m, CK_INVALID_HANDLE), CKR_KEY_HANDLE_INVALID);
  CK_MECHANISM ecdsa = {CKM_ECDSA, nullptr, 0};
  EXPECT_EQ(p->C_SignInit(s->h(), &ecdsa, 0x7ffffff8), CKR_KEY_HANDLE_INVALID);
  EXPECT_EQ(p->C_VerifyInit(s->h(), &ecdsa, 0x7ffffff9), CKR_KEY_HANDLE_INVALID);
  // A destroyed key.
  CK_OBJECT_HANDLE key = GenAes(s->h());
  ASSERT_EQ(p->C_DestroyObject(s->h(), key), CKR_OK);
  EXPECT_EQ(p->C_EncryptInit(s->h(), &m, key), CKR_KEY_HANDLE_INVALID);
  // A failed Init leaves nothing active.
  CK_OBJECT_HANDLE good = GenAes(s->h());
  EXPECT_EQ(p->C_EncryptInit(s->h(), &m, good), CKR_OK);
}

// A CBC IV of the wrong length: the module checks IV lengths itself and
// answers the spec's CKR_MECHANISM_PARAM_INVALID without a round trip.
TEST_F(SpecStateTest, CbcWithWrongIvLengthIsMechanismParamInvalid) {
  auto s = UserSession();
  CK_OBJECT_HANDLE key = GenAes(s->h());
  CK_BYTE short_iv[8] = {};
  CK_MECHANISM shrt = {CKM_AES_CBC, short_iv, sizeof(short_iv)};
  EXPECT_EQ(p->C_EncryptInit(s->h(), &shrt, key), CKR_MECHANISM_PARAM_INVALID);
  CK_BYTE long_iv[17] = {};
  CK_MECHANISM lng = {CKM_AES_CBC_PAD, long_iv, sizeof(long_iv)};
  EXPECT_EQ(p->C_DecryptInit(s->h(), &lng, key), CKR_MECHANISM_PARAM_INVALID);
  // Nothing was left active.
  CK_BYTE iv[16] = {};
  CK_MECHANISM ok = {CKM_AES_CBC, iv, sizeof(iv)};
  EXPECT_EQ(p->C_EncryptInit(s->h(), &ok, key), CKR_OK);
}

// CBC with no IV at all is refused and leaves no operation behind. What it
// answers today is recorded (see the DISABLED_ test below for the gap).
TEST_F(SpecStateTest, CbcWithoutIvIsRefusedAndLeavesNothingActive) {
  auto s = UserSession();
  CK_OBJECT_HANDLE key = GenAes(s->h());
  CK_MECHANISM none = {CKM_AES_CBC, nullptr, 0};
  const CK_RV rv = p->C_EncryptInit(s->h(), &none, key);
  RecordProperty("cbc_without_iv_rv", RvStr(rv));
  EXPECT_NE(rv, CKR_OK);
  CK_BYTE iv[16] = {};
  CK_MECHANISM ok = {CKM_AES_CBC, iv, sizeof(iv)};
  EXPECT_EQ(p->C_EncryptInit(s->h(), &ok, key), CKR_OK);
}

// GAP (not spec-exact): CBC with no IV should be CKR_MECHANISM_PARAM_INVALID.
// Measured: CKR_ARGUMENTS_BAD (0x7) for CKM_AES_CBC and CKM_AES_CBC_PAD.
// wire::EncodeMechanism treats a zero-length parameter as "no parameter" and
// lets the member judge; SoftHSM 2.6.1 answers CKR_ARGUMENTS_BAD (softhsm-
// facts.md says CKR_MECHANISM_INVALID; either way not the spec's code).
// A fix: in EncodeMechanism, answer CKR_MECHANISM_PARAM_INVALID when a
// mechanism whose codec requires a parameter (kRaw, kGcm, kCtr, kPss...)
// comes without one.
TEST_F(SpecStateTest, DISABLED_CbcWithoutIvIsMechanismParamInvalid) {
  auto s = UserSession();
  CK_OBJECT_HANDLE key = GenAes(s->h());
  CK_MECHANISM none = {CKM_AES_CBC, nullptr, 0};
  EXPECT_EQ(p->C_EncryptInit(s->h(), &none, key), CKR_MECHANISM_PARAM_INVALID);
  CK_MECHANISM none_pad = {CKM_AES_CBC_PAD, nullptr, 0};
  EXPECT_EQ(p->C_DecryptInit(s->h(), &none_pad, key), CKR_MECHANISM_PARAM_INVALID);
}

// SoftHSM ORs flags into the caller's uninitialised CK_MECHANISM_INFO for
// AES_ECB, AES_CBC_PAD, AES_CTR, AES_GCM, DES3_ECB, DES3_CBC_PAD.
TEST_F(SpecStateTest, MechanismInfoFlagsAreStableAndClean) {
  const CK_FLAGS known = CKF_HW | CKF_ENCRYPT | CKF_DECRYPT | CKF_DIGEST | CKF_SIGN |
                         CKF_SIGN_RECOVER | CKF_VERIFY | CKF_VERIFY_RECOVER | CKF_GENERATE |
                         CKF_GENERATE_KEY_PAIR | CKF_WRAP | CKF_UNWRAP | CKF_DERIVE | CKF_EC_F_P |
                         (1UL << 21) /* CKF_EC_F_2M */ | (1UL << 22) /* CKF_EC_ECPARAMETERS */ |
                         CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS | CKF_EC_COMPRESS | CKF_EXTENSION;
  for (CK_MECHANISM_TYPE type : {CKM_AES_ECB, CKM_AES_CBC_PAD, CKM_AES_CTR, CKM_AES_GCM}) {
    CK_MECHANISM_INFO first;
    std::memset(&first, 0xFF, sizeof(first));
    ASSERT_EQ(p->C_GetMechanismInfo(kSlot, type, &first), CKR_OK) << std::hex << type;
    EXPECT_EQ(first.flags & ~known, 0u) << "unknown flag bits for 0x" << std::hex << type;
    EXPECT_EQ(first.flags & (CKF_SIGN | CKF_VERIFY | CKF_DIGEST | CKF_GENERATE_KEY_PAIR), 0u)
        << "flags of a cipher: 0x" << std::hex << first.flags;
    EXPECT_TRUE(first.flags & CKF_ENCRYPT);
    EXPECT_TRUE(first.flags & CKF_DECRYPT);
    for (int i = 0; i < 5; ++i) {
      CK_MECHANISM_INFO again;
      std::memset(&again, i % 2 ? 0x00 : 0x5A, sizeof(again));
      ASSERT_EQ(p->C_GetMechanismInfo(kSlot, type, &again), CKR_OK);
      EXPECT_EQ(again.flags, first.flags);
      EXPECT_EQ(again.ulMinKeySize, first.ulMinKeySize);
      EXPECT_EQ(again.ulMaxKeySize, first.ulMaxKeySize);
    }
  }
}

// Errors on one operation kind do not disturb another, and sessions keep
// their operations apart.
TEST_F(SpecStateTest, OperationsAreSessionScoped) {
  auto s1 = UserSession();
  Session s2(p, false);
  CK_MECHANISM m = {CKM_SHA256, nullptr, 0};
  ASSERT_EQ(p->C_DigestInit(s1->h(), &m), CKR_OK);
  ASSERT_EQ(p->C_DigestInit(s2.h(), &m), CKR_OK);  // not OPERATION_ACTIVE: another session
  Bytes d(32);
  CK_ULONG len = d.size();
  ASSERT_EQ(p->C_Digest(s2.h(), const_cast<CK_BYTE*>(kBlock.data()), kBlock.size(), d.data(), &len),
            CKR_OK);
  len = d.size();
  ASSERT_EQ(
      p->C_Digest(s1->h(), const_cast<CK_BYTE*>(kBlock.data()), kBlock.size(), d.data(), &len),
      CKR_OK);
  EXPECT_EQ(d, Sha256(kBlock));
}

// A failed Init does not end the operation already active: the agent
// answers CKR_OPERATION_ACTIVE to a second Init, and an Init whose mechanism
// the module refuses locally must not end the active one either (only the
// operation functions end an operation on error, PKCS#11 2.40 §5.2).
TEST_F(SpecStateTest, FailedSecondInitKeepsTheActiveOperation) {
  auto s = UserSession();
  CK_OBJECT_HANDLE key = GenAes(s->h());
  Bytes iv(16, 3);
  CK_MECHANISM m = {CKM_AES_CBC_PAD, iv.data(), iv.size()};
  ASSERT_EQ(p->C_EncryptInit(s->h(), &m, key), CKR_OK);
  EXPECT_EQ(p->C_EncryptInit(s->h(), &m, key), CKR_OPERATION_ACTIVE);
  CK_BYTE short_iv[8] = {};
  CK_MECHANISM bad = {CKM_AES_CBC_PAD, short_iv, sizeof(short_iv)};
  const CK_RV rv = p->C_EncryptInit(s->h(), &bad, key);
  EXPECT_TRUE(rv == CKR_OPERATION_ACTIVE || rv == CKR_MECHANISM_PARAM_INVALID) << RvStr(rv);
  Bytes out(64);
  CK_ULONG len = out.size();
  EXPECT_EQ(
      p->C_Encrypt(s->h(), const_cast<CK_BYTE*>(kBlock.data()), kBlock.size(), out.data(), &len),
      CKR_OK);
  EXPECT_EQ(len, 32u);
}

// SoftHSM answers CKR_OK to C_Logout when not logged in.
TEST_F(SpecStateTest, LogoutWhenNotLoggedInIsUserNotLoggedIn) {
  Session s(p, false);
  EXPECT_EQ(p->C_Logout(s.h()), CKR_USER_NOT_LOGGED_IN);
  ASSERT_EQ(s.Login(), CKR_OK);
  EXPECT_EQ(p->C_Logout(s.h()), CKR_OK);
  EXPECT_EQ(p->C_Logout(s.h()), CKR_USER_NOT_LOGGED_IN);
}

// SoftHSM reports ulSessionCount as CK_UNAVAILABLE_INFORMATION.
TEST_F(SpecStateTest, TokenInfoCountsSessions) {
  CK_TOKEN_INFO info;
  ASSERT_EQ(p->C_GetTokenInfo(kSlot, &info), CKR_OK);
  EXPECT_EQ(info.ulSessionCount, 0u);
  EXPECT_EQ(info.ulRwSessionCount, 0u);
  {
    Session a(p, false), b(p, true), c(p, true);
    ASSERT_EQ(p->C_GetTokenInfo(kSlot, &info), CKR_OK);
    EXPECT_EQ(info.ulSessionCount, 3u);
    EXPECT_EQ(info.ulRwSessionCount, 2u);
    EXPECT_NE(info.ulMaxSessionCount, CK_UNAVAILABLE_INFORMATION);
  }
  ASSERT_EQ(p->C_GetTokenInfo(kSlot, &info), CKR_OK);
  EXPECT_EQ(info.ulSessionCount, 0u);
}

}  // namespace
}  // namespace hsmux::testing
