// Known-answer tests of the mechanism codec against a real SoftHSMv2, checked
// with OpenSSL 3. Each test builds the mechanism as an application would,
// sends it through EncodeMechanism + NativeMechanism::Decode (the module and
// agent halves of the wire), runs the decoded mechanism on SoftHSM, and
// verifies the result independently with OpenSSL. This proves that the
// parameters arrive at the token meaning what the caller meant.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "wire/attribute_codec.h"
#include "wire/errors.h"
#include "wire/mechanism_codec.h"

namespace hsmux::wire {
namespace {

using Bytes = std::vector<unsigned char>;

constexpr char kSoftHsmPath[] = "/usr/lib/softhsm/libsofthsm2.so";
constexpr char kPin[] = "1234";

// ------------------------------------------------------------ OpenSSL RAII --

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct PkeyCtxFree {
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
};
struct CipherCtxFree {
  void operator()(EVP_CIPHER_CTX* p) const { EVP_CIPHER_CTX_free(p); }
};
struct BnFree {
  void operator()(BIGNUM* p) const { BN_free(p); }
};
struct BldFree {
  void operator()(OSSL_PARAM_BLD* p) const { OSSL_PARAM_BLD_free(p); }
};
struct ParamFree {
  void operator()(OSSL_PARAM* p) const { OSSL_PARAM_free(p); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;
using PkeyCtx = std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree>;
using MdCtx = std::unique_ptr<EVP_MD_CTX, MdCtxFree>;
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree>;
using Bn = std::unique_ptr<BIGNUM, BnFree>;

Bytes BnBytes(const EVP_PKEY* key, const char* name) {
  BIGNUM* bn = nullptr;
  if (EVP_PKEY_get_bn_param(key, name, &bn) != 1) return {};
  Bn holder(bn);
  Bytes out(BN_num_bytes(bn));
  BN_bn2bin(bn, out.data());
  return out;
}

Bytes Pattern(size_t n, unsigned char seed) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<unsigned char>(seed + 7 * i);
  return b;
}

// ----------------------------------------------------------------- token --

// One private SoftHSM token for the whole test program, in a temp dir.
class SoftHsm : public ::testing::Environment {
 public:
  static CK_FUNCTION_LIST* p11;
  static CK_SESSION_HANDLE session;
  static std::string skip_reason;  // why setup failed, if it did

  void SetUp() override {
    char tmpl[] = "/tmp/hsmux-kat-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) return Fail("mkdtemp failed");
    dir_ = tmpl;
    std::filesystem::create_directory(dir_ + "/tokens");
    std::string conf = dir_ + "/softhsm2.conf";
    {
      std::ofstream f(conf);
      f << "directories.tokendir = " << dir_ << "/tokens\n"
        << "objectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n";
    }
    setenv("SOFTHSM2_CONF", conf.c_str(), 1);
    std::string cmd =
        "softhsm2-util --init-token --free --label kat --so-pin 1234 --pin 1234 >/dev/null 2>&1";
    if (std::system(cmd.c_str()) != 0) return Fail("softhsm2-util --init-token failed");
    lib_ = dlopen(kSoftHsmPath, RTLD_NOW | RTLD_LOCAL);
    if (lib_ == nullptr) return Fail(std::string("dlopen: ") + dlerror());
    auto get_list = reinterpret_cast<CK_C_GetFunctionList>(dlsym(lib_, "C_GetFunctionList"));
    if (get_list == nullptr || get_list(&p11) != CKR_OK) return Fail("C_GetFunctionList");
    if (p11->C_Initialize(nullptr) != CKR_OK) return Fail("C_Initialize");
    CK_SLOT_ID slots[8];
    CK_ULONG n = 8;
    if (p11->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK) return Fail("C_GetSlotList");
    for (CK_ULONG i = 0; i < n; ++i) {
      CK_TOKEN_INFO info;
      if (p11->C_GetTokenInfo(slots[i], &info) != CKR_OK) continue;
      if (std::memcmp(info.label, "kat ", 4) == 0) slot_ = slots[i];
    }
    if (slot_ == CK_UNAVAILABLE_INFORMATION) return Fail("token 'kat' not found");
    if (p11->C_OpenSession(slot_, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr,
                           &session) != CKR_OK) {
      return Fail("C_OpenSession");
    }
    if (p11->C_Login(session, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char*>(kPin)),
                     4) != CKR_OK) {
      return Fail("C_Login");
    }
  }

