#include "group_util.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

namespace hsmux::grouptest {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string FirstLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

std::string Hex(const Bytes& b) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (CK_BYTE c : b) {
    s.push_back(d[c >> 4]);
    s.push_back(d[c & 15]);
  }
  return s;
}

std::string RvStr(CK_RV rv) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "0x%08lx", static_cast<unsigned long>(rv));
  return buf;
}

Bytes ToBytes(const std::string& s) { return Bytes(s.begin(), s.end()); }

Bytes RandomBytes(size_t n) {
  Bytes b(n);
  RAND_bytes(b.data(), static_cast<int>(n));
  return b;
}

std::string Unique(const std::string& stem) {
  static std::atomic<int> n{0};
  return "grp-" + stem + "-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
}

std::string BuildDir() {
  std::string m = Env("HSMUX_MODULE");  // BUILD/module/libhsmux-pkcs11.so
  for (int i = 0; i < 2; ++i) {
    auto pos = m.rfind('/');
    if (pos == std::string::npos) return "";
    m.resize(pos);
  }
  return m;
}

// ---- Attrs ----
Attrs& Attrs::Bool(CK_ATTRIBUTE_TYPE t, bool v) {
  return Raw(t, Bytes{static_cast<CK_BYTE>(v ? CK_TRUE : CK_FALSE)});
}
Attrs& Attrs::Ulong(CK_ATTRIBUTE_TYPE t, CK_ULONG v) {
  Bytes b(sizeof(v));
  std::memcpy(b.data(), &v, sizeof(v));
  return Raw(t, b);
}
Attrs& Attrs::Str(CK_ATTRIBUTE_TYPE t, const std::string& v) { return Raw(t, ToBytes(v)); }
Attrs& Attrs::Raw(CK_ATTRIBUTE_TYPE t, const Bytes& v) {
  store_.push_back(v);
  Bytes& b = store_.back();
  attrs_.push_back({t, b.empty() ? nullptr : b.data(), static_cast<CK_ULONG>(b.size())});
  return *this;
}

// ---- Calls ----
std::vector<CK_OBJECT_HANDLE> Find(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, Attrs& tmpl,
                                   CK_RV* rv_out) {
  std::vector<CK_OBJECT_HANDLE> out;
  CK_RV rv = p->C_FindObjectsInit(s, tmpl.size() ? tmpl.data() : nullptr, tmpl.size());
  if (rv == CKR_OK) {
    CK_OBJECT_HANDLE batch[64];
    CK_ULONG got = 0;
    do {
      rv = p->C_FindObjects(s, batch, 64, &got);
      if (rv != CKR_OK) break;
      out.insert(out.end(), batch, batch + got);
    } while (got > 0);
    CK_RV frv = p->C_FindObjectsFinal(s);
    if (rv == CKR_OK) rv = frv;
  }
  if (rv_out != nullptr) *rv_out = rv;
  return out;
}

std::vector<CK_OBJECT_HANDLE> FindLabel(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s,
                                        const std::string& label) {
  Attrs t;
  t.Str(CKA_LABEL, label);
  return Find(p, s, t);
}

std::vector<CK_OBJECT_HANDLE> FindLabelClass(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s,
                                             const std::string& label, CK_OBJECT_CLASS cls) {
  Attrs t;
  t.Str(CKA_LABEL, label).Ulong(CKA_CLASS, cls);
  return Find(p, s, t);
}

Bytes Attr(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t,
           CK_RV* rv_out) {
  CK_ATTRIBUTE a = {t, nullptr, 0};
  CK_RV rv = p->C_GetAttributeValue(s, o, &a, 1);
  Bytes v;
  if (rv == CKR_OK) {
    v.resize(a.ulValueLen);
    a.pValue = v.data();
    rv = p->C_GetAttributeValue(s, o, &a, 1);
    v.resize(rv == CKR_OK ? a.ulValueLen : 0);
  }
  if (rv_out != nullptr) *rv_out = rv;
  return v;
}

std::optional<bool> AttrBool(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o,
                             CK_ATTRIBUTE_TYPE t) {
  CK_RV rv;
  Bytes v = Attr(p, s, o, t, &rv);
  if (rv != CKR_OK || v.size() != 1) return std::nullopt;
  return v[0] != CK_FALSE;
}

std::string AttrStr(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o,
                    CK_ATTRIBUTE_TYPE t) {
  Bytes v = Attr(p, s, o, t);
  return std::string(v.begin(), v.end());
}

Bytes Sign(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, CK_MECHANISM_TYPE mech, CK_OBJECT_HANDLE key,
           const Bytes& data, CK_RV* rv_out) {
  CK_MECHANISM m = {mech, nullptr, 0};
  CK_RV rv = p->C_SignInit(s, &m, key);
  Bytes sig(1024);
  if (rv == CKR_OK) {
    CK_ULONG len = sig.size();
    rv = p->C_Sign(s, const_cast<CK_BYTE*>(data.data()), data.size(), sig.data(), &len);
    sig.resize(rv == CKR_OK ? len : 0);
  } else {
    sig.clear();
  }
  if (rv_out != nullptr) *rv_out = rv;
  return sig;
}

