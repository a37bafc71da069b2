// Helpers for the e2e function tests (functions_*_test.cc): a fixture that
// initialises the module per test (a fresh agent instance each time), RAII
// sessions, a small attribute builder, key generators and OpenSSL 3 checks.
#pragma once

#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>

#include <atomic>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "module_loader.h"
#include "wire/cryptoki.h"

namespace hsmux::testing {

using Bytes = std::vector<CK_BYTE>;

inline Bytes ToBytes(const std::string& s) { return Bytes(s.begin(), s.end()); }

// "rv 0x..." for failure messages.
inline std::string RvStr(CK_RV rv) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "0x%08lx", static_cast<unsigned long>(rv));
  return buf;
}

// A label no earlier test or run has used (token objects persist).
inline std::string UniqueLabel(const std::string& stem) {
  static std::atomic<int> n{0};
  return "e2e-fn-" + stem + "-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
}

// Builds a CK_ATTRIBUTE array; owns every value it points to.
class Attrs {
 public:
  Attrs& Bool(CK_ATTRIBUTE_TYPE t, bool v) {
    return Raw(t, Bytes{static_cast<CK_BYTE>(v ? CK_TRUE : CK_FALSE)});
  }
  Attrs& Ulong(CK_ATTRIBUTE_TYPE t, CK_ULONG v) {
    Bytes b(sizeof(v));
    std::memcpy(b.data(), &v, sizeof(v));
    return Raw(t, std::move(b));
  }
  Attrs& Str(CK_ATTRIBUTE_TYPE t, const std::string& v) { return Raw(t, ToBytes(v)); }
  Attrs& Raw(CK_ATTRIBUTE_TYPE t, Bytes v) {
    store_.push_back(std::move(v));
    attrs_.push_back({t, store_.back().empty() ? nullptr : store_.back().data(),
                      static_cast<CK_ULONG>(store_.back().size())});
    return *this;
  }
  Attrs& Mechs(CK_ATTRIBUTE_TYPE t, const std::vector<CK_MECHANISM_TYPE>& m) {
    Bytes b(m.size() * sizeof(CK_MECHANISM_TYPE));
    std::memcpy(b.data(), m.data(), b.size());
    return Raw(t, std::move(b));
  }
  // A nested template (CKA_WRAP_TEMPLATE...); `inner` must outlive the use.
  Attrs& Nested(CK_ATTRIBUTE_TYPE t, Attrs& inner) {
    attrs_.push_back({t, inner.data(), inner.size() * static_cast<CK_ULONG>(sizeof(CK_ATTRIBUTE))});
    return *this;
  }
  CK_ATTRIBUTE* data() { return attrs_.data(); }
  CK_ULONG size() const { return static_cast<CK_ULONG>(attrs_.size()); }

 private:
  std::deque<Bytes> store_;
  std::vector<CK_ATTRIBUTE> attrs_;
};

// One session, closed when it goes out of scope (unless already closed).
class Session {
 public:
  Session(CK_FUNCTION_LIST* p, bool rw) : p_(p) {
    CK_FLAGS flags = CKF_SERIAL_SESSION | (rw ? CKF_RW_SESSION : 0);
    rv_ = p_->C_OpenSession(kSlot, flags, nullptr, nullptr, &h_);
  }
  ~Session() {
    if (h_ != CK_INVALID_HANDLE) p_->C_CloseSession(h_);
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  CK_RV open_rv() const { return rv_; }
  CK_SESSION_HANDLE h() const { return h_; }
  CK_RV Login() {
    const std::string pin = ClientPin();
    return p_->C_Login(
        h_, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char*>(pin.data())), pin.size());
  }
  CK_RV Close() {
    CK_RV rv = p_->C_CloseSession(h_);
    h_ = CK_INVALID_HANDLE;
    return rv;
  }
  // The handle is gone by other means (C_CloseAllSessions).
  void Forget() { h_ = CK_INVALID_HANDLE; }

