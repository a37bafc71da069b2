// E2E: key generation, signatures (checked with OpenSSL), encryption,
// digests, wrapping, derivation and random numbers.
#include <algorithm>

#include "functions_util.h"

namespace hsmux::testing {
namespace {

using CryptoTest = P11Test;

const Bytes kMessage = ToBytes("The quick brown fox jumps over the lazy dog, via hsmux.");

TEST_F(CryptoTest, EcP256GenerateSignVerifyWithOpenSsl) {
  auto s = UserSession();
  KeyPair kp = GenEc(s->h());
  ASSERT_NE(kp.pub, CK_INVALID_HANDLE);
  ASSERT_NE(kp.priv, CK_INVALID_HANDLE);
  EXPECT_EQ(UlongAttr(s->h(), kp.pub, CKA_KEY_TYPE), CKK_EC);
  EXPECT_EQ(UlongAttr(s->h(), kp.priv, CKA_CLASS), CKO_PRIVATE_KEY);
  EXPECT_EQ(Attr(s->h(), kp.pub, CKA_EC_PARAMS), P256Params());
  const Bytes point = RawEcPoint(Attr(s->h(), kp.pub, CKA_EC_POINT));
  ASSERT_EQ(point.size(), 65u);
  ASSERT_EQ(point[0], 0x04);
  Pkey pkey = P256PublicKey(point);
  ASSERT_NE(pkey, nullptr);

  const Bytes hash = Sha256(kMessage);
  CK_MECHANISM m = {CKM_ECDSA, nullptr, 0};
  const Bytes sig = Sign(s->h(), &m, kp.priv, hash);
  ASSERT_EQ(sig.size(), 64u);
  EXPECT_TRUE(VerifyEcdsaHash(pkey.get(), hash, sig));
  Bytes other = hash;
  other[0] ^= 1;
  EXPECT_FALSE(VerifyEcdsaHash(pkey.get(), other, sig));

  // The token verifies it too; a damaged signature is CKR_SIGNATURE_INVALID.
  ASSERT_EQ(p->C_VerifyInit(s->h(), &m, kp.pub), CKR_OK);
  EXPECT_EQ(p->C_Verify(s->h(), const_cast<CK_BYTE*>(hash.data()), hash.size(),
                        const_cast<CK_BYTE*>(sig.data()), sig.size()),
            CKR_OK);
  Bytes bad = sig;
  bad[10] ^= 0x55;
  ASSERT_EQ(p->C_VerifyInit(s->h(), &m, kp.pub), CKR_OK);
  EXPECT_EQ(
      p->C_Verify(s->h(), const_cast<CK_BYTE*>(hash.data()), hash.size(), bad.data(), bad.size()),
      CKR_SIGNATURE_INVALID);
  // The failed verification ended the operation.
  EXPECT_EQ(p->C_Verify(s->h(), const_cast<CK_BYTE*>(hash.data()), hash.size(),
                        const_cast<CK_BYTE*>(sig.data()), sig.size()),
            CKR_OPERATION_NOT_INITIALIZED);
}

TEST_F(CryptoTest, RsaPkcs1AndPssSignaturesVerifyWithOpenSsl) {
  auto s = UserSession();
  KeyPair kp = GenRsa(s->h());
  ASSERT_NE(kp.priv, CK_INVALID_HANDLE);
  EXPECT_EQ(UlongAttr(s->h(), kp.pub, CKA_MODULUS_BITS), 2048u);
  const Bytes n = Attr(s->h(), kp.pub, CKA_MODULUS), e = Attr(s->h(), kp.pub, CKA_PUBLIC_EXPONENT);
  ASSERT_EQ(n.size(), 256u);
  Pkey pkey = RsaPublicKey(n, e);
  ASSERT_NE(pkey, nullptr);

  // SHA256_RSA_PKCS, single part.
  CK_MECHANISM pkcs = {CKM_SHA256_RSA_PKCS, nullptr, 0};
  const Bytes sig = Sign(s->h(), &pkcs, kp.priv, kMessage);
  ASSERT_EQ(sig.size(), 256u);
  EXPECT_TRUE(VerifyRsaSha256(pkey.get(), kMessage, sig));

  // Multi-part: PKCS#1 v1.5 is deterministic, so the same signature.
  ASSERT_EQ(p->C_SignInit(s->h(), &pkcs, kp.priv), CKR_OK);
  const size_t half = kMessage.size() / 2;
  ASSERT_EQ(p->C_SignUpdate(s->h(), const_cast<CK_BYTE*>(kMessage.data()), half), CKR_OK);
  ASSERT_EQ(
      p->C_SignUpdate(s->h(), const_cast<CK_BYTE*>(kMessage.data()) + half, kMessage.size() - half),
      CKR_OK);
  CK_ULONG len = 0;
  ASSERT_EQ(p->C_SignFinal(s->h(), nullptr, &len), CKR_OK);  // length query keeps it active
  ASSERT_EQ(len, 256u);
  Bytes multi(len);
  CK_ULONG tiny = 8;
  EXPECT_EQ(p->C_SignFinal(s->h(), multi.data(), &tiny), CKR_BUFFER_TOO_SMALL);
  EXPECT_EQ(tiny, 256u);
  ASSERT_EQ(p->C_SignFinal(s->h(), multi.data(), &len), CKR_OK);
  EXPECT_EQ(multi, sig);
  CK_ULONG again = 256;
  EXPECT_EQ(p->C_SignFinal(s->h(), multi.data(), &again), CKR_OPERATION_NOT_INITIALIZED);

  // Verify single and multi-part; a bad signature.
  ASSERT_EQ(p->C_VerifyInit(s->h(), &pkcs, kp.pub), CKR_OK);
  EXPECT_EQ(p->C_Verify(s->h(), const_cast<CK_BYTE*>(kMessage.data()), kMessage.size(),
                        const_cast<CK_BYTE*>(sig.data()), sig.size()),
            CKR_OK);
  ASSERT_EQ(p->C_VerifyInit(s->h(), &pkcs, kp.pub), CKR_OK);
  ASSERT_EQ(p->C_VerifyUpdate(s->h(), const_cast<CK_BYTE*>(kMessage.data()), kMessage.size()),
            CKR_OK);
  EXPECT_EQ(p->C_VerifyFinal(s->h(), const_cast<CK_BYTE*>(sig.data()), sig.size()), CKR_OK);
  Bytes bad = sig;
  bad[100] ^= 0x01;
  ASSERT_EQ(p->C_VerifyInit(s->h(), &pkcs, kp.pub), CKR_OK);
  EXPECT_EQ(p->C_Verify(s->h(), const_cast<CK_BYTE*>(kMessage.data()), kMessage.size(), bad.data(),
                        bad.size()),
            CKR_SIGNATURE_INVALID);

  // SHA256_RSA_PKCS_PSS, salt 32.
  CK_RSA_PKCS_PSS_PARAMS pss = {CKM_SHA256, CKG_MGF1_SHA256, 32};
  CK_MECHANISM pss_mech = {CKM_SHA256_RSA_PKCS_PSS, &pss, sizeof(pss)};
  const Bytes psig = Sign(s->h(), &pss_mech, kp.priv, kMessage);
  ASSERT_EQ(psig.size(), 256u);
  EXPECT_TRUE(VerifyRsaSha256(pkey.get(), kMessage, psig, 32));
  EXPECT_FALSE(VerifyRsaSha256(pkey.get(), kMessage, sig, 32)) << "PKCS#1 v1.5 is not PSS";

  // RSA_PKCS_PSS on a SHA-256 hash, same check.
  CK_MECHANISM raw_pss = {CKM_RSA_PKCS_PSS, &pss, sizeof(pss)};
  const Bytes hsig = Sign(s->h(), &raw_pss, kp.priv, Sha256(kMessage));
  EXPECT_TRUE(VerifyRsaSha256(pkey.get(), kMessage, hsig, 32));
  ASSERT_EQ(p->C_VerifyInit(s->h(), &pss_mech, kp.pub), CKR_OK);
  EXPECT_EQ(p->C_Verify(s->h(), const_cast<CK_BYTE*>(kMessage.data()), kMessage.size(),
                        const_cast<CK_BYTE*>(hsig.data()), hsig.size()),
            CKR_OK);
}

TEST_F(CryptoTest, AesGcmRoundTripWithAadAndMultiPart) {
  auto s = UserSession();
  CK_OBJECT_HANDLE key = GenAes(s->h());
  ASSERT_NE(key, CK_INVALID_HANDLE);
  EXPECT_EQ(UlongAttr(s->h(), key, CKA_VALUE_LEN), 32u);
  EXPECT_EQ(UlongAttr(s->h(), key, CKA_KEY_TYPE), CKK_AES);

  CK_BYTE iv[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  Bytes aad = ToBytes("header-data");
  CK_GCM_PARAMS gcm = {iv, sizeof(iv), 96, aad.data(), aad.size(), 128};
  CK_MECHANISM m = {CKM_AES_GCM, &gcm, sizeof(gcm)};
  const Bytes ct = Encrypt(s->h(), &m, key, kMessage);
  ASSERT_EQ(ct.size(), kMessage.size() + 16);
  EXPECT_EQ(Decrypt(s->h(), &m, key, ct), kMessage);

  // Multi-part encryption gives the same bytes.
  ASSERT_EQ(p->C_EncryptInit(s->h(), &m, key), CKR_OK);
  Bytes multi;
  for (size_t off = 0; off < kMessage.size(); off += 20) {
    const size_t n = std::min<size_t>(20, kMessage.size() - off);
    CK_ULONG len = 0;
    ASSERT_EQ(
        p->C_EncryptUpdate(s->h(), const_cast<CK_BYTE*>(kMessage.data()) + off, n, nullptr, &len),
        CKR_OK);
    Bytes part(len);
    ASSERT_EQ(p->C_EncryptUpdate(s->h(), const_cast<CK_BYTE*>(kMessage.data()) + off, n,
                                 part.data(), &len),
              CKR_OK);
    multi.insert(multi.end(), part.begin(), part.begin() + len);
  }
  CK_ULONG len = 0;
  ASSERT_EQ(p->C_EncryptFinal(s->h(), nullptr, &len), CKR_OK);
  Bytes last(len);
  ASSERT_EQ(p->C_EncryptFinal(s->h(), last.data(), &len), CKR_OK);
  multi.insert(multi.end(), last.begin(), last.begin() + len);
  EXPECT_EQ(multi, ct);

  // A damaged tag or other AAD does not decrypt.
  Bytes bad = ct;
  bad.back() ^= 1;
  ASSERT_EQ(p->C_DecryptInit(s->h(), &m, key), CKR_OK);
  Bytes out(ct.size());
  CK_ULONG olen = out.size();
  EXPECT_NE(p->C_Decrypt(s->h(), bad.data(), bad.size(), out.data(), &olen), CKR_OK);
  Bytes aad2 = ToBytes("other-header");
  CK_GCM_PARAMS gcm2 = {iv, sizeof(iv), 96, aad2.data(), aad2.size(), 128};
  CK_MECHANISM m2 = {CKM_AES_GCM, &gcm2, sizeof(gcm2)};
  ASSERT_EQ(p->C_DecryptInit(s->h(), &m2, key), CKR_OK);
  olen = out.size();
  EXPECT_NE(p->C_Decrypt(s->h(), const_cast<CK_BYTE*>(ct.data()), ct.size(), out.data(), &olen),
            CKR_OK);
}

TEST_F(CryptoTest, AesGcmMatchesOpenSsl) {
  auto s = UserSession();
  Bytes kv(32);
  for (size_t i = 0; i < kv.size(); ++i) kv[i] = static_cast<CK_BYTE>(i * 7 + 3);
  CK_OBJECT_HANDLE key = CreateSecret(s->h(), CKK_AES, kv);
  Bytes iv = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2};
  Bytes aad = ToBytes("aad");
  CK_GCM_PARAMS gcm = {iv.data(), iv.size(), 96, aad.data(), aad.size(), 128};
  CK_MECHANISM m = {CKM_AES_GCM, &gcm, sizeof(gcm)};
  EXPECT_EQ(Encrypt(s->h(), &m, key, kMessage), OsslAes256("aes-256-gcm", kv, iv, kMessage, aad));
}

TEST_F(CryptoTest, AesCbcPadMatchesOpenSslAndLengthRules) {
  auto s = UserSession();
  Bytes kv(32);
  for (size_t i = 0; i < kv.size(); ++i) kv[i] = static_cast<CK_BYTE>(0xA0 ^ i);
  CK_OBJECT_HANDLE key = CreateSecret(s->h(), CKK_AES, kv);
  Bytes iv(16, 0x42);
  CK_MECHANISM m = {CKM_AES_CBC_PAD, iv.data(), iv.size()};
  const Bytes ct = Encrypt(s->h(), &m, key, kMessage);
  EXPECT_EQ(ct.size(), (kMessage.size() / 16 + 1) * 16);
  EXPECT_EQ(ct, OsslAes256("aes-256-cbc", kv, iv, kMessage));
  EXPECT_EQ(Decrypt(s->h(), &m, key, ct), kMessage);

  // CKR_BUFFER_TOO_SMALL keeps the operation active: the retry succeeds.
  ASSERT_EQ(p->C_EncryptInit(s->h(), &m, key), CKR_OK);
  Bytes out(ct.size());
  CK_ULONG len = 4;
  ASSERT_EQ(p->C_Encrypt(s->h(), const_cast<CK_BYTE*>(kMessage.data()), kMessage.size(), out.data(),
                         &len),
            CKR_BUFFER_TOO_SMALL);
  EXPECT_GE(len, ct.size());
  len = out.size();
  ASSERT_EQ(p->C_Encrypt(s->h(), const_cast<CK_BYTE*>(kMessage.data()), kMessage.size(), out.data(),
                         &len),
            CKR_OK);
  out.resize(len);
  EXPECT_EQ(out, ct);
  // The successful call ended it.
  len = out.size();
  EXPECT_EQ(p->C_Encrypt(s->h(), const_cast<CK_BYTE*>(kMessage.data()), kMessage.size(), out.data(),
                         &len),
            CKR_OPERATION_NOT_INITIALIZED);

  // Multi-part decryption.
  ASSERT_EQ(p->C_DecryptInit(s->h(), &m, key), CKR_OK);
  Bytes plain(ct.size() + 16);
  CK_ULONG got = plain.size();
  ASSERT_EQ(
      p->C_DecryptUpdate(s->h(), const_cast<CK_BYTE*>(ct.data()), ct.size(), plain.data(), &got),
      CKR_OK);
  CK_ULONG rest = plain.size() - got;
  ASSERT_EQ(p->C_DecryptFinal(s->h(), plain.data() + got, &rest), CKR_OK);
  plain.resize(got + rest);
  EXPECT_EQ(plain, kMessage);
}

TEST_F(CryptoTest, DigestSha256SingleAndMultiPart) {
  Session s(p, false);  // no login needed
  CK_MECHANISM m = {CKM_SHA256, nullptr, 0};
  ASSERT_EQ(p->C_DigestInit(s.h(), &m), CKR_OK);
  CK_ULONG len = 0;
  ASSERT_EQ(
      p->C_Digest(s.h(), const_cast<CK_BYTE*>(kMessage.data()), kMessage.size(), nullptr, &len),
      CKR_OK);
  ASSERT_EQ(len, 32u);
  Bytes d(len);
  ASSERT_EQ(
      p->C_Digest(s.h(), const_cast<CK_BYTE*>(kMessage.data()), kMessage.size(), d.data(), &len),
      CKR_OK);
  EXPECT_EQ(d, Sha256(kMessage));

  ASSERT_EQ(p->C_DigestInit(s.h(), &m), CKR_OK);
  for (size_t off = 0; off < kMessage.size(); off += 7) {
    const size_t n = std::min<size_t>(7, kMessage.size() - off);
    ASSERT_EQ(p->C_DigestUpdate(s.h(), const_cast<CK_BYTE*>(kMessage.data()) + off, n), CKR_OK);
  }
  Bytes d2(32);
  CK_ULONG l2 = 16;
  EXPECT_EQ(p->C_DigestFinal(s.h(), d2.data(), &l2), CKR_BUFFER_TOO_SMALL);
  EXPECT_EQ(l2, 32u);
  ASSERT_EQ(p->C_DigestFinal(s.h(), d2.data(), &l2), CKR_OK);
  EXPECT_EQ(d2, Sha256(kMessage));
}

TEST_F(CryptoTest, DigestKey) {
  auto s = UserSession();
  const Bytes kv = ToBytes("0123456789abcdef0123456789abcdef");
  CK_OBJECT_HANDLE key = CreateSecret(s->h(), CKK_GENERIC_SECRET, kv);
  ASSERT_NE(key, CK_INVALID_HANDLE);
  CK_MECHANISM m = {CKM_SHA256, nullptr, 0};
  ASSERT_EQ(p->C_DigestInit(s->h(), &m), CKR_OK);
  const Bytes prefix = ToBytes("prefix:");
  ASSERT_EQ(p->C_DigestUpdate(s->h(), const_cast<CK_BYTE*>(prefix.data()), prefix.size()), CKR_OK);
  CK_RV rv = p->C_DigestKey(s->h(), key);
  // A member may refuse to digest keys; anything else is a failure.
  if (rv == CKR_KEY_INDIGESTIBLE || rv == CKR_FUNCTION_NOT_SUPPORTED) {
    GTEST_SKIP() << "the member refuses C_DigestKey on an extractable, non-sensitive generic "
                    "secret: "
                 << RvStr(rv);
  }
  ASSERT_EQ(rv, CKR_OK) << RvStr(rv);
  Bytes d(32);
  CK_ULONG len = d.size();
  ASSERT_EQ(p->C_DigestFinal(s->h(), d.data(), &len), CKR_OK);
  Bytes whole = prefix;
  whole.insert(whole.end(), kv.begin(), kv.end());
  EXPECT_EQ(d, Sha256(whole));
  // A bogus key handle is CKR_KEY_HANDLE_INVALID and ends the digest.
  ASSERT_EQ(p->C_DigestInit(s->h(), &m), CKR_OK);
  EXPECT_EQ(p->C_DigestKey(s->h(), 0x7ffffff3), CKR_KEY_HANDLE_INVALID);
  len = d.size();
  EXPECT_EQ(p->C_DigestFinal(s->h(), d.data(), &len), CKR_OPERATION_NOT_INITIALIZED);
}

TEST_F(CryptoTest, WrapUnwrapAesKeyWrapPad) {
  auto s = UserSession();
  CK_OBJECT_HANDLE kek = GenAes(s->h(), false, true, /*wrap=*/true);
  CK_OBJECT_HANDLE target = GenAes(s->h(), /*extractable=*/true, true);
  CK_MECHANISM wm = {CKM_AES_KEY_WRAP_PAD, nullptr, 0};
  CK_ULONG len = 0;
  ASSERT_EQ(p->C_WrapKey(s->h(), &wm, kek, target, nullptr, &len), CKR_OK);
  ASSERT_EQ(len, 40u);  // 32 bytes padded to 8 + 8-byte integrity block
  Bytes wrapped(len);
  CK_ULONG small = 8;
  EXPECT_EQ(p->C_WrapKey(s->h(), &wm, kek, target, wrapped.data(), &small), CKR_BUFFER_TOO_SMALL);
  EXPECT_EQ(small, 40u);
  ASSERT_EQ(p->C_WrapKey(s->h(), &wm, kek, target, wrapped.data(), &len), CKR_OK);

  Attrs t;
  t.Ulong(CKA_CLASS, CKO_SECRET_KEY)
      .Ulong(CKA_KEY_TYPE, CKK_AES)
      .Bool(CKA_TOKEN, false)
      .Bool(CKA_PRIVATE, true)
      .Bool(CKA_ENCRYPT, true)
      .Bool(CKA_DECRYPT, true)
      .Bool(CKA_SENSITIVE, true)
      .Bool(CKA_EXTRACTABLE, false);
  CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;
  ASSERT_EQ(
      p->C_UnwrapKey(s->h(), &wm, kek, wrapped.data(), wrapped.size(), t.data(), t.size(), &copy),
      CKR_OK);
  ASSERT_NE(copy, target);
  // Not CKA_VALUE_LEN: SoftHSM reports 0 for an unwrapped AES key (measured
  // through hsmux, which relays the member's value). The ciphertexts below
  // are the real check.
  EXPECT_EQ(Attr(s->h(), copy, CKA_LOCAL), Bytes{CK_FALSE});

  // Same key: same ciphertext.
  Bytes iv(16, 0x11);
  CK_MECHANISM cbc = {CKM_AES_CBC_PAD, iv.data(), iv.size()};
  const Bytes a = Encrypt(s->h(), &cbc, target, kMessage);
  const Bytes b = Encrypt(s->h(), &cbc, copy, kMessage);
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(a, b);

  // A damaged blob does not unwrap; a non-extractable key does not wrap.
  Bytes bad = wrapped;
  bad[5] ^= 0x80;
  CK_OBJECT_HANDLE none = CK_INVALID_HANDLE;
  EXPECT_NE(p->C_UnwrapKey(s->h(), &wm, kek, bad.data(), bad.size(), t.data(), t.size(), &none),
            CKR_OK);
  len = wrapped.size();
  EXPECT_EQ(p->C_WrapKey(s->h(), &wm, kek, copy, wrapped.data(), &len), CKR_KEY_UNEXTRACTABLE);
  EXPECT_EQ(p->C_WrapKey(s->h(), &wm, 0x7ffffff4, target, wrapped.data(), &len),
            CKR_WRAPPING_KEY_HANDLE_INVALID);
}

TEST_F(CryptoTest, DeriveEcdh1BothWays) {
  auto s = UserSession();
  KeyPair a = GenEc(s->h(), true), b = GenEc(s->h(), true);
  Bytes pa = RawEcPoint(Attr(s->h(), a.pub, CKA_EC_POINT));
  Bytes pb = RawEcPoint(Attr(s->h(), b.pub, CKA_EC_POINT));
  ASSERT_EQ(pa.size(), 65u);
  ASSERT_EQ(pb.size(), 65u);
  auto derive = [&](CK_OBJECT_HANDLE priv, Bytes& peer) {
    CK_ECDH1_DERIVE_PARAMS params = {CKD_NULL, 0, nullptr, static_cast<CK_ULONG>(peer.size()),
                                     peer.data()};
    CK_MECHANISM m = {CKM_ECDH1_DERIVE, &params, sizeof(params)};
    Attrs t;
    t.Ulong(CKA_CLASS, CKO_SECRET_KEY)
        .Ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET)
        .Ulong(CKA_VALUE_LEN, 32)
        .Bool(CKA_TOKEN, false)
        .Bool(CKA_SENSITIVE, false)
        .Bool(CKA_EXTRACTABLE, true);
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    EXPECT_EQ(p->C_DeriveKey(s->h(), &m, priv, t.data(), t.size(), &h), CKR_OK);
    return Attr(s->h(), h, CKA_VALUE);
  };
  const Bytes ab = derive(a.priv, pb), ba = derive(b.priv, pa);
  ASSERT_EQ(ab.size(), 32u);
  EXPECT_EQ(ab, ba);
  EXPECT_NE(ab, Bytes(32, 0));
  // A bogus base key.
  CK_ECDH1_DERIVE_PARAMS params = {CKD_NULL, 0, nullptr, static_cast<CK_ULONG>(pb.size()),
                                   pb.data()};
  CK_MECHANISM m = {CKM_ECDH1_DERIVE, &params, sizeof(params)};
  Attrs t;
  t.Ulong(CKA_CLASS, CKO_SECRET_KEY)
      .Ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET)
      .Ulong(CKA_VALUE_LEN, 32);
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  EXPECT_EQ(p->C_DeriveKey(s->h(), &m, 0x7ffffff5, t.data(), t.size(), &h), CKR_KEY_HANDLE_INVALID);
}