CK_RV Verify(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, CK_MECHANISM_TYPE mech, CK_OBJECT_HANDLE key,
             const Bytes& data, const Bytes& sig) {
  CK_MECHANISM m = {mech, nullptr, 0};
  CK_RV rv = p->C_VerifyInit(s, &m, key);
  if (rv != CKR_OK) return rv;
  return p->C_Verify(s, const_cast<CK_BYTE*>(data.data()), data.size(),
                     const_cast<CK_BYTE*>(sig.data()), sig.size());
}

Bytes EncryptEcb(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, const Bytes& data,
                 CK_RV* rv_out) {
  CK_MECHANISM m = {CKM_AES_ECB, nullptr, 0};
  CK_RV rv = p->C_EncryptInit(s, &m, key);
  Bytes out(data.size() + 32);
  if (rv == CKR_OK) {
    CK_ULONG len = out.size();
    rv = p->C_Encrypt(s, const_cast<CK_BYTE*>(data.data()), data.size(), out.data(), &len);
    out.resize(rv == CKR_OK ? len : 0);
  } else {
    out.clear();
  }
  if (rv_out != nullptr) *rv_out = rv;
  return out;
}

CK_RV Login(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, const std::string& pin) {
  std::string copy = pin;
  return p->C_Login(s, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(copy.data()), copy.size());
}

Bytes P256Params() { return {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}; }

// ---- Module ----
CK_FUNCTION_LIST* Module() {
  static CK_FUNCTION_LIST* fl = [] {
    const std::string path = Env("HSMUX_MODULE");
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) return static_cast<CK_FUNCTION_LIST*>(nullptr);
    auto get = reinterpret_cast<CK_C_GetFunctionList>(dlsym(h, "C_GetFunctionList"));
    CK_FUNCTION_LIST* list = nullptr;
    if (get == nullptr || get(&list) != CKR_OK) return static_cast<CK_FUNCTION_LIST*>(nullptr);
    return list;
  }();
  return fl;
}

std::string ClientPin() { return FirstLine(Env("HSMUX_TEST_DIR") + "/secrets/client-pin"); }

CK_SESSION_HANDLE OpenSession(CK_FUNCTION_LIST* p, const std::string& pin, CK_RV* rv_out) {
  CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
  CK_RV rv = p->C_OpenSession(kSlot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &h);
  if (rv == CKR_OK && !pin.empty()) {
    rv = Login(p, h, pin);
    if (rv == CKR_USER_ALREADY_LOGGED_IN) rv = CKR_OK;
  }
  if (rv_out != nullptr) *rv_out = rv;
  return rv == CKR_OK ? h : CK_INVALID_HANDLE;
}

CK_RV GenEc(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, const std::string& label, const Bytes& id,
            bool token, Pair* out) {
  CK_MECHANISM m = {CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  Attrs pub, priv;
  pub.Bool(CKA_TOKEN, token).Raw(CKA_EC_PARAMS, P256Params()).Bool(CKA_VERIFY, true);
  pub.Str(CKA_LABEL, label).Raw(CKA_ID, id);
  priv.Bool(CKA_TOKEN, token).Bool(CKA_PRIVATE, true).Bool(CKA_SENSITIVE, true);
  priv.Bool(CKA_SIGN, true).Str(CKA_LABEL, label).Raw(CKA_ID, id);
  return p->C_GenerateKeyPair(s, &m, pub.data(), pub.size(), priv.data(), priv.size(), &out->pub,
                              &out->priv);
}

CK_RV GenRsa(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, const std::string& label, const Bytes& id,
             Pair* out) {
  CK_MECHANISM m = {CKM_RSA_PKCS_KEY_PAIR_GEN, nullptr, 0};
  Attrs pub, priv;
  pub.Bool(CKA_TOKEN, true).Ulong(CKA_MODULUS_BITS, 2048).Raw(CKA_PUBLIC_EXPONENT, {1, 0, 1});
  pub.Bool(CKA_VERIFY, true).Str(CKA_LABEL, label).Raw(CKA_ID, id);
  priv.Bool(CKA_TOKEN, true).Bool(CKA_PRIVATE, true).Bool(CKA_SENSITIVE, true);
  priv.Bool(CKA_SIGN, true).Str(CKA_LABEL, label).Raw(CKA_ID, id);
  return p->C_GenerateKeyPair(s, &m, pub.data(), pub.size(), priv.data(), priv.size(), &out->pub,
                              &out->priv);
}

CK_RV GenAes(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, const std::string& label, const Bytes& id,
             bool token, CK_OBJECT_HANDLE* out) {
  CK_MECHANISM m = {CKM_AES_KEY_GEN, nullptr, 0};
  Attrs t;
  t.Bool(CKA_TOKEN, token).Ulong(CKA_VALUE_LEN, 32).Bool(CKA_ENCRYPT, true);
  t.Bool(CKA_DECRYPT, true).Bool(CKA_SENSITIVE, true).Bool(CKA_PRIVATE, true);
  t.Str(CKA_LABEL, label).Raw(CKA_ID, id);
  return p->C_GenerateKey(s, &m, t.data(), t.size(), out);
}

CK_RV GenHmac(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, const std::string& label, const Bytes& id,
              CK_OBJECT_HANDLE* out) {
  CK_MECHANISM m = {CKM_GENERIC_SECRET_KEY_GEN, nullptr, 0};
  Attrs t;
  t.Ulong(CKA_CLASS, CKO_SECRET_KEY).Ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET);
  t.Bool(CKA_TOKEN, true).Ulong(CKA_VALUE_LEN, 32).Bool(CKA_SIGN, true).Bool(CKA_VERIFY, true);
  t.Bool(CKA_SENSITIVE, true).Bool(CKA_PRIVATE, true).Str(CKA_LABEL, label).Raw(CKA_ID, id);
  return p->C_GenerateKey(s, &m, t.data(), t.size(), out);
}