  void TearDown() override {
    if (p11 != nullptr) p11->C_Finalize(nullptr);
    // SoftHSM keeps state in globals; never dlclose a library that may
    // still run destructors.
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  static bool Supports(CK_MECHANISM_TYPE type) {
    CK_MECHANISM_INFO info;
    return p11->C_GetMechanismInfo(slot_, type, &info) == CKR_OK;
  }

 private:
  void Fail(const std::string& why) { skip_reason = "SoftHSM setup failed: " + why; }

  std::string dir_;
  void* lib_ = nullptr;
  static CK_SLOT_ID slot_;
};
CK_FUNCTION_LIST* SoftHsm::p11 = nullptr;
CK_SESSION_HANDLE SoftHsm::session = 0;
std::string SoftHsm::skip_reason;
CK_SLOT_ID SoftHsm::slot_ = CK_UNAVAILABLE_INFORMATION;
// Registered before main() runs (gtest_main provides main).
::testing::Environment* const kSoftHsmEnv = ::testing::AddGlobalTestEnvironment(new SoftHsm);

// Encodes the caller's mechanism on the module side and decodes it on the
// agent side, as the two halves of hsmux do.
NativeMechanism OverTheWire(const CK_MECHANISM& caller) {
  v1::Mechanism wire;
  absl::Status s = EncodeMechanism(&caller, &wire);
  EXPECT_TRUE(s.ok()) << s;
  // Serialize and parse, as gRPC does.
  v1::Mechanism parsed;
  EXPECT_TRUE(parsed.ParseFromString(wire.SerializeAsString()));
  auto native = NativeMechanism::Decode(parsed);
  EXPECT_TRUE(native.ok()) << native.status();
  if (!native.ok()) return NativeMechanism();
  return std::move(native).value();
}

class Kat : public ::testing::Test {
 protected:
  void SetUp() override {
    // The known answers are the point of this program: a token that cannot
    // be set up is a failure, not a skip.
    if (!SoftHsm::skip_reason.empty()) GTEST_FAIL() << SoftHsm::skip_reason;
    p11_ = SoftHsm::p11;
    s_ = SoftHsm::session;
  }

  CK_OBJECT_HANDLE Create(std::vector<CK_ATTRIBUTE> tmpl) {
    // Templates travel over the wire too.
    v1::AttributeList wire;
    EXPECT_TRUE(EncodeTemplate(tmpl.data(), tmpl.size(), &wire).ok());
    auto native = NativeTemplate::Decode(wire);
    EXPECT_TRUE(native.ok());
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    EXPECT_EQ(p11_->C_CreateObject(s_, native->data(), native->size(), &h), CKR_OK);
    return h;
  }

  CK_OBJECT_HANDLE SecretKey(CK_KEY_TYPE type, const Bytes& value) {
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    return Create({{CKA_CLASS, &cls, sizeof(cls)},
                   {CKA_KEY_TYPE, &type, sizeof(type)},
                   {CKA_TOKEN, &no, 1},
                   {CKA_ENCRYPT, &yes, 1},
                   {CKA_DECRYPT, &yes, 1},
                   {CKA_SIGN, &yes, 1},
                   {CKA_VERIFY, &yes, 1},
                   {CKA_VALUE, const_cast<unsigned char*>(value.data()), value.size()}});
  }