 private:
  CK_FUNCTION_LIST* p_;
  CK_SESSION_HANDLE h_ = CK_INVALID_HANDLE;
  CK_RV rv_ = CKR_GENERAL_ERROR;
};

struct KeyPair {
  CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE priv = CK_INVALID_HANDLE;
};

// DER of the prime256v1 OID, as CKA_EC_PARAMS.
inline Bytes P256Params() { return {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}; }

// Each test initialises the module (a new agent instance: not logged in, no
// session objects) and finalises it.
class P11Test : public ::testing::Test {
 protected:
  void SetUp() override {
    p = LoadModule();
    ASSERT_NE(p, nullptr) << "cannot load " << Env("HSMUX_MODULE") << ": " << dlerror();
    ASSERT_EQ(p->C_Initialize(nullptr), CKR_OK);
  }
  void TearDown() override {
    if (p != nullptr) p->C_Finalize(nullptr);  // CKR_CRYPTOKI_NOT_INITIALIZED if a test did
  }

  // A R/W session, logged in.
  std::unique_ptr<Session> UserSession() {
    auto s = std::make_unique<Session>(p, true);
    EXPECT_EQ(s->open_rv(), CKR_OK);
    EXPECT_EQ(s->Login(), CKR_OK);
    return s;
  }

  // Reads one attribute value (length query, then fetch); empty on error.
  Bytes Attr(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t,
             CK_RV* rv_out = nullptr) {
    CK_ATTRIBUTE a = {t, nullptr, 0};
    CK_RV rv = p->C_GetAttributeValue(s, o, &a, 1);
    if (rv_out != nullptr) *rv_out = rv;
    if (rv != CKR_OK) return {};
    Bytes v(a.ulValueLen);
    a.pValue = v.data();
    rv = p->C_GetAttributeValue(s, o, &a, 1);
    if (rv_out != nullptr) *rv_out = rv;
    if (rv != CKR_OK) return {};
    v.resize(a.ulValueLen);
    return v;
  }
  CK_ULONG UlongAttr(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t) {
    CK_ULONG v = 0;
    CK_ATTRIBUTE a = {t, &v, sizeof(v)};
    EXPECT_EQ(p->C_GetAttributeValue(s, o, &a, 1), CKR_OK);
    return v;
  }

  // Every object matching the template (Init, Find in small batches, Final).
  std::vector<CK_OBJECT_HANDLE> Find(CK_SESSION_HANDLE s, Attrs& tmpl) {
    std::vector<CK_OBJECT_HANDLE> out;
    EXPECT_EQ(p->C_FindObjectsInit(s, tmpl.data(), tmpl.size()), CKR_OK);
    CK_OBJECT_HANDLE batch[2];
    CK_ULONG got = 0;
    do {
      EXPECT_EQ(p->C_FindObjects(s, batch, 2, &got), CKR_OK);
      out.insert(out.end(), batch, batch + got);
    } while (got == 2);
    EXPECT_EQ(p->C_FindObjectsFinal(s), CKR_OK);
    return out;
  }
  std::vector<CK_OBJECT_HANDLE> FindByLabel(CK_SESSION_HANDLE s, const std::string& label) {
    Attrs t;
    t.Str(CKA_LABEL, label);
    return Find(s, t);
  }

  CK_OBJECT_HANDLE CreateData(CK_SESSION_HANDLE s, const std::string& label, bool token, bool priv,
                              const std::string& value = "hello", CK_RV* rv = nullptr) {
    Attrs t;
    t.Ulong(CKA_CLASS, CKO_DATA)
        .Bool(CKA_TOKEN, token)
        .Bool(CKA_PRIVATE, priv)
        .Str(CKA_LABEL, label)
        .Str(CKA_APPLICATION, "hsmux-e2e")
        .Str(CKA_VALUE, value);
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_RV r = p->C_CreateObject(s, t.data(), t.size(), &h);
    if (rv != nullptr) {
      *rv = r;
    } else {
      EXPECT_EQ(r, CKR_OK);
    }
    return h;
  }

