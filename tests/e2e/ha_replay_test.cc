// Multi-part failover (DESIGN §5, issue 4 item 3): an operation whose member
// is powered off mid-way is replayed on another member from the agent's
// buffer (the Init and every Update) and ends with the result OpenSSL
// computes locally; past replay_buffer_bytes (64 here, see ha.cmake) it
// cannot move: the next call answers CKR_DEVICE_ERROR and the one after works.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <chrono>
#include <map>
#include <thread>

#include "group_util.h"

namespace hsmux::grouptest {
namespace {

class HaReplay : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    p_ = Module();
    ASSERT_NE(p_, nullptr);
    ASSERT_EQ(p_->C_Initialize(nullptr), CKR_OK);
  }
  static void TearDownTestSuite() {
    if (p_ != nullptr) p_->C_Finalize(nullptr);
  }
  void SetUp() override {
    CK_RV rv;
    s_ = OpenSession(p_, ClientPin(), &rv);
    ASSERT_EQ(rv, CKR_OK);
  }
  void TearDown() override {
    p_->C_CloseSession(s_);
    for (const char* m : kMembers) TestwrapCtl(m, {"--clear"});
    std::string raw;
    EXPECT_TRUE(WaitAllHealthy(30000, &raw)) << raw;
  }

  // Counts of `fn` on every member now (from the testwrap stats).
  static std::map<size_t, uint64_t> Counts(const std::string& fn) {
    // Let the wrapper write out earlier calls first (it does within ~20 ms).
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::map<size_t, uint64_t> c;
    for (size_t i = 0; i < 3; ++i) c[i] = ReadStats(kMembers[i]).Calls(fn);
    return c;
  }
  // The member whose count of `fn` grew since `before` (polls the stats,
  // which the wrapper rewrites within ~20 ms); -1 if none or several did.
  static int Grew(const std::string& fn, const std::map<size_t, uint64_t>& before) {
    for (int waited = 0; waited < 3000; waited += 50) {
      int grew = -1, n = 0;
      std::map<size_t, uint64_t> now;
      for (size_t i = 0; i < 3; ++i) now[i] = ReadStats(kMembers[i]).Calls(fn);
      for (size_t i = 0; i < 3; ++i) {
        if (now[i] > before.at(i)) {
          grew = static_cast<int>(i);
          ++n;
        }
      }
      if (n == 1) return grew;
      if (n > 1) return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return -1;
  }
  static uint64_t Failovers(size_t member) {
    return GroupStatus()[std::string(1, static_cast<char>('a' + member))].failovers;
  }
  // A token secret key from a known value, made through hsmux (replicated).
  CK_OBJECT_HANDLE SecretKey(CK_KEY_TYPE kt, const Bytes& value, bool sign) {
    const std::string label = Unique("replay-key");
    Attrs t;
    t.Ulong(CKA_CLASS, CKO_SECRET_KEY).Ulong(CKA_KEY_TYPE, kt).Bool(CKA_TOKEN, true);
    t.Bool(CKA_PRIVATE, true).Bool(CKA_SENSITIVE, true);
    t.Bool(CKA_ENCRYPT, !sign).Bool(CKA_DECRYPT, !sign).Bool(CKA_SIGN, sign);
    t.Bool(CKA_VERIFY, sign).Str(CKA_LABEL, label).Raw(CKA_ID, ToBytes(label));
    t.Raw(CKA_VALUE, value);
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    EXPECT_EQ(p_->C_CreateObject(s_, t.data(), t.size(), &h), CKR_OK);
    return h;
  }

  static CK_FUNCTION_LIST* p_;
  CK_SESSION_HANDLE s_ = CK_INVALID_HANDLE;
};
CK_FUNCTION_LIST* HaReplay::p_ = nullptr;

TEST_F(HaReplay, DigestMovesToAnotherMember) {
  const Bytes parts[3] = {ToBytes("first part, 16b."), ToBytes("second part, 16b"),
                          ToBytes("third part 16b..")};
  auto before = Counts("C_DigestInit");
  CK_MECHANISM m = {CKM_SHA256, nullptr, 0};
  ASSERT_EQ(p_->C_DigestInit(s_, &m), CKR_OK);
  ASSERT_EQ(p_->C_DigestUpdate(s_, const_cast<CK_BYTE*>(parts[0].data()), parts[0].size()), CKR_OK);
  const int holder = Grew("C_DigestInit", before);
  ASSERT_GE(holder, 0) << "cannot tell which member got the C_DigestInit";
  ASSERT_EQ(p_->C_DigestUpdate(s_, const_cast<CK_BYTE*>(parts[1].data()), parts[1].size()), CKR_OK);
  const uint64_t failovers = Failovers(holder);
  auto before_move = Counts("C_DigestInit");
  ASSERT_TRUE(TestwrapCtl(kMembers[holder], {"power=off"}));
  ASSERT_EQ(p_->C_DigestUpdate(s_, const_cast<CK_BYTE*>(parts[2].data()), parts[2].size()), CKR_OK);
  Bytes md(32);
  CK_ULONG len = md.size();
  ASSERT_EQ(p_->C_DigestFinal(s_, md.data(), &len), CKR_OK);
  md.resize(len);
  Bytes all;
  for (const Bytes& b : parts) all.insert(all.end(), b.begin(), b.end());
  EXPECT_EQ(Hex(md), Hex(Sha256(all)));
  EXPECT_GT(Failovers(holder), failovers);
  const int moved_to = Grew("C_DigestInit", before_move);
  EXPECT_GE(moved_to, 0);
  EXPECT_NE(moved_to, holder);
  std::printf("REPLAY digest held by %s, replayed on %s\n", kMembers[holder],
              moved_to >= 0 ? kMembers[moved_to] : "?");
}

TEST_F(HaReplay, HmacSignMovesToAnotherMember) {
  const Bytes value = RandomBytes(32);
  const CK_OBJECT_HANDLE key = SecretKey(CKK_GENERIC_SECRET, value, /*sign=*/true);
  ASSERT_NE(key, CK_INVALID_HANDLE);
  const Bytes parts[3] = {ToBytes("hmac part one..."), ToBytes("hmac part two..."),
                          ToBytes("hmac part three.")};
  auto before = Counts("C_SignInit");
  CK_MECHANISM m = {CKM_SHA256_HMAC, nullptr, 0};
  ASSERT_EQ(p_->C_SignInit(s_, &m, key), CKR_OK);
  ASSERT_EQ(p_->C_SignUpdate(s_, const_cast<CK_BYTE*>(parts[0].data()), parts[0].size()), CKR_OK);
  const int holder = Grew("C_SignInit", before);
  ASSERT_GE(holder, 0);
  ASSERT_EQ(p_->C_SignUpdate(s_, const_cast<CK_BYTE*>(parts[1].data()), parts[1].size()), CKR_OK);
  const uint64_t failovers = Failovers(holder);
  ASSERT_TRUE(TestwrapCtl(kMembers[holder], {"power=off"}));
  ASSERT_EQ(p_->C_SignUpdate(s_, const_cast<CK_BYTE*>(parts[2].data()), parts[2].size()), CKR_OK);
  Bytes mac(32);
  CK_ULONG len = mac.size();
  ASSERT_EQ(p_->C_SignFinal(s_, mac.data(), &len), CKR_OK);
  mac.resize(len);
  Bytes all;
  for (const Bytes& b : parts) all.insert(all.end(), b.begin(), b.end());
  Bytes expected(32);
  unsigned int elen = 0;
  HMAC(EVP_sha256(), value.data(), static_cast<int>(value.size()), all.data(), all.size(),
       expected.data(), &elen);
  expected.resize(elen);
  EXPECT_EQ(Hex(mac), Hex(expected));
  EXPECT_GT(Failovers(holder), failovers);
}

// The member dies before SignFinal: the final itself moves.
TEST_F(HaReplay, HmacFinalMovesToAnotherMember) {
  const Bytes value = RandomBytes(32);
  const CK_OBJECT_HANDLE key = SecretKey(CKK_GENERIC_SECRET, value, /*sign=*/true);
  ASSERT_NE(key, CK_INVALID_HANDLE);
  const Bytes data = ToBytes("all of it before the fault");
  auto before = Counts("C_SignInit");
  CK_MECHANISM m = {CKM_SHA256_HMAC, nullptr, 0};
  ASSERT_EQ(p_->C_SignInit(s_, &m, key), CKR_OK);
  ASSERT_EQ(p_->C_SignUpdate(s_, const_cast<CK_BYTE*>(data.data()), data.size()), CKR_OK);
  const int holder = Grew("C_SignInit", before);
  ASSERT_GE(holder, 0);
  ASSERT_TRUE(TestwrapCtl(kMembers[holder], {"power=off"}));
  Bytes mac(32);
  CK_ULONG len = mac.size();
  ASSERT_EQ(p_->C_SignFinal(s_, mac.data(), &len), CKR_OK);
  mac.resize(len);
  Bytes expected(32);
  unsigned int elen = 0;
  HMAC(EVP_sha256(), value.data(), static_cast<int>(value.size()), data.data(), data.size(),
       expected.data(), &elen);
  expected.resize(elen);
  EXPECT_EQ(Hex(mac), Hex(expected));
}

// AES-GCM encryption with a caller-supplied IV replays to the same output.
TEST_F(HaReplay, GcmEncryptWithCallerIvMoves) {
  const Bytes value = RandomBytes(32);
  const CK_OBJECT_HANDLE key = SecretKey(CKK_AES, value, /*sign=*/false);
  ASSERT_NE(key, CK_INVALID_HANDLE);
  const Bytes iv = RandomBytes(12);
  const Bytes parts[2] = {ToBytes("gcm part one...."), ToBytes("gcm part two....")};
  CK_GCM_PARAMS gcm = {};
  gcm.pIv = const_cast<CK_BYTE*>(iv.data());
  gcm.ulIvLen = iv.size();
  gcm.ulIvBits = 96;
  gcm.ulTagBits = 128;
  CK_MECHANISM m = {CKM_AES_GCM, &gcm, sizeof(gcm)};
  // A parameter: the member Init runs at C_EncryptInit.
  auto before = Counts("C_EncryptInit");
  ASSERT_EQ(p_->C_EncryptInit(s_, &m, key), CKR_OK);
  const int holder = Grew("C_EncryptInit", before);
  ASSERT_GE(holder, 0);
  Bytes out;
  auto update = [&](const Bytes& in) {
    Bytes buf(in.size() + 32);
    CK_ULONG len = buf.size();
    CK_RV rv =
        p_->C_EncryptUpdate(s_, const_cast<CK_BYTE*>(in.data()), in.size(), buf.data(), &len);
    if (rv == CKR_OK) out.insert(out.end(), buf.begin(), buf.begin() + len);
    return rv;
  };
  ASSERT_EQ(update(parts[0]), CKR_OK);
  ASSERT_TRUE(TestwrapCtl(kMembers[holder], {"power=off"}));
  ASSERT_EQ(update(parts[1]), CKR_OK);
  Bytes tail(64);
  CK_ULONG len = tail.size();
  ASSERT_EQ(p_->C_EncryptFinal(s_, tail.data(), &len), CKR_OK);
  out.insert(out.end(), tail.begin(), tail.begin() + len);

  Bytes plain;
  for (const Bytes& b : parts) plain.insert(plain.end(), b.begin(), b.end());
  Bytes expected(plain.size() + 16);
  EVP_CIPHER_CTX* c = EVP_CIPHER_CTX_new();
  int n = 0, f = 0;
  ASSERT_EQ(EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), nullptr, nullptr, nullptr), 1);
  ASSERT_EQ(EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, 12, nullptr), 1);
  ASSERT_EQ(EVP_EncryptInit_ex(c, nullptr, nullptr, value.data(), iv.data()), 1);
  ASSERT_EQ(EVP_EncryptUpdate(c, expected.data(), &n, plain.data(), plain.size()), 1);
  ASSERT_EQ(EVP_EncryptFinal_ex(c, expected.data() + n, &f), 1);
  ASSERT_EQ(EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, expected.data() + n + f), 1);
  EVP_CIPHER_CTX_free(c);
  EXPECT_EQ(Hex(out), Hex(expected));
}