  Bytes GetBytes(CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type) {
    CK_ATTRIBUTE a{type, nullptr, 0};
    EXPECT_EQ(p11_->C_GetAttributeValue(s_, h, &a, 1), CKR_OK);
    Bytes out(a.ulValueLen);
    a.pValue = out.data();
    EXPECT_EQ(p11_->C_GetAttributeValue(s_, h, &a, 1), CKR_OK);
    out.resize(a.ulValueLen);
    return out;
  }

  Bytes Encrypt(const CK_MECHANISM& caller, CK_OBJECT_HANDLE key, const Bytes& in) {
    NativeMechanism m = OverTheWire(caller);
    EXPECT_EQ(p11_->C_EncryptInit(s_, m.get(), key), CKR_OK);
    CK_ULONG len = 0;
    EXPECT_EQ(p11_->C_Encrypt(s_, const_cast<unsigned char*>(in.data()), in.size(), nullptr, &len),
              CKR_OK);
    Bytes out(len);
    EXPECT_EQ(
        p11_->C_Encrypt(s_, const_cast<unsigned char*>(in.data()), in.size(), out.data(), &len),
        CKR_OK);
    out.resize(len);
    return out;
  }

  Bytes Sign(const CK_MECHANISM& caller, CK_OBJECT_HANDLE key, const Bytes& in) {
    NativeMechanism m = OverTheWire(caller);
    EXPECT_EQ(p11_->C_SignInit(s_, m.get(), key), CKR_OK);
    CK_ULONG len = 0;
    EXPECT_EQ(p11_->C_Sign(s_, const_cast<unsigned char*>(in.data()), in.size(), nullptr, &len),
              CKR_OK);
    Bytes out(len);
    EXPECT_EQ(p11_->C_Sign(s_, const_cast<unsigned char*>(in.data()), in.size(), out.data(), &len),
              CKR_OK);
    out.resize(len);
    return out;
  }

  // An RSA key generated by OpenSSL and imported into SoftHSM, so that both
  // halves are known on both sides.
  void ImportRsa(Pkey* ossl, CK_OBJECT_HANDLE* pub, CK_OBJECT_HANDLE* priv) {
    ossl->reset(EVP_RSA_gen(2048));
    ASSERT_NE(*ossl, nullptr);
    Bytes n = BnBytes(ossl->get(), OSSL_PKEY_PARAM_RSA_N);
    Bytes e = BnBytes(ossl->get(), OSSL_PKEY_PARAM_RSA_E);
    Bytes d = BnBytes(ossl->get(), OSSL_PKEY_PARAM_RSA_D);
    Bytes p = BnBytes(ossl->get(), OSSL_PKEY_PARAM_RSA_FACTOR1);
    Bytes q = BnBytes(ossl->get(), OSSL_PKEY_PARAM_RSA_FACTOR2);
    Bytes dp = BnBytes(ossl->get(), OSSL_PKEY_PARAM_RSA_EXPONENT1);
    Bytes dq = BnBytes(ossl->get(), OSSL_PKEY_PARAM_RSA_EXPONENT2);
    Bytes qi = BnBytes(ossl->get(), OSSL_PKEY_PARAM_RSA_COEFFICIENT1);
    CK_OBJECT_CLASS pub_cls = CKO_PUBLIC_KEY, priv_cls = CKO_PRIVATE_KEY;
    CK_KEY_TYPE rsa = CKK_RSA;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    *pub = Create({{CKA_CLASS, &pub_cls, sizeof(pub_cls)},
                   {CKA_KEY_TYPE, &rsa, sizeof(rsa)},
                   {CKA_TOKEN, &no, 1},
                   {CKA_ENCRYPT, &yes, 1},
                   {CKA_VERIFY, &yes, 1},
                   {CKA_MODULUS, n.data(), n.size()},
                   {CKA_PUBLIC_EXPONENT, e.data(), e.size()}});
    *priv = Create({{CKA_CLASS, &priv_cls, sizeof(priv_cls)},
                    {CKA_KEY_TYPE, &rsa, sizeof(rsa)},
                    {CKA_TOKEN, &no, 1},
                    {CKA_PRIVATE, &yes, 1},
                    {CKA_SIGN, &yes, 1},
                    {CKA_DECRYPT, &yes, 1},
                    {CKA_MODULUS, n.data(), n.size()},
                    {CKA_PUBLIC_EXPONENT, e.data(), e.size()},
                    {CKA_PRIVATE_EXPONENT, d.data(), d.size()},
                    {CKA_PRIME_1, p.data(), p.size()},
                    {CKA_PRIME_2, q.data(), q.size()},
                    {CKA_EXPONENT_1, dp.data(), dp.size()},
                    {CKA_EXPONENT_2, dq.data(), dq.size()},
                    {CKA_COEFFICIENT, qi.data(), qi.size()}});
  }