CK_OBJECT_HANDLE CreateTokenSecret(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, CK_KEY_TYPE kt,
                                   const Bytes& value, const SecretUse& use,
                                   const std::string& label, CK_RV* rv) {
  Attrs t;
  t.Ulong(CKA_CLASS, CKO_SECRET_KEY).Ulong(CKA_KEY_TYPE, kt).Bool(CKA_TOKEN, true);
  t.Bool(CKA_PRIVATE, true).Bool(CKA_SENSITIVE, !use.extractable);
  t.Bool(CKA_EXTRACTABLE, use.extractable);
  t.Bool(CKA_ENCRYPT, use.encrypt).Bool(CKA_DECRYPT, use.encrypt);
  t.Bool(CKA_SIGN, use.sign).Bool(CKA_VERIFY, use.sign);
  t.Bool(CKA_WRAP, use.wrap).Bool(CKA_UNWRAP, use.wrap).Bool(CKA_DERIVE, use.derive);
  t.Str(CKA_LABEL, label).Raw(CKA_ID, ToBytes(label)).Raw(CKA_VALUE, value);
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  const CK_RV r = p->C_CreateObject(s, t.data(), t.size(), &h);
  if (rv != nullptr) *rv = r;
  return r == CKR_OK ? h : CK_INVALID_HANDLE;
}

// ---- OpenSSL ----
Bytes EcPointOctets(const Bytes& a) {
  // DER OCTET STRING 0x04 len [0x81 len] point, or the raw point.
  if (a.size() >= 2 && a[0] == 0x04) {
    size_t off = 2, len = a[1];
    if (a[1] == 0x81 && a.size() >= 3) {
      off = 3;
      len = a[2];
    }
    if (off + len == a.size()) return Bytes(a.begin() + off, a.end());
  }
  return a;
}

namespace {

EVP_PKEY* EcPublicKey(const Bytes& point) {
  OSSL_PARAM_BLD* bld = OSSL_PARAM_BLD_new();
  OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0);
  OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size());
  OSSL_PARAM* params = OSSL_PARAM_BLD_to_param(bld);
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr);
  EVP_PKEY* key = nullptr;
  if (EVP_PKEY_fromdata_init(ctx) <= 0 ||
      EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params) <= 0) {
    key = nullptr;
  }
  EVP_PKEY_CTX_free(ctx);
  OSSL_PARAM_free(params);
  OSSL_PARAM_BLD_free(bld);
  return key;
}

}  // namespace

bool OpenSslVerifyEcdsa(const Bytes& point, const Bytes& digest, const Bytes& sig) {
  if (sig.size() != 64) return false;
  EVP_PKEY* key = EcPublicKey(point);
  if (key == nullptr) return false;
  ECDSA_SIG* es = ECDSA_SIG_new();
  ECDSA_SIG_set0(es, BN_bin2bn(sig.data(), 32, nullptr), BN_bin2bn(sig.data() + 32, 32, nullptr));
  unsigned char* der = nullptr;
  int der_len = i2d_ECDSA_SIG(es, &der);
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new(key, nullptr);
  bool ok = ctx != nullptr && EVP_PKEY_verify_init(ctx) > 0 &&
            EVP_PKEY_verify(ctx, der, der_len, digest.data(), digest.size()) == 1;
  EVP_PKEY_CTX_free(ctx);
  OPENSSL_free(der);
  ECDSA_SIG_free(es);
  EVP_PKEY_free(key);
  return ok;
}