TEST_F(CryptoTest, SeedAndGenerateRandom) {
  Session s(p, false);
  Bytes seed = ToBytes("some seed material");
  EXPECT_EQ(p->C_SeedRandom(s.h(), seed.data(), seed.size()), CKR_OK);
  Bytes r1(48, 0), r2(48, 0);
  ASSERT_EQ(p->C_GenerateRandom(s.h(), r1.data(), r1.size()), CKR_OK);
  ASSERT_EQ(p->C_GenerateRandom(s.h(), r2.data(), r2.size()), CKR_OK);
  EXPECT_NE(r1, Bytes(48, 0));
  EXPECT_NE(r1, r2);
  EXPECT_EQ(p->C_GenerateRandom(s.h(), nullptr, 16), CKR_ARGUMENTS_BAD);
  EXPECT_EQ(p->C_GenerateRandom(0x7ffffff6, r1.data(), r1.size()), CKR_SESSION_HANDLE_INVALID);
}

TEST_F(CryptoTest, KeyGenerationRefusedWithoutLoginForPrivateKeys) {
  Session s(p, true);
  CK_MECHANISM m = {CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  Attrs pub, priv;
  pub.Raw(CKA_EC_PARAMS, P256Params()).Bool(CKA_TOKEN, false);
  priv.Bool(CKA_TOKEN, false).Bool(CKA_PRIVATE, true).Bool(CKA_SIGN, true);
  KeyPair kp;
  EXPECT_EQ(p->C_GenerateKeyPair(s.h(), &m, pub.data(), pub.size(), priv.data(), priv.size(),
                                 &kp.pub, &kp.priv),
            CKR_USER_NOT_LOGGED_IN);
  CK_MECHANISM bad = {CKM_VENDOR_DEFINED | 0x77, nullptr, 0};
  ASSERT_EQ(s.Login(), CKR_OK);
  EXPECT_EQ(p->C_GenerateKeyPair(s.h(), &bad, pub.data(), pub.size(), priv.data(), priv.size(),
                                 &kp.pub, &kp.priv),
            CKR_MECHANISM_INVALID);
}

}  // namespace
}  // namespace hsmux::testing