  // An EC key pair generated by SoftHSM through the wire (key generation
  // mechanisms take no parameter; the templates travel encoded).
  void GenerateEc(const Bytes& params, CK_MECHANISM_TYPE gen, CK_OBJECT_HANDLE* pub,
                  CK_OBJECT_HANDLE* priv) {
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE pub_t[] = {
        {CKA_TOKEN, &no, 1},
        {CKA_VERIFY, &yes, 1},
        {CKA_EC_PARAMS, const_cast<unsigned char*>(params.data()), params.size()}};
    CK_ATTRIBUTE priv_t[] = {
        {CKA_TOKEN, &no, 1}, {CKA_PRIVATE, &yes, 1}, {CKA_SIGN, &yes, 1}, {CKA_DERIVE, &yes, 1}};
    v1::AttributeList pw, vw;
    ASSERT_TRUE(EncodeTemplate(pub_t, 3, &pw).ok());
    ASSERT_TRUE(EncodeTemplate(priv_t, 4, &vw).ok());
    auto pn = NativeTemplate::Decode(pw);
    auto vn = NativeTemplate::Decode(vw);
    ASSERT_TRUE(pn.ok() && vn.ok());
    NativeMechanism m = OverTheWire({gen, nullptr, 0});
    ASSERT_EQ(p11_->C_GenerateKeyPair(s_, m.get(), pn->data(), pn->size(), vn->data(), vn->size(),
                                      pub, priv),
              CKR_OK);
  }

  // CKA_EC_POINT is a DER OCTET STRING around the point; short form only
  // (points of P-256 and Ed25519 are shorter than 128 bytes).
  static Bytes UnwrapOctetString(const Bytes& der) {
    if (der.size() >= 2 && der[0] == 0x04 && der[1] == der.size() - 2) {
      return Bytes(der.begin() + 2, der.end());
    }
    return der;
  }