bool OpenSslVerifyRsaSha256(const Bytes& modulus, const Bytes& exponent, const Bytes& data,
                            const Bytes& sig) {
  BIGNUM* n = BN_bin2bn(modulus.data(), static_cast<int>(modulus.size()), nullptr);
  BIGNUM* e = BN_bin2bn(exponent.data(), static_cast<int>(exponent.size()), nullptr);
  OSSL_PARAM_BLD* bld = OSSL_PARAM_BLD_new();
  OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n);
  OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e);
  OSSL_PARAM* params = OSSL_PARAM_BLD_to_param(bld);
  EVP_PKEY_CTX* pctx = EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr);
  EVP_PKEY* key = nullptr;
  if (EVP_PKEY_fromdata_init(pctx) <= 0 ||
      EVP_PKEY_fromdata(pctx, &key, EVP_PKEY_PUBLIC_KEY, params) <= 0) {
    key = nullptr;
  }
  bool ok = false;
  if (key != nullptr) {
    EVP_MD_CTX* md = EVP_MD_CTX_new();
    ok = EVP_DigestVerifyInit(md, nullptr, EVP_sha256(), nullptr, key) > 0 &&
         EVP_DigestVerify(md, sig.data(), sig.size(), data.data(), data.size()) == 1;
    EVP_MD_CTX_free(md);
  }
  EVP_PKEY_free(key);
  EVP_PKEY_CTX_free(pctx);
  OSSL_PARAM_free(params);
  OSSL_PARAM_BLD_free(bld);
  BN_free(n);
  BN_free(e);
  return ok;
}

void MakeCertificate(const std::string& cn, Bytes* der, Bytes* subject) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* x = X509_new();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 4242);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600L * 24 * 30);
  X509_set_pubkey(x, key);
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(x, name);
  X509_sign(x, key, EVP_sha256());
  unsigned char* buf = nullptr;
  int len = i2d_X509(x, &buf);
  der->assign(buf, buf + std::max(len, 0));
  OPENSSL_free(buf);
  buf = nullptr;
  len = i2d_X509_NAME(name, &buf);
  subject->assign(buf, buf + std::max(len, 0));
  OPENSSL_free(buf);
  X509_free(x);
  EVP_PKEY_free(key);
}

Bytes Sha256(const Bytes& data) {
  Bytes md(32);
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md.data(), &len, EVP_sha256(), nullptr);
  return md;
}

// ---- Members ----
Members& Members::Get() {
  static Members* m = new Members();
  return *m;
}

Members::Members() {
  void* h = dlopen("/usr/lib/softhsm/libsofthsm2.so", RTLD_NOW | RTLD_LOCAL);
  if (h == nullptr) {
    error_ = std::string("dlopen softhsm: ") + dlerror();
    return;
  }
  auto get = reinterpret_cast<CK_C_GetFunctionList>(dlsym(h, "C_GetFunctionList"));
  if (get == nullptr || get(&fl_) != CKR_OK) {
    error_ = "C_GetFunctionList";
    return;
  }
  CK_C_INITIALIZE_ARGS args = {};
  args.flags = CKF_OS_LOCKING_OK;
  CK_RV rv = fl_->C_Initialize(&args);
  if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
    error_ = "softhsm C_Initialize " + RvStr(rv);
    return;
  }
  CK_ULONG n = 0;
  fl_->C_GetSlotList(CK_TRUE, nullptr, &n);
  std::vector<CK_SLOT_ID> slots(n);
  fl_->C_GetSlotList(CK_TRUE, slots.data(), &n);
  const std::string pin = FirstLine(Env("HSMUX_TEST_DIR") + "/secrets/member-pin");
  for (CK_ULONG k = 0; k < n; ++k) {
    CK_TOKEN_INFO ti;
    if (fl_->C_GetTokenInfo(slots[k], &ti) != CKR_OK) continue;
    std::string label(reinterpret_cast<char*>(ti.label), sizeof(ti.label));
    while (!label.empty() && label.back() == ' ') label.pop_back();
    for (size_t i = 0; i < 3; ++i) {
      if (label != kMembers[i]) continue;
      CK_SESSION_HANDLE s;
      rv = fl_->C_OpenSession(slots[k], CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &s);
      if (rv == CKR_OK) rv = Login(fl_, s, pin);
      if (rv != CKR_OK) {
        error_ = label + ": open/login " + RvStr(rv);
        return;
      }
      sessions_[i] = s;
    }
  }
  for (size_t i = 0; i < 3; ++i) {
    if (sessions_[i] == CK_INVALID_HANDLE) error_ = std::string(kMembers[i]) + " not found";
  }
}

std::vector<std::string> Members::AllLabels(size_t i) {
  Attrs t;
  t.Bool(CKA_TOKEN, true);
  std::vector<std::string> out;
  for (CK_OBJECT_HANDLE h : Find(fl_, sessions_[i], t)) {
    out.push_back(AttrStr(fl_, sessions_[i], h, CKA_LABEL));
  }
  return out;
}

std::vector<std::string> Members::Pending(size_t i) {
  std::vector<std::string> out;
  for (const std::string& l : AllLabels(i)) {
    if (l.rfind(kPendingPrefix, 0) == 0) out.push_back(l);
  }
  return out;
}

