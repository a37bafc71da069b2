// Multi-part failover (DESIGN §5, issue 4 item 3): an operation whose member
// is powered off mid-way is replayed on another member from the agent's
// buffer (the Init and every Update) and ends with the result OpenSSL
// computes locally; past replay_buffer_bytes (64 here, see ha.cmake) it
// cannot move: the next call answers CKR_DEVICE_ERROR and the one after works.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "group_util.h"
#include "ha_fixture.h"

namespace hsmux::grouptest {
namespace {

class HaReplay : public HaTest {
 protected:
  // A token secret key from a known value, made through hsmux (replicated).
  CK_OBJECT_HANDLE SecretKey(CK_KEY_TYPE kt, const Bytes& value, bool sign) {
    SecretUse use;
    use.encrypt = !sign;
    use.sign = sign;
    CK_RV rv;
    const CK_OBJECT_HANDLE h = CreateTokenSecret(p_, s_, kt, value, use, Unique("replay-key"), &rv);
    EXPECT_EQ(rv, CKR_OK);
    return h;
  }
};

TEST_F(HaReplay, DigestMovesToAnotherMember) {
  const Bytes parts[3] = {ToBytes("first part, 16b."), ToBytes("second part, 16b"),
                          ToBytes("third part 16b..")};
  auto before = CallCounts("C_DigestInit");
  CK_MECHANISM m = {CKM_SHA256, nullptr, 0};
  ASSERT_EQ(p_->C_DigestInit(s_, &m), CKR_OK);
  ASSERT_EQ(p_->C_DigestUpdate(s_, const_cast<CK_BYTE*>(parts[0].data()), parts[0].size()), CKR_OK);
  const int holder = OnlyGrew("C_DigestInit", before);
  ASSERT_GE(holder, 0) << "cannot tell which member got the C_DigestInit";
  ASSERT_EQ(p_->C_DigestUpdate(s_, const_cast<CK_BYTE*>(parts[1].data()), parts[1].size()), CKR_OK);
  const uint64_t failovers = Failovers(holder);
  auto before_move = CallCounts("C_DigestInit");
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
  const int moved_to = OnlyGrew("C_DigestInit", before_move);
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
  auto before = CallCounts("C_SignInit");
  CK_MECHANISM m = {CKM_SHA256_HMAC, nullptr, 0};
  ASSERT_EQ(p_->C_SignInit(s_, &m, key), CKR_OK);
  ASSERT_EQ(p_->C_SignUpdate(s_, const_cast<CK_BYTE*>(parts[0].data()), parts[0].size()), CKR_OK);
  const int holder = OnlyGrew("C_SignInit", before);
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
  auto before = CallCounts("C_SignInit");
  CK_MECHANISM m = {CKM_SHA256_HMAC, nullptr, 0};
  ASSERT_EQ(p_->C_SignInit(s_, &m, key), CKR_OK);
  ASSERT_EQ(p_->C_SignUpdate(s_, const_cast<CK_BYTE*>(data.data()), data.size()), CKR_OK);
  const int holder = OnlyGrew("C_SignInit", before);
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
  auto before = CallCounts("C_EncryptInit");
  ASSERT_EQ(p_->C_EncryptInit(s_, &m, key), CKR_OK);
  const int holder = OnlyGrew("C_EncryptInit", before);
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
  auto before = CallCounts("C_DigestInit");
  CK_MECHANISM m = {CKM_SHA256, nullptr, 0};
  ASSERT_EQ(p_->C_DigestInit(s_, &m), CKR_OK);
  ASSERT_EQ(p_->C_DigestUpdate(s_, const_cast<CK_BYTE*>(big.data()), big.size()), CKR_OK);
  const int holder = OnlyGrew("C_DigestInit", before);
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
  before = CallCounts("C_DigestInit");
  const Bytes small = RandomBytes(60);
  ASSERT_EQ(p_->C_DigestInit(s_, &m), CKR_OK);
  ASSERT_EQ(p_->C_DigestUpdate(s_, const_cast<CK_BYTE*>(small.data()), small.size()), CKR_OK);
  const int holder2 = OnlyGrew("C_DigestInit", before);
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

// AES-256-CBC with PKCS#7 padding, by OpenSSL.
Bytes CbcPadEncrypt(const Bytes& key, const Bytes& iv, const Bytes& plain) {
  Bytes out(plain.size() + 16);
  EVP_CIPHER_CTX* c = EVP_CIPHER_CTX_new();
  int n = 0, f = 0;
  EVP_EncryptInit_ex(c, EVP_aes_256_cbc(), nullptr, key.data(), iv.data());
  EVP_EncryptUpdate(c, out.data(), &n, plain.data(), static_cast<int>(plain.size()));
  EVP_EncryptFinal_ex(c, out.data() + n, &f);
  EVP_CIPHER_CTX_free(c);
  out.resize(n + f);
  return out;
}

// Multi-part decryption through hsmux: C_DecryptUpdate and C_DecryptFinal
// append what they return to `out`.
class Decryption {
 public:
  Decryption(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s) : p_(p), s_(s) {}
  CK_RV Update(const Bytes& in) {
    Bytes buf(in.size() + 32);
    CK_ULONG len = buf.size();
    CK_RV rv =
        p_->C_DecryptUpdate(s_, const_cast<CK_BYTE*>(in.data()), in.size(), buf.data(), &len);
    if (rv == CKR_OK) out.insert(out.end(), buf.begin(), buf.begin() + len);
    return rv;
  }
  CK_RV Final() {
    Bytes buf(64);
    CK_ULONG len = buf.size();
    CK_RV rv = p_->C_DecryptFinal(s_, buf.data(), &len);
    if (rv == CKR_OK) out.insert(out.end(), buf.begin(), buf.begin() + len);
    return rv;
  }
  Bytes out;

 private:
  CK_FUNCTION_LIST* p_;
  CK_SESSION_HANDLE s_;
};

Bytes Slice(const Bytes& b, size_t from, size_t to) {
  return Bytes(b.begin() + from, b.begin() + to);
}

// AES-CBC-PAD decryption whose member dies after two updates: the Init and
// both updates are replayed on another member (their output, which the
// caller had, discarded), and the rest of the plaintext is right.
TEST_F(HaReplay, DecryptUpdateMovesToAnotherMember) {
  const Bytes value = RandomBytes(32);
  const CK_OBJECT_HANDLE key = SecretKey(CKK_AES, value, /*sign=*/false);
  ASSERT_NE(key, CK_INVALID_HANDLE);
  const Bytes iv = RandomBytes(16), plain = RandomBytes(40);
  const Bytes ct = CbcPadEncrypt(value, iv, plain);
  ASSERT_EQ(ct.size(), 48u);
  CK_MECHANISM m = {CKM_AES_CBC_PAD, const_cast<CK_BYTE*>(iv.data()), iv.size()};
  // A parameter: the member Init runs at C_DecryptInit.
  auto before = CallCounts("C_DecryptInit");
  ASSERT_EQ(p_->C_DecryptInit(s_, &m, key), CKR_OK);
  const int holder = OnlyGrew("C_DecryptInit", before);
  ASSERT_GE(holder, 0);
  Decryption d(p_, s_);
  ASSERT_EQ(d.Update(Slice(ct, 0, 16)), CKR_OK);
  ASSERT_EQ(d.Update(Slice(ct, 16, 32)), CKR_OK);
  const uint64_t failovers = Failovers(holder);
  auto before_move = CallCounts("C_DecryptInit");
  ASSERT_TRUE(TestwrapCtl(kMembers[holder], {"power=off"}));
  ASSERT_EQ(d.Update(Slice(ct, 32, 48)), CKR_OK);
  ASSERT_EQ(d.Final(), CKR_OK);
  EXPECT_EQ(Hex(d.out), Hex(plain));
  EXPECT_GT(Failovers(holder), failovers);
  const int moved_to = OnlyGrew("C_DecryptInit", before_move);
  EXPECT_GE(moved_to, 0);
  EXPECT_NE(moved_to, holder);
}

// The member dies with all the ciphertext given: C_DecryptFinal moves and
// returns the last block, unpadded.
TEST_F(HaReplay, DecryptFinalMovesToAnotherMember) {
  const Bytes value = RandomBytes(32);
  const CK_OBJECT_HANDLE key = SecretKey(CKK_AES, value, /*sign=*/false);
  ASSERT_NE(key, CK_INVALID_HANDLE);
  const Bytes iv = RandomBytes(16), plain = RandomBytes(40);
  const Bytes ct = CbcPadEncrypt(value, iv, plain);
  CK_MECHANISM m = {CKM_AES_CBC_PAD, const_cast<CK_BYTE*>(iv.data()), iv.size()};
  auto before = CallCounts("C_DecryptInit");
  ASSERT_EQ(p_->C_DecryptInit(s_, &m, key), CKR_OK);
  const int holder = OnlyGrew("C_DecryptInit", before);
  ASSERT_GE(holder, 0);
  Decryption d(p_, s_);
  ASSERT_EQ(d.Update(ct), CKR_OK);
  const uint64_t failovers = Failovers(holder);
  // (The powered-off member counts the C_DecryptFinal it refuses: where the
  // operation went shows in the Inits.)
  auto before_move = CallCounts("C_DecryptInit");
  ASSERT_TRUE(TestwrapCtl(kMembers[holder], {"power=off"}));
  ASSERT_EQ(d.Final(), CKR_OK);
  EXPECT_EQ(Hex(d.out), Hex(plain));
  EXPECT_GT(Failovers(holder), failovers);
  const int moved_to = OnlyGrew("C_DecryptInit", before_move);
  EXPECT_GE(moved_to, 0);
  EXPECT_NE(moved_to, holder);
}

// Once C_DigestKey has run, the digest cannot be replayed (the agent keeps
// no key value): the call after the fault answers CKR_DEVICE_ERROR and ends
// the operation, and the next operation works. A fault before C_DigestKey
// is survived: the buffered input is replayed and the key digested on the
// new member.
TEST_F(HaReplay, DigestKeyIsNotReplayed) {
  const Bytes kv = RandomBytes(32);
  SecretUse use;
  use.extractable = true;  // SoftHSM digests extractable, non-sensitive keys only
  CK_RV rv;
  const CK_OBJECT_HANDLE key =
      CreateTokenSecret(p_, s_, CKK_GENERIC_SECRET, kv, use, Unique("digest-key"), &rv);
  ASSERT_EQ(rv, CKR_OK);
  const Bytes prefix = ToBytes("prefix: "), more = ToBytes("more");
  Bytes with_key = prefix;
  with_key.insert(with_key.end(), kv.begin(), kv.end());
  CK_MECHANISM m = {CKM_SHA256, nullptr, 0};
  auto update = [&](const Bytes& b) {
    return p_->C_DigestUpdate(s_, const_cast<CK_BYTE*>(b.data()), b.size());
  };
  auto final = [&](Bytes* md) {
    md->assign(32, 0);
    CK_ULONG len = md->size();
    CK_RV r = p_->C_DigestFinal(s_, md->data(), &len);
    md->resize(len);
    return r;
  };

  // Fault after C_DigestKey: not replayable.
  auto before = CallCounts("C_DigestInit");
  ASSERT_EQ(p_->C_DigestInit(s_, &m), CKR_OK);
  ASSERT_EQ(update(prefix), CKR_OK);
  const int holder = OnlyGrew("C_DigestInit", before);
  ASSERT_GE(holder, 0);
  ASSERT_EQ(p_->C_DigestKey(s_, key), CKR_OK);
  ASSERT_TRUE(TestwrapCtl(kMembers[holder], {"power=off"}));
  EXPECT_EQ(update(more), static_cast<CK_RV>(CKR_DEVICE_ERROR));
  EXPECT_EQ(update(more), static_cast<CK_RV>(CKR_OPERATION_NOT_INITIALIZED));
  Bytes md;
  EXPECT_EQ(final(&md), static_cast<CK_RV>(CKR_OPERATION_NOT_INITIALIZED));
  // The next operation works, on the members left.
  ASSERT_EQ(p_->C_DigestInit(s_, &m), CKR_OK);
  ASSERT_EQ(update(prefix), CKR_OK);
  ASSERT_EQ(final(&md), CKR_OK);
  EXPECT_EQ(Hex(md), Hex(Sha256(prefix)));

  // Fault before C_DigestKey: the digest moves, and covers the key value.
  before = CallCounts("C_DigestInit");
  ASSERT_EQ(p_->C_DigestInit(s_, &m), CKR_OK);
  ASSERT_EQ(update(prefix), CKR_OK);
  const int holder2 = OnlyGrew("C_DigestInit", before);
  ASSERT_GE(holder2, 0);
  ASSERT_NE(holder2, holder);
  const uint64_t failovers = Failovers(holder2);
  ASSERT_TRUE(TestwrapCtl(kMembers[holder2], {"power=off"}));
  ASSERT_EQ(p_->C_DigestKey(s_, key), CKR_OK);
  ASSERT_EQ(final(&md), CKR_OK);
  EXPECT_EQ(Hex(md), Hex(Sha256(with_key)));
  EXPECT_GT(Failovers(holder2), failovers);
}

// Dual-function updates (C_DigestEncryptUpdate here; the agent treats the
// four alike): after a successful one, neither operation can be replayed, so
// a fault answers CKR_DEVICE_ERROR and ends both. Out of reach with SoftHSM
// 2.6, which keeps one operation per session: its C_EncryptInit with a
// digest active answers CKR_OPERATION_ACTIVE, so no dual function can run.
// The test says so (skipped) after checking the session still works; with
// a member that takes both Inits it runs the fault case.
TEST_F(HaReplay, DualFunctionUpdateIsNotReplayed) {
  const Bytes value = RandomBytes(32);
  const CK_OBJECT_HANDLE key = SecretKey(CKK_AES, value, /*sign=*/false);
  ASSERT_NE(key, CK_INVALID_HANDLE);
  const Bytes iv = RandomBytes(16), part = RandomBytes(32);
  CK_MECHANISM digest = {CKM_SHA256, nullptr, 0};
  CK_MECHANISM cbc = {CKM_AES_CBC_PAD, const_cast<CK_BYTE*>(iv.data()), iv.size()};
  Bytes buf(part.size() + 32);
  CK_ULONG len = buf.size();
  ASSERT_EQ(p_->C_DigestInit(s_, &digest), CKR_OK);
  auto before = CallCounts("C_EncryptInit");
  // A parameter: the member Inits (both) run now.
  const CK_RV init = p_->C_EncryptInit(s_, &cbc, key);
  if (init != CKR_OK) {
    EXPECT_EQ(init, static_cast<CK_RV>(CKR_OPERATION_ACTIVE));
    // The refusal leaves the session usable.
    p_->C_DigestFinal(s_, buf.data(), &len);  // ends the digest, if still active
    len = buf.size();
    ASSERT_EQ(p_->C_EncryptInit(s_, &cbc, key), CKR_OK);
    ASSERT_EQ(p_->C_Encrypt(s_, const_cast<CK_BYTE*>(part.data()), part.size(), buf.data(), &len),
              CKR_OK);
    buf.resize(len);
    EXPECT_EQ(Hex(buf), Hex(CbcPadEncrypt(value, iv, part)));
    GTEST_SKIP() << "the member keeps one operation per session (C_EncryptInit "
                    "with a digest "
                    "active: "
                 << RvStr(init) << "): no dual-function update can run";
  }
  const int holder = OnlyGrew("C_EncryptInit", before);
  ASSERT_GE(holder, 0);
  ASSERT_EQ(p_->C_DigestEncryptUpdate(s_, const_cast<CK_BYTE*>(part.data()), part.size(),
                                      buf.data(), &len),
            CKR_OK);
  ASSERT_TRUE(TestwrapCtl(kMembers[holder], {"power=off"}));
  len = buf.size();
  EXPECT_EQ(
      p_->C_EncryptUpdate(s_, const_cast<CK_BYTE*>(part.data()), part.size(), buf.data(), &len),
      static_cast<CK_RV>(CKR_DEVICE_ERROR));
  // Both operations ended.
  EXPECT_EQ(p_->C_DigestUpdate(s_, const_cast<CK_BYTE*>(part.data()), part.size()),
            static_cast<CK_RV>(CKR_OPERATION_NOT_INITIALIZED));
  len = buf.size();
  EXPECT_EQ(
      p_->C_EncryptUpdate(s_, const_cast<CK_BYTE*>(part.data()), part.size(), buf.data(), &len),
      static_cast<CK_RV>(CKR_OPERATION_NOT_INITIALIZED));
  // The next operation works.
  ASSERT_EQ(p_->C_DigestInit(s_, &digest), CKR_OK);
  Bytes md(32);
  len = md.size();
  ASSERT_EQ(p_->C_Digest(s_, const_cast<CK_BYTE*>(part.data()), part.size(), md.data(), &len),
            CKR_OK);
  EXPECT_EQ(Hex(md), Hex(Sha256(part)));
}

}  // namespace
}  // namespace hsmux::grouptest