  CK_FUNCTION_LIST* p11_ = nullptr;
  CK_SESSION_HANDLE s_ = 0;
};

const Bytes kP256Oid = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
const Bytes kEd25519Oid = {0x06, 0x03, 0x2b, 0x65, 0x70};

// ------------------------------------------------------------------- RSA --

bool OsslVerifyPss(EVP_PKEY* key, const Bytes& msg, const Bytes& sig, int salt_len) {
  MdCtx ctx(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;
  if (EVP_DigestVerifyInit(ctx.get(), &pctx, EVP_sha256(), nullptr, key) != 1) return false;
  EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING);
  EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, salt_len);
  EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_sha256());
  return EVP_DigestVerify(ctx.get(), sig.data(), sig.size(), msg.data(), msg.size()) == 1;
}

TEST_F(Kat, RsaPssSha256Salt32) {
  Pkey ossl;
  CK_OBJECT_HANDLE pub, priv;
  ImportRsa(&ossl, &pub, &priv);
  Bytes msg = Pattern(100, 3);
  CK_RSA_PKCS_PSS_PARAMS params{CKM_SHA256, CKG_MGF1_SHA256, 32};
  Bytes sig = Sign({CKM_SHA256_RSA_PKCS_PSS, &params, sizeof(params)}, priv, msg);
  ASSERT_EQ(sig.size(), 256u);
  EXPECT_TRUE(OsslVerifyPss(ossl.get(), msg, sig, 32));
  EXPECT_FALSE(OsslVerifyPss(ossl.get(), msg, sig, 20));  // the salt length really arrived
  EXPECT_FALSE(OsslVerifyPss(ossl.get(), msg, sig, 0));
}

TEST_F(Kat, RsaOaepSha1EncryptByTokenDecryptByOpenssl) {
  Pkey ossl;
  CK_OBJECT_HANDLE pub, priv;
  ImportRsa(&ossl, &pub, &priv);
  Bytes msg = Pattern(40, 9);
  // SoftHSMv2 supports OAEP with SHA-1 and no label only.
  CK_RSA_PKCS_OAEP_PARAMS params{CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, nullptr, 0};
  Bytes ct = Encrypt({CKM_RSA_PKCS_OAEP, &params, sizeof(params)}, pub, msg);
  ASSERT_EQ(ct.size(), 256u);
  PkeyCtx ctx(EVP_PKEY_CTX_new(ossl.get(), nullptr));
  ASSERT_EQ(EVP_PKEY_decrypt_init(ctx.get()), 1);
  ASSERT_EQ(EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_OAEP_PADDING), 1);
  ASSERT_EQ(EVP_PKEY_CTX_set_rsa_oaep_md(ctx.get(), EVP_sha1()), 1);
  Bytes pt(256);
  size_t len = pt.size();
  ASSERT_EQ(EVP_PKEY_decrypt(ctx.get(), pt.data(), &len, ct.data(), ct.size()), 1);
  pt.resize(len);
  EXPECT_EQ(pt, msg);
}

// ------------------------------------------------------------------- AES --

Bytes OsslCipher(const EVP_CIPHER* cipher, const Bytes& key, const Bytes& iv, const Bytes& in,
                 bool pad) {
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  EXPECT_EQ(EVP_EncryptInit_ex(ctx.get(), cipher, nullptr, key.data(), iv.data()), 1);
  EVP_CIPHER_CTX_set_padding(ctx.get(), pad ? 1 : 0);
  Bytes out(in.size() + 32);
  int n = 0, m = 0;
  EXPECT_EQ(EVP_EncryptUpdate(ctx.get(), out.data(), &n, in.data(), in.size()), 1);
  EXPECT_EQ(EVP_EncryptFinal_ex(ctx.get(), out.data() + n, &m), 1);
  out.resize(n + m);
  return out;
}

Bytes OsslGcm(const Bytes& key, const Bytes& iv, const Bytes& aad, const Bytes& in,
              size_t tag_bytes) {
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  EXPECT_EQ(EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr), 1);
  EXPECT_EQ(EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, iv.size(), nullptr), 1);
  EXPECT_EQ(EVP_EncryptInit_ex(ctx.get(), nullptr, nullptr, key.data(), iv.data()), 1);
  int n = 0;
  EXPECT_EQ(EVP_EncryptUpdate(ctx.get(), nullptr, &n, aad.data(), aad.size()), 1);
  Bytes out(in.size() + tag_bytes);
  EXPECT_EQ(EVP_EncryptUpdate(ctx.get(), out.data(), &n, in.data(), in.size()), 1);
  int m = 0;
  EXPECT_EQ(EVP_EncryptFinal_ex(ctx.get(), out.data() + n, &m), 1);
  EXPECT_EQ(EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, tag_bytes, out.data() + n + m), 1);
  out.resize(n + m + tag_bytes);
  return out;
}

// The JDK's CK_GCM_PARAMS without ulIvBits (40 bytes on LP64).
struct JdkGcm {
  CK_BYTE_PTR pIv;
  CK_ULONG ulIvLen;
  CK_BYTE_PTR pAAD;
  CK_ULONG ulAADLen;
  CK_ULONG ulTagBits;
};