  // A session AES-256 key made with C_GenerateKey.
  CK_OBJECT_HANDLE GenAes(CK_SESSION_HANDLE s, bool extractable = false, bool sensitive = true,
                          bool wrap = false) {
    CK_MECHANISM m = {CKM_AES_KEY_GEN, nullptr, 0};
    Attrs t;
    t.Ulong(CKA_VALUE_LEN, 32)
        .Bool(CKA_TOKEN, false)
        .Bool(CKA_PRIVATE, true)
        .Bool(CKA_ENCRYPT, true)
        .Bool(CKA_DECRYPT, true)
        .Bool(CKA_WRAP, wrap)
        .Bool(CKA_UNWRAP, wrap)
        .Bool(CKA_EXTRACTABLE, extractable)
        .Bool(CKA_SENSITIVE, sensitive)
        .Str(CKA_LABEL, UniqueLabel("aes"));
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    EXPECT_EQ(p->C_GenerateKey(s, &m, t.data(), t.size(), &h), CKR_OK);
    return h;
  }

  // A session secret key of the given type and known value (C_CreateObject).
  CK_OBJECT_HANDLE CreateSecret(CK_SESSION_HANDLE s, CK_KEY_TYPE type, const Bytes& value) {
    Attrs t;
    t.Ulong(CKA_CLASS, CKO_SECRET_KEY)
        .Ulong(CKA_KEY_TYPE, type)
        .Bool(CKA_TOKEN, false)
        .Bool(CKA_PRIVATE, true)
        .Bool(CKA_ENCRYPT, true)
        .Bool(CKA_DECRYPT, true)
        .Bool(CKA_SENSITIVE, false)
        .Bool(CKA_EXTRACTABLE, true)
        .Raw(CKA_VALUE, value);
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    EXPECT_EQ(p->C_CreateObject(s, t.data(), t.size(), &h), CKR_OK);
    return h;
  }

  KeyPair GenEc(CK_SESSION_HANDLE s, bool derive = false) {
    CK_MECHANISM m = {CKM_EC_KEY_PAIR_GEN, nullptr, 0};
    Attrs pub, priv;
    pub.Raw(CKA_EC_PARAMS, P256Params()).Bool(CKA_TOKEN, false).Bool(CKA_VERIFY, true);
    priv.Bool(CKA_TOKEN, false)
        .Bool(CKA_PRIVATE, true)
        .Bool(CKA_SENSITIVE, true)
        .Bool(CKA_SIGN, true)
        .Bool(CKA_DERIVE, derive);
    KeyPair kp;
    EXPECT_EQ(p->C_GenerateKeyPair(s, &m, pub.data(), pub.size(), priv.data(), priv.size(), &kp.pub,
                                   &kp.priv),
              CKR_OK);
    return kp;
  }

  KeyPair GenRsa(CK_SESSION_HANDLE s) {
    CK_MECHANISM m = {CKM_RSA_PKCS_KEY_PAIR_GEN, nullptr, 0};
    Attrs pub, priv;
    pub.Ulong(CKA_MODULUS_BITS, 2048)
        .Raw(CKA_PUBLIC_EXPONENT, Bytes{0x01, 0x00, 0x01})
        .Bool(CKA_TOKEN, false)
        .Bool(CKA_VERIFY, true);
    priv.Bool(CKA_TOKEN, false)
        .Bool(CKA_PRIVATE, true)
        .Bool(CKA_SENSITIVE, true)
        .Bool(CKA_SIGN, true);
    KeyPair kp;
    EXPECT_EQ(p->C_GenerateKeyPair(s, &m, pub.data(), pub.size(), priv.data(), priv.size(), &kp.pub,
                                   &kp.priv),
              CKR_OK);
    return kp;
  }