CK_RV Members::CreateSecret(size_t i, CK_KEY_TYPE kt, const std::string& label, const Bytes& id,
                            const Bytes& value, bool encrypt, bool sign, bool derive,
                            CK_OBJECT_HANDLE* out) {
  Attrs t;
  t.Ulong(CKA_CLASS, CKO_SECRET_KEY).Ulong(CKA_KEY_TYPE, kt).Bool(CKA_TOKEN, true);
  t.Bool(CKA_PRIVATE, true).Bool(CKA_SENSITIVE, true).Bool(CKA_EXTRACTABLE, false);
  t.Bool(CKA_ENCRYPT, encrypt).Bool(CKA_DECRYPT, encrypt).Bool(CKA_SIGN, sign);
  t.Bool(CKA_VERIFY, sign).Bool(CKA_DERIVE, derive).Str(CKA_LABEL, label).Raw(CKA_ID, id);
  t.Raw(CKA_VALUE, value);
  return fl_->C_CreateObject(sessions_[i], t.data(), t.size(), out);
}

// ---- Stats ----
namespace {
uint64_t NumberAfter(const std::string& raw, size_t from, const std::string& key) {
  const std::string needle = "\"" + key + "\":";
  size_t pos = raw.find(needle, from);
  if (pos == std::string::npos) return 0;
  pos += needle.size();
  while (pos < raw.size() && raw[pos] == ' ') ++pos;
  return std::strtoull(raw.c_str() + pos, nullptr, 10);
}
}  // namespace

uint64_t Stats::Get(const std::string& key) const { return NumberAfter(raw, 0, key); }

uint64_t Stats::Calls(const std::string& fn) const {
  size_t calls = raw.find("\"calls\"");
  if (calls == std::string::npos) return 0;
  return NumberAfter(raw, calls, fn);
}

Stats ReadStats(const std::string& member_label) {
  Stats s;
  s.raw = ReadFile(Env("HSMUX_TESTWRAP_DIR") + "/" + member_label + ".stats.json");
  s.ok = s.raw.find("\"label\"") != std::string::npos;
  return s;
}

bool TestwrapCtl(const std::string& member_label, const std::vector<std::string>& args) {
  std::string cmd = BuildDir() + "/tests/testwrap/hsmux-testwrap-ctl '" +
                    Env("HSMUX_TESTWRAP_DIR") + "' " + member_label;
  for (const std::string& a : args) cmd += " '" + a + "'";
  std::string out;
  return RunCommand(cmd, &out) == 0;
}

std::map<size_t, uint64_t> CallCounts(const std::string& fn) {
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::map<size_t, uint64_t> c;
  for (size_t i = 0; i < 3; ++i) c[i] = ReadStats(kMembers[i]).Calls(fn);
  return c;
}

std::set<size_t> GrewOn(const std::string& fn, const std::map<size_t, uint64_t>& before,
                        size_t at_least) {
  auto grown = [&] {
    std::set<size_t> g;
    for (size_t i = 0; i < 3; ++i) {
      if (ReadStats(kMembers[i]).Calls(fn) > before.at(i)) g.insert(i);
    }
    return g;
  };
  for (int waited = 0; waited < 3000 && grown().size() < at_least; waited += 50) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  return grown();
}

int OnlyGrew(const std::string& fn, const std::map<size_t, uint64_t>& before) {
  const std::set<size_t> g = GrewOn(fn, before);
  return g.size() == 1 ? static_cast<int>(*g.begin()) : -1;
}

std::map<size_t, uint64_t> InjectedFailures() {
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::map<size_t, uint64_t> c;
  for (size_t i = 0; i < 3; ++i) c[i] = ReadStats(kMembers[i]).Get("injected_failures");
  return c;
}

// ---- hsmuxctl ----
int Hsmuxctl(const std::string& args, std::string* out) {
  return RunCommand(BuildDir() + "/agent/hsmuxctl " + args + " --config '" + Env("HSMUX_TEST_DIR") +
                        "/hsmuxd.yaml'",
                    out);
}

std::map<std::string, MemberStatus> GroupStatus(std::string* raw) {
  std::map<std::string, MemberStatus> out;
  std::string text;
  const int rc = Hsmuxctl("status", &text);
  if (raw != nullptr) *raw = text;
  if (rc != 0) return out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    const std::string prefix = "  member ";
    if (line.rfind(prefix, 0) != 0) continue;
    const size_t colon = line.find(": ", prefix.size());
    if (colon == std::string::npos) continue;
    MemberStatus m;
    m.line = line;
    const size_t comma = line.find(',', colon);
    m.state =
        line.substr(colon + 2, comma == std::string::npos ? std::string::npos : comma - colon - 2);
    auto number = [&](const std::string& key) -> uint64_t {
      const size_t at = line.find(key + " ");
      if (at == std::string::npos) return 0;
      return std::strtoull(line.c_str() + at + key.size() + 1, nullptr, 10);
    };
    m.calls = number(", calls");
    m.failovers = number(", failovers");
    m.replays = number(", replays");
    out[line.substr(prefix.size(), colon - prefix.size())] = m;
  }
  return out;
}