TEST_F(Kat, AesGcmMatchesOpenssl) {
  Bytes key = Pattern(32, 1), iv = Pattern(12, 50), aad = Pattern(20, 90);
  Bytes msg = Pattern(77, 13);
  CK_OBJECT_HANDLE h = SecretKey(CKK_AES, key);
  for (CK_ULONG tag_bits : {96UL, 128UL}) {
    Bytes expected = OsslGcm(key, iv, aad, msg, tag_bits / 8);
    CK_GCM_PARAMS p48{iv.data(), iv.size(), iv.size() * 8, aad.data(), aad.size(), tag_bits};
    EXPECT_EQ(Encrypt({CKM_AES_GCM, &p48, sizeof(p48)}, h, msg), expected)
        << "48-byte CK_GCM_PARAMS, tag bits " << tag_bits;
    JdkGcm p40{iv.data(), iv.size(), aad.data(), aad.size(), tag_bits};
    EXPECT_EQ(Encrypt({CKM_AES_GCM, &p40, sizeof(p40)}, h, msg), expected)
        << "40-byte JDK CK_GCM_PARAMS, tag bits " << tag_bits;
  }
}

TEST_F(Kat, AesCtrMatchesOpenssl) {
  Bytes key = Pattern(32, 5);
  Bytes msg = Pattern(100, 17);  // not a multiple of the block size
  CK_OBJECT_HANDLE h = SecretKey(CKK_AES, key);
  for (CK_ULONG bits : {32UL, 128UL}) {
    CK_AES_CTR_PARAMS p{};
    p.ulCounterBits = bits;
    Bytes cb = Pattern(16, 200);
    // The low 32 bits must not wrap within the message for the 32-bit
    // counter to equal OpenSSL's 128-bit one.
    cb[12] = 0;
    std::memcpy(p.cb, cb.data(), 16);
    Bytes expected = OsslCipher(EVP_aes_256_ctr(), key, cb, msg, false);
    EXPECT_EQ(Encrypt({CKM_AES_CTR, &p, sizeof(p)}, h, msg), expected) << "counter bits " << bits;
  }
}

TEST_F(Kat, AesCbcPadMatchesOpenssl) {
  Bytes key = Pattern(32, 8), iv = Pattern(16, 33), msg = Pattern(45, 21);
  CK_OBJECT_HANDLE h = SecretKey(CKK_AES, key);
  Bytes expected = OsslCipher(EVP_aes_256_cbc(), key, iv, msg, true);
  EXPECT_EQ(expected.size(), 48u);
  EXPECT_EQ(Encrypt({CKM_AES_CBC_PAD, iv.data(), 16}, h, msg), expected);
}

// -------------------------------------------------------------------- EC --