  // C_Sign with a length query first.
  Bytes Sign(CK_SESSION_HANDLE s, CK_MECHANISM* m, CK_OBJECT_HANDLE key, const Bytes& data) {
    EXPECT_EQ(p->C_SignInit(s, m, key), CKR_OK);
    CK_ULONG len = 0;
    EXPECT_EQ(p->C_Sign(s, const_cast<CK_BYTE*>(data.data()), data.size(), nullptr, &len), CKR_OK);
    Bytes sig(len);
    EXPECT_EQ(p->C_Sign(s, const_cast<CK_BYTE*>(data.data()), data.size(), sig.data(), &len),
              CKR_OK);
    sig.resize(len);
    return sig;
  }

  // C_Encrypt / C_Decrypt with a length query first.
  Bytes Encrypt(CK_SESSION_HANDLE s, CK_MECHANISM* m, CK_OBJECT_HANDLE key, const Bytes& in) {
    EXPECT_EQ(p->C_EncryptInit(s, m, key), CKR_OK);
    CK_ULONG len = 0;
    EXPECT_EQ(p->C_Encrypt(s, const_cast<CK_BYTE*>(in.data()), in.size(), nullptr, &len), CKR_OK);
    Bytes out(len);
    EXPECT_EQ(p->C_Encrypt(s, const_cast<CK_BYTE*>(in.data()), in.size(), out.data(), &len),
              CKR_OK);
    out.resize(len);
    return out;
  }
  Bytes Decrypt(CK_SESSION_HANDLE s, CK_MECHANISM* m, CK_OBJECT_HANDLE key, const Bytes& in) {
    EXPECT_EQ(p->C_DecryptInit(s, m, key), CKR_OK);
    CK_ULONG len = 0;
    EXPECT_EQ(p->C_Decrypt(s, const_cast<CK_BYTE*>(in.data()), in.size(), nullptr, &len), CKR_OK);
    Bytes out(len);
    EXPECT_EQ(p->C_Decrypt(s, const_cast<CK_BYTE*>(in.data()), in.size(), out.data(), &len),
              CKR_OK);
    out.resize(len);
    return out;
  }

  CK_FUNCTION_LIST* p = nullptr;
};

// ---- OpenSSL 3 ----------------------------------------------------------

struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

inline Bytes Sha256(const Bytes& in) {
  Bytes out(32);
  unsigned int len = 0;
  EVP_Digest(in.data(), in.size(), out.data(), &len, EVP_sha256(), nullptr);
  return out;
}

// CKA_EC_POINT is a DER OCTET STRING around the uncompressed point; accepts
// the raw point too.
inline Bytes RawEcPoint(const Bytes& ec_point) {
  if (ec_point.size() == 67 && ec_point[0] == 0x04 && ec_point[1] == 0x41) {
    return Bytes(ec_point.begin() + 2, ec_point.end());
  }
  return ec_point;
}

inline Pkey P256PublicKey(const Bytes& raw_point) {
  OSSL_PARAM_BLD* bld = OSSL_PARAM_BLD_new();
  OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0);
  OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, raw_point.data(),
                                   raw_point.size());
  OSSL_PARAM* params = OSSL_PARAM_BLD_to_param(bld);
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr);
  EVP_PKEY* key = nullptr;
  if (EVP_PKEY_fromdata_init(ctx) != 1 ||
      EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params) != 1) {
    key = nullptr;
  }
  EVP_PKEY_CTX_free(ctx);
  OSSL_PARAM_free(params);
  OSSL_PARAM_BLD_free(bld);
  return Pkey(key);
}

inline Pkey RsaPublicKey(const Bytes& n, const Bytes& e) {
  BIGNUM* bn = BN_bin2bn(n.data(), static_cast<int>(n.size()), nullptr);
  BIGNUM* be = BN_bin2bn(e.data(), static_cast<int>(e.size()), nullptr);
  OSSL_PARAM_BLD* bld = OSSL_PARAM_BLD_new();
  OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn);
  OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be);
  OSSL_PARAM* params = OSSL_PARAM_BLD_to_param(bld);
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr);
  EVP_PKEY* key = nullptr;
  if (EVP_PKEY_fromdata_init(ctx) != 1 ||
      EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params) != 1) {
    key = nullptr;
  }
  EVP_PKEY_CTX_free(ctx);
  OSSL_PARAM_free(params);
  OSSL_PARAM_BLD_free(bld);
  BN_free(bn);
  BN_free(be);
  return Pkey(key);
}