bool WaitAllHealthy(int timeout_ms, std::string* last_raw) {
  for (int waited = 0;; waited += 200) {
    std::string raw;
    auto st = GroupStatus(&raw);
    if (last_raw != nullptr) *last_raw = raw;
    bool all = st.size() == 3;
    for (const auto& [name, m] : st) all = all && m.state == "healthy";
    if (all) return true;
    if (waited >= timeout_ms) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

uint64_t Failovers(size_t member) {
  return GroupStatus()[std::string(1, static_cast<char>('a' + member))].failovers;
}

bool WaitMemberState(const std::string& name, const std::string& state, int timeout_ms) {
  for (int waited = 0;; waited += 100) {
    if (GroupStatus()[name].state == state) return true;
    if (waited >= timeout_ms) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

// ---- Processes ----
int RunCommand(const std::string& cmd, std::string* out) {
  FILE* f = popen((cmd + " 2>&1").c_str(), "r");
  if (f == nullptr) return -1;
  char buf[4096];
  size_t n;
  out->clear();
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) out->append(buf, n);
  int st = pclose(f);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

bool ProcessGone(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  if (!in) return true;
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t close = all.rfind(')');
  if (close == std::string::npos || close + 2 >= all.size()) return true;
  const char state = all[close + 2];
  return state == 'Z' || state == 'X';
}

bool KillAndWait(pid_t pid, int sig, int timeout_ms) {
  if (::kill(pid, sig) != 0 && errno == ESRCH) return true;
  for (int waited = 0; waited < timeout_ms; waited += 20) {
    int st;
    waitpid(pid, &st, WNOHANG);  // reaps it if it is ours
    if (ProcessGone(pid)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return ProcessGone(pid);
}

AgentProcess::AgentProcess(const std::string& log_name)
    : log_(Env("HSMUX_TEST_DIR") + "/" + log_name) {}

AgentProcess::~AgentProcess() {
  if (pid_ > 0) Stop();
}

bool AgentProcess::Start(int timeout_ms) {
  const std::string cmd = "exec " + Env("HSMUX_AGENT_START") + " >'" + log_ + "' 2>&1";
  pid_t parent = getpid();
  pid_ = fork();
  if (pid_ == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  if (pid_ < 0) return false;
  for (int waited = 0; waited < timeout_ms; waited += 50) {
    const std::string log = ReadFile(log_);
    if (log.rfind("hsmuxd: serving on ", 0) == 0 ||
        log.find("\nhsmuxd: serving on ") != std::string::npos) {
      return true;
    }
    int st;
    if (waitpid(pid_, &st, WNOHANG) == pid_) {
      pid_ = -1;
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

bool AgentProcess::Stop(int sig) {
  if (pid_ <= 0) return true;
  bool gone = KillAndWait(pid_, sig, 20000);
  if (!gone) gone = KillAndWait(pid_, SIGKILL, 5000);
  int st;
  waitpid(pid_, &st, 0);
  pid_ = -1;
  return gone;
}

Child SpawnHelper(const std::vector<std::string>& args,
                  const std::map<std::string, std::string>& env) {
  int in_pipe[2], out_pipe[2];
  Child c;
  if (pipe2(in_pipe, O_CLOEXEC) != 0 || pipe2(out_pipe, O_CLOEXEC) != 0) return c;
  std::vector<std::string> argv_s = {"/proc/self/exe", "--helper"};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  c.pid = fork();
  if (c.pid == 0) {
    dup2(in_pipe[0], 0);
    dup2(out_pipe[1], 1);
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv("/proc/self/exe", argv.data());
    _exit(127);
  }
  close(in_pipe[0]);
  close(out_pipe[1]);
  c.in_fd = in_pipe[1];
  c.out_fd = out_pipe[0];
  return c;
}

std::optional<std::string> ReadLine(Child& c, int timeout_ms) {
  std::string line;
  auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (true) {
    int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                    end - std::chrono::steady_clock::now())
                                    .count());
    if (left <= 0) return std::nullopt;
    pollfd p = {c.out_fd, POLLIN, 0};
    if (poll(&p, 1, left) <= 0) continue;
    char ch;
    ssize_t n = read(c.out_fd, &ch, 1);
    if (n <= 0) return line.empty() ? std::nullopt : std::optional<std::string>(line);
    if (ch == '\n') return line;
    line.push_back(ch);
  }
}

std::string ReadAll(Child& c, int timeout_ms) {
  std::string out;
  while (auto line = ReadLine(c, timeout_ms)) out += *line + "\n";
  return out;
}

int WaitChild(Child& c, int timeout_ms) {
  if (c.in_fd >= 0) {
    close(c.in_fd);
    c.in_fd = -1;
  }
  int st = 0;
  for (int waited = 0;; waited += 20) {
    pid_t r = waitpid(c.pid, &st, WNOHANG);
    if (r == c.pid) break;
    if (waited >= timeout_ms) {
      ::kill(c.pid, SIGKILL);
      waitpid(c.pid, &st, 0);
      st = -1;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (c.out_fd >= 0) {
    close(c.out_fd);
    c.out_fd = -1;
  }
  c.pid = -1;
  if (st == -1) return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

std::string WriteModuleConfig(const std::string& name, const std::string& cert,
                              const std::string& key) {
  const std::string dir = Env("HSMUX_TEST_DIR");
  const std::string path = dir + "/" + name + ".yaml";
  std::ofstream out(path);
  out << "agents: [\"localhost:" << Env("HSMUX_AGENT_PORT") << "\"]\n"
      << "tls: {ca: \"" << dir << "/pki/ca.pem\", cert: \"" << dir << "/pki/" << cert
      << "\", key: \"" << dir << "/pki/" << key << "\", server_name: localhost}\n"
      << "slots: [1]\n"
      << "timeouts: {call_ms: 20000, connect_ms: 3000}\n"
      << "heartbeat_seconds: 10\n"
      << "log_file: \"" << dir << "/" << name << ".log\"\n";
  return path;
}

// ---- Helper modes ----
namespace {

CK_OBJECT_HANDLE FindOne(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, const std::string& label,
                         CK_OBJECT_CLASS cls) {
  auto found = FindLabelClass(p, s, label, cls);
  return found.size() == 1 ? found[0] : CK_INVALID_HANDLE;
}

int HelperSign(const std::string& label, int sessions, int signs, int threads) {
  CK_FUNCTION_LIST* p = Module();
  if (p == nullptr || p->C_Initialize(nullptr) != CKR_OK) {
    std::printf("RESULT ok=0 fail=1 rv=init\n");
    return 1;
  }
  const std::string pin = ClientPin();
  std::vector<CK_SESSION_HANDLE> hs;
  CK_RV first_rv = CKR_OK;
  for (int i = 0; i < sessions; ++i) {
    CK_RV rv;
    CK_SESSION_HANDLE h = OpenSession(p, i == 0 ? pin : "", &rv);
    if (rv != CKR_OK) {
      std::printf("RESULT ok=0 fail=1 rv=open:%s\n", RvStr(rv).c_str());
      return 1;
    }
    hs.push_back(h);
  }
  CK_SESSION_INFO si;
  if (p->C_GetSessionInfo(hs.back(), &si) != CKR_OK || si.state != CKS_RW_USER_FUNCTIONS) {
    std::printf("RESULT ok=0 fail=1 rv=not-logged-in\n");
    return 1;
  }
  const CK_OBJECT_HANDLE priv = FindOne(p, hs[0], label, CKO_PRIVATE_KEY);
  const CK_OBJECT_HANDLE pub = FindOne(p, hs[0], label, CKO_PUBLIC_KEY);
  const Bytes point = EcPointOctets(Attr(p, hs[0], pub, CKA_EC_POINT));
  if (priv == CK_INVALID_HANDLE || point.empty()) {
    std::printf("RESULT ok=0 fail=1 rv=key-not-found\n");
    return 1;
  }
  std::atomic<int> ok{0}, fail{0};
  std::mutex mu;
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      for (int i = t; i < sessions; i += threads) {
        for (int k = 0; k < signs; ++k) {
          const Bytes digest = Sha256(ToBytes("pool " + std::to_string(i * 1000 + k)));
          CK_RV rv;
          Bytes sig = Sign(p, hs[i], CKM_ECDSA, priv, digest, &rv);
          if (rv == CKR_OK && OpenSslVerifyEcdsa(point, digest, sig)) {
            ++ok;
          } else {
            ++fail;
            std::lock_guard<std::mutex> l(mu);
            if (first_rv == CKR_OK) first_rv = rv == CKR_OK ? CKR_SIGNATURE_INVALID : rv;
          }
        }
      }
    });
  }
  for (auto& t : ts) t.join();
  for (CK_SESSION_HANDLE h : hs) p->C_CloseSession(h);
  p->C_Finalize(nullptr);
  std::printf("RESULT ok=%d fail=%d rv=%s\n", ok.load(), fail.load(), RvStr(first_rv).c_str());
  std::fflush(stdout);
  return fail.load() == 0 ? 0 : 1;
}

int HelperStall(const std::string& label, int sessions) {
  CK_FUNCTION_LIST* p = Module();
  if (p == nullptr || p->C_Initialize(nullptr) != CKR_OK) {
    std::printf("RESULT ok=0 fail=1 rv=init\n");
    return 1;
  }
  const std::string pin = ClientPin();
  std::vector<CK_SESSION_HANDLE> hs;
  for (int i = 0; i < sessions; ++i) {
    CK_RV rv;
    CK_SESSION_HANDLE h = OpenSession(p, i == 0 ? pin : "", &rv);
    if (rv != CKR_OK) {
      std::printf("RESULT ok=0 fail=1 rv=open:%s\n", RvStr(rv).c_str());
      return 1;
    }
    hs.push_back(h);
  }
  const CK_OBJECT_HANDLE priv = FindOne(p, hs[0], label, CKO_PRIVATE_KEY);
  const CK_OBJECT_HANDLE pub = FindOne(p, hs[0], label, CKO_PUBLIC_KEY);
  const Bytes point = EcPointOctets(Attr(p, hs[0], pub, CKA_EC_POINT));
  CK_MECHANISM m = {CKM_ECDSA, nullptr, 0};
  for (CK_SESSION_HANDLE h : hs) {
    CK_RV rv = p->C_SignInit(h, &m, priv);
    if (rv != CKR_OK) {
      std::printf("RESULT ok=0 fail=1 rv=signinit:%s\n", RvStr(rv).c_str());
      return 1;
    }
  }
  std::printf("READY\n");
  std::fflush(stdout);
  char buf[64];
  while (read(0, buf, sizeof(buf)) > 0) {
  }
  // The stalled operations still complete.
  int ok = 0, fail = 0;
  CK_RV first_rv = CKR_OK;
  const Bytes digest = Sha256(ToBytes("stalled"));
  for (CK_SESSION_HANDLE h : hs) {
    Bytes sig(256);
    CK_ULONG len = sig.size();
    CK_RV rv = p->C_Sign(h, const_cast<CK_BYTE*>(digest.data()), digest.size(), sig.data(), &len);
    sig.resize(rv == CKR_OK ? len : 0);
    if (rv == CKR_OK && OpenSslVerifyEcdsa(point, digest, sig)) {
      ++ok;
    } else {
      ++fail;
      if (first_rv == CKR_OK) first_rv = rv == CKR_OK ? CKR_SIGNATURE_INVALID : rv;
    }
  }
  for (CK_SESSION_HANDLE h : hs) p->C_CloseSession(h);
  p->C_Finalize(nullptr);
  std::printf("RESULT ok=%d fail=%d rv=%s\n", ok, fail, RvStr(first_rv).c_str());
  std::fflush(stdout);
  return fail == 0 ? 0 : 1;
}

int HelperFind(const std::string& label, const std::string& pin_file, CK_OBJECT_HANDLE handle) {
  CK_FUNCTION_LIST* p = Module();
  CK_RV rv = p == nullptr ? CKR_GENERAL_ERROR : p->C_Initialize(nullptr);
  if (rv != CKR_OK) {
    std::printf("ERROR init %s\n", RvStr(rv).c_str());
    return 1;
  }
  CK_SESSION_HANDLE s = OpenSession(p, FirstLine(pin_file), &rv);
  if (rv != CKR_OK) {
    std::printf("ERROR open/login %s\n", RvStr(rv).c_str());
    return 1;
  }
  std::printf("COUNT %zu\n", FindLabel(p, s, label).size());
  CK_RV arv;
  Attr(p, s, handle, CKA_LABEL, &arv);
  std::printf("HANDLE_RV %s\n", RvStr(arv).c_str());
  p->C_CloseSession(s);
  p->C_Finalize(nullptr);
  std::fflush(stdout);
  return 0;
}

int HelperGenAes(const std::string& label) {
  CK_FUNCTION_LIST* p = Module();
  CK_RV rv = p == nullptr ? CKR_GENERAL_ERROR : p->C_Initialize(nullptr);
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  if (rv == CKR_OK) s = OpenSession(p, ClientPin(), &rv);
  std::printf("STARTED\n");
  std::fflush(stdout);
  CK_OBJECT_HANDLE k = CK_INVALID_HANDLE;
  if (rv == CKR_OK) rv = GenAes(p, s, label, ToBytes(label), true, &k);
  std::printf("RV %s\n", RvStr(rv).c_str());
  std::fflush(stdout);
  if (p != nullptr) p->C_Finalize(nullptr);
  return 0;
}

}  // namespace

int RunHelper(int argc, char** argv) {
  std::vector<std::string> a(argv + 2, argv + argc);
  if (a.size() == 5 && a[0] == "sign") {
    return HelperSign(a[1], std::stoi(a[2]), std::stoi(a[3]), std::stoi(a[4]));
  }
  if (a.size() == 3 && a[0] == "stall") return HelperStall(a[1], std::stoi(a[2]));
  if (a.size() == 4 && a[0] == "find") {
    return HelperFind(a[1], a[2], static_cast<CK_OBJECT_HANDLE>(std::stoull(a[3])));
  }
  if (a.size() == 2 && a[0] == "genaes") return HelperGenAes(a[1]);
  std::fprintf(stderr, "unknown helper mode\n");
  return 2;
}

}  // namespace hsmux::grouptest

int main(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "--helper") {
    return hsmux::grouptest::RunHelper(argc, argv);
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