// Past replay_buffer_bytes (64) the operation cannot move: the call after
// the fault answers CKR_DEVICE_ERROR and ends it; the next call works.
TEST_F(HaReplay, PastTheReplayBufferFailsOnceThenWorks) {
  const Bytes big = RandomBytes(100);
  auto before = Counts("C_DigestInit");
  CK_MECHANISM m = {CKM_SHA256, nullptr, 0};
  ASSERT_EQ(p_->C_DigestInit(s_, &m), CKR_OK);
  ASSERT_EQ(p_->C_DigestUpdate(s_, const_cast<CK_BYTE*>(big.data()), big.size()), CKR_OK);
  const int holder = Grew("C_DigestInit", before);
  ASSERT_GE(holder, 0);
  ASSERT_TRUE(TestwrapCtl(kMembers[holder], {"power=off"}));
  const Bytes more = ToBytes("more");
  EXPECT_EQ(p_->C_DigestUpdate(s_, const_cast<CK_BYTE*>(more.data()), more.size()),
            static_cast<CK_RV>(CKR_DEVICE_ERROR));
  // The failed call ended the operation (as any error but BUFFER_TOO_SMALL
  // does).
  EXPECT_EQ(p_->C_DigestUpdate(s_, const_cast<CK_BYTE*>(more.data()), more.size()),
            static_cast<CK_RV>(CKR_OPERATION_NOT_INITIALIZED));
  // The next operation works, on the members left.
  ASSERT_EQ(p_->C_DigestInit(s_, &m), CKR_OK);
  Bytes md(32);
  CK_ULONG len = md.size();
  ASSERT_EQ(p_->C_Digest(s_, const_cast<CK_BYTE*>(big.data()), big.size(), md.data(), &len),
            CKR_OK);
  md.resize(len);
  EXPECT_EQ(Hex(md), Hex(Sha256(big)));
  // Within the buffer the same fault is survived (the control case).
  before = Counts("C_DigestInit");
  const Bytes small = RandomBytes(60);
  ASSERT_EQ(p_->C_DigestInit(s_, &m), CKR_OK);
  ASSERT_EQ(p_->C_DigestUpdate(s_, const_cast<CK_BYTE*>(small.data()), small.size()), CKR_OK);
  const int holder2 = Grew("C_DigestInit", before);
  ASSERT_GE(holder2, 0);
  ASSERT_NE(holder2, holder);
  ASSERT_TRUE(TestwrapCtl(kMembers[holder2], {"power=off"}));
  ASSERT_EQ(p_->C_DigestUpdate(s_, const_cast<CK_BYTE*>(more.data()), more.size()), CKR_OK);
  len = md.size();
  md.resize(32);
  ASSERT_EQ(p_->C_DigestFinal(s_, md.data(), &len), CKR_OK);
  Bytes all = small;
  all.insert(all.end(), more.begin(), more.end());
  EXPECT_EQ(Hex(md), Hex(Sha256(all)));
}

}  // namespace
}  // namespace hsmux::grouptest