// Verifies a PKCS#11 ECDSA signature (r || s) over a hash.
inline bool VerifyEcdsaHash(EVP_PKEY* key, const Bytes& hash, const Bytes& sig) {
  if (key == nullptr || sig.size() != 64) return false;
  ECDSA_SIG* es = ECDSA_SIG_new();
  ECDSA_SIG_set0(es, BN_bin2bn(sig.data(), 32, nullptr), BN_bin2bn(sig.data() + 32, 32, nullptr));
  unsigned char* der = nullptr;
  int der_len = i2d_ECDSA_SIG(es, &der);
  ECDSA_SIG_free(es);
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new(key, nullptr);
  bool ok = der_len > 0 && EVP_PKEY_verify_init(ctx) == 1 &&
            EVP_PKEY_verify(ctx, der, der_len, hash.data(), hash.size()) == 1;
  EVP_PKEY_CTX_free(ctx);
  OPENSSL_free(der);
  return ok;
}

// Verifies an RSA signature over `data` with SHA-256; PSS if salt_len >= 0.
inline bool VerifyRsaSha256(EVP_PKEY* key, const Bytes& data, const Bytes& sig, int salt_len = -1) {
  if (key == nullptr) return false;
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  EVP_PKEY_CTX* pctx = nullptr;
  bool ok = EVP_DigestVerifyInit(md, &pctx, EVP_sha256(), nullptr, key) == 1;
  if (ok && salt_len >= 0) {
    ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1 &&
         EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_sha256()) == 1 &&
         EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, salt_len) == 1;
  }
  ok = ok && EVP_DigestVerify(md, sig.data(), sig.size(), data.data(), data.size()) == 1;
  EVP_MD_CTX_free(md);
  return ok;
}

// AES-256 with OpenSSL: "aes-256-cbc" (PKCS#7 padding) or "aes-256-gcm"
// (tag appended, as PKCS#11 returns it).
inline Bytes OsslAes256(const char* cipher, const Bytes& key, const Bytes& iv, const Bytes& in,
                        const Bytes& aad = {}) {
  EVP_CIPHER* c = EVP_CIPHER_fetch(nullptr, cipher, nullptr);
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  const bool gcm = std::strstr(cipher, "gcm") != nullptr;
  Bytes out(in.size() + 32);
  int len = 0, total = 0;
  EVP_EncryptInit_ex2(ctx, c, nullptr, nullptr, nullptr);
  if (gcm) {
    size_t ivlen = iv.size();
    OSSL_PARAM p[] = {OSSL_PARAM_construct_size_t(OSSL_CIPHER_PARAM_AEAD_IVLEN, &ivlen),
                      OSSL_PARAM_construct_end()};
    EVP_CIPHER_CTX_set_params(ctx, p);
  }
  EVP_EncryptInit_ex2(ctx, nullptr, key.data(), iv.data(), nullptr);
  if (!aad.empty()) EVP_EncryptUpdate(ctx, nullptr, &len, aad.data(), static_cast<int>(aad.size()));
  EVP_EncryptUpdate(ctx, out.data(), &len, in.data(), static_cast<int>(in.size()));
  total = len;
  EVP_EncryptFinal_ex(ctx, out.data() + total, &len);
  total += len;
  if (gcm) {
    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, 16, out.data() + total);
    total += 16;
  }
  out.resize(total);
  EVP_CIPHER_CTX_free(ctx);
  EVP_CIPHER_free(c);
  return out;
}

}  // namespace hsmux::testing