class KatEcdh : public Kat {
 protected:
  // Derives with SoftHSM's private key and OpenSSL's public point; returns
  // the derived CKA_VALUE, or sets *rv.
  Bytes Derive(CK_MECHANISM_TYPE type, CK_ULONG kdf, const Bytes& shared, CK_RV* rv) {
    Bytes peer = PeerPoint();
    CK_ECDH1_DERIVE_PARAMS p{kdf, shared.size(),
                             shared.empty() ? nullptr : const_cast<unsigned char*>(shared.data()),
                             peer.size(), peer.data()};
    NativeMechanism m = OverTheWire({type, &p, sizeof(p)});
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_ULONG len = 32;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_KEY_TYPE, &kt, sizeof(kt)},
                        {CKA_VALUE_LEN, &len, sizeof(len)},
                        {CKA_TOKEN, &no, 1},
                        {CKA_SENSITIVE, &no, 1},
                        {CKA_EXTRACTABLE, &yes, 1}};
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    *rv = p11_->C_DeriveKey(s_, m.get(), priv_, t, 6, &h);
    if (*rv != CKR_OK) return {};
    return GetBytes(h, CKA_VALUE);
  }

  void SetUp() override {
    Kat::SetUp();
    if (HasFatalFailure()) return;
    GenerateEc(kP256Oid, CKM_EC_KEY_PAIR_GEN, &pub_, &priv_);
    peer_.reset(EVP_EC_gen("P-256"));
    ASSERT_NE(peer_, nullptr);
    // The token's public key as an OpenSSL key.
    Bytes point = UnwrapOctetString(GetBytes(pub_, CKA_EC_POINT));
    OSSL_PARAM_BLD* bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0);
    OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size());
    OSSL_PARAM* params = OSSL_PARAM_BLD_to_param(bld);
    PkeyCtx ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
    EVP_PKEY* tok = nullptr;
    ASSERT_EQ(EVP_PKEY_fromdata_init(ctx.get()), 1);
    ASSERT_EQ(EVP_PKEY_fromdata(ctx.get(), &tok, EVP_PKEY_PUBLIC_KEY, params), 1);
    token_pub_.reset(tok);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
  }

  Bytes PeerPoint() {
    Bytes out(65);
    size_t len = 0;
    EXPECT_EQ(EVP_PKEY_get_octet_string_param(peer_.get(), OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY,
                                              out.data(), out.size(), &len),
              1);
    out.resize(len);
    return out;
  }

  Bytes OsslSharedSecret() {
    PkeyCtx ctx(EVP_PKEY_CTX_new(peer_.get(), nullptr));
    EXPECT_EQ(EVP_PKEY_derive_init(ctx.get()), 1);
    EXPECT_EQ(EVP_PKEY_derive_set_peer(ctx.get(), token_pub_.get()), 1);
    size_t len = 0;
    EXPECT_EQ(EVP_PKEY_derive(ctx.get(), nullptr, &len), 1);
    Bytes z(len);
    EXPECT_EQ(EVP_PKEY_derive(ctx.get(), z.data(), &len), 1);
    z.resize(len);
    return z;
  }

  CK_OBJECT_HANDLE pub_ = 0, priv_ = 0;
  Pkey peer_, token_pub_;
};

TEST_F(KatEcdh, NullKdf) {
  CK_RV rv;
  Bytes derived = Derive(CKM_ECDH1_DERIVE, CKD_NULL, {}, &rv);
  ASSERT_EQ(rv, CKR_OK) << CkRvName(rv);
  EXPECT_EQ(derived, OsslSharedSecret());
}

TEST_F(KatEcdh, Sha256Kdf) {
  Bytes shared = Pattern(10, 77);
  CK_RV rv;
  Bytes derived = Derive(CKM_ECDH1_DERIVE, CKD_SHA256_KDF, shared, &rv);
  if (rv == CKR_MECHANISM_PARAM_INVALID || rv == CKR_FUNCTION_NOT_SUPPORTED) {
    GTEST_SKIP() << "SoftHSMv2 does not support CKD_SHA256_KDF (" << CkRvName(rv) << ")";
  }
  ASSERT_EQ(rv, CKR_OK) << CkRvName(rv);
  // ANSI X9.63 KDF: SHA-256(Z || counter=1 || SharedInfo), first 32 bytes.
  Bytes z = OsslSharedSecret();
  Bytes input = z;
  input.insert(input.end(), {0, 0, 0, 1});
  input.insert(input.end(), shared.begin(), shared.end());
  Bytes expected(32);
  SHA256(input.data(), input.size(), expected.data());
  EXPECT_EQ(derived, expected);
}

TEST_F(KatEcdh, EcdsaVerifiedByOpenssl) {
  Bytes msg = Pattern(50, 4);
  Bytes digest(32);
  SHA256(msg.data(), msg.size(), digest.data());
  // CKM_ECDSA_SHA256 when the token has it; CKM_ECDSA over the digest always.
  std::vector<std::pair<CK_MECHANISM_TYPE, const Bytes*>> runs = {{CKM_ECDSA, &digest}};
  if (SoftHsm::Supports(CKM_ECDSA_SHA256)) runs.push_back({CKM_ECDSA_SHA256, &msg});
  for (const auto& [type, input] : runs) {
    Bytes raw = Sign({type, nullptr, 0}, priv_, *input);
    ASSERT_EQ(raw.size(), 64u);
    // r || s -> DER ECDSA-Sig-Value for OpenSSL.
    ECDSA_SIG* sig = ECDSA_SIG_new();
    ECDSA_SIG_set0(sig, BN_bin2bn(raw.data(), 32, nullptr),
                   BN_bin2bn(raw.data() + 32, 32, nullptr));
    unsigned char* der = nullptr;
    int der_len = i2d_ECDSA_SIG(sig, &der);
    ECDSA_SIG_free(sig);
    PkeyCtx ctx(EVP_PKEY_CTX_new(token_pub_.get(), nullptr));
    ASSERT_EQ(EVP_PKEY_verify_init(ctx.get()), 1);
    EXPECT_EQ(EVP_PKEY_verify(ctx.get(), der, der_len, digest.data(), digest.size()), 1)
        << MechanismName(type);
    digest[0] ^= 1;
    EXPECT_NE(EVP_PKEY_verify(ctx.get(), der, der_len, digest.data(), digest.size()), 1);
    digest[0] ^= 1;
    OPENSSL_free(der);
  }
}

TEST_F(Kat, Ed25519VerifiedByOpenssl) {
  if (!SoftHsm::Supports(CKM_EDDSA) || !SoftHsm::Supports(CKM_EC_EDWARDS_KEY_PAIR_GEN)) {
    GTEST_SKIP() << "this SoftHSMv2 build does not offer CKM_EDDSA";
  }
  CK_OBJECT_HANDLE pub, priv;
  GenerateEc(kEd25519Oid, CKM_EC_EDWARDS_KEY_PAIR_GEN, &pub, &priv);
  Bytes point = UnwrapOctetString(GetBytes(pub, CKA_EC_POINT));
  ASSERT_EQ(point.size(), 32u);
  Pkey key(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, point.data(), point.size()));
  ASSERT_NE(key, nullptr);
  Bytes msg = Pattern(33, 60);
  Bytes sig = Sign({CKM_EDDSA, nullptr, 0}, priv, msg);
  ASSERT_EQ(sig.size(), 64u);
  MdCtx ctx(EVP_MD_CTX_new());
  ASSERT_EQ(EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, key.get()), 1);
  EXPECT_EQ(EVP_DigestVerify(ctx.get(), sig.data(), sig.size(), msg.data(), msg.size()), 1);
  sig[5] ^= 1;
  EXPECT_NE(EVP_DigestVerify(ctx.get(), sig.data(), sig.size(), msg.data(), msg.size()), 1);
}

// ------------------------------------------------------------------ HMAC --

Bytes OsslHmacSha256(const Bytes& key, const Bytes& msg) {
  Bytes out(32);
  unsigned int len = 32;
  HMAC(EVP_sha256(), key.data(), key.size(), msg.data(), msg.size(), out.data(), &len);
  return out;
}

TEST_F(Kat, HmacSha256MatchesOpenssl) {
  Bytes key = Pattern(32, 111), msg = Pattern(200, 2);
  CK_OBJECT_HANDLE h = SecretKey(CKK_GENERIC_SECRET, key);
  EXPECT_EQ(Sign({CKM_SHA256_HMAC, nullptr, 0}, h, msg), OsslHmacSha256(key, msg));
}

TEST_F(Kat, HmacSha256GeneralTruncatedMatchesOpenssl) {
  if (!SoftHsm::Supports(CKM_SHA256_HMAC_GENERAL)) {
    GTEST_SKIP() << "SoftHSMv2 does not offer CKM_SHA256_HMAC_GENERAL";
  }
  Bytes key = Pattern(32, 112), msg = Pattern(64, 3);
  CK_OBJECT_HANDLE h = SecretKey(CKK_GENERIC_SECRET, key);
  CK_ULONG len = 16;  // CK_MAC_GENERAL_PARAMS
  Bytes expected = OsslHmacSha256(key, msg);
  expected.resize(16);
  EXPECT_EQ(Sign({CKM_SHA256_HMAC_GENERAL, &len, sizeof(len)}, h, msg), expected);
}

}  // namespace
}  // namespace hsmux::wire
