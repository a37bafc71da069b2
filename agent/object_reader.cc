#include "object_reader.h"

#include <openssl/evp.h>

#include <cstring>
#include <vector>

#include "wire/attribute_codec.h"
#include "wire/attribute_kinds.h"
#include "wire/errors.h"

namespace hsmux::agent {
namespace {

std::string Sha256(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<char*>(md), len);
}

std::string Hex(const std::string& s) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

std::string BytesOf(const v1::AttributeList& list, CK_ATTRIBUTE_TYPE type) {
  const v1::Attribute* a = FindAttribute(list, type);
  return a != nullptr && a->value_case() == v1::Attribute::kBytes ? a->bytes() : std::string();
}

// A fixed block every replica of a key processes the same way.
constexpr unsigned char kProbeBlock[32] = {'h', 's', 'm', 'u', 'x', '-', 'r', 'e', 'p', 'l',
                                           'i', 'c', 'a', '-', 'p', 'r', 'o', 'o', 'f'};

// Runs a one-shot sign (MAC) with `mech` and returns the output, or "".
std::string SignOnce(Member& m, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, CK_MECHANISM mech) {
  CK_FUNCTION_LIST* fn = m.fn();
  if (fn->C_SignInit(s, &mech, key) != CKR_OK) return "";
  unsigned char out[512];
  CK_ULONG len = sizeof(out);
  CK_RV rv = fn->C_Sign(s, const_cast<unsigned char*>(kProbeBlock), sizeof(kProbeBlock), out, &len);
  if (rv != CKR_OK) {
    // End whatever the member left active (SoftHSM keeps it after errors).
    CK_ULONG dummy = sizeof(out);
    fn->C_SignFinal(s, out, &dummy);
    return "";
  }
  return std::string(reinterpret_cast<char*>(out), len);
}

std::string EncryptOnce(Member& m, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, CK_MECHANISM mech) {
  CK_FUNCTION_LIST* fn = m.fn();
  if (fn->C_EncryptInit(s, &mech, key) != CKR_OK) return "";
  unsigned char out[128];
  CK_ULONG len = sizeof(out);
  CK_RV rv =
      fn->C_Encrypt(s, const_cast<unsigned char*>(kProbeBlock), sizeof(kProbeBlock), out, &len);
  if (rv != CKR_OK) {
    CK_ULONG dummy = sizeof(out);
    fn->C_EncryptFinal(s, out, &dummy);
    return "";
  }
  return std::string(reinterpret_cast<char*>(out), len);
}

bool BoolOf(const v1::AttributeList& list, CK_ATTRIBUTE_TYPE type) {
  const v1::Attribute* a = FindAttribute(list, type);
  return a != nullptr && a->value_case() == v1::Attribute::kBoolean && a->boolean();
}

// EC private keys carry no point on SoftHSM: sign the probe with the private
// key and verify with a public key of the same CKA_ID on the same member; the
// public key's point then identifies the private key too.
std::string EcPrivateByFunction(Member& m, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key,
                                const ObjectSnapshot& snap) {
  if (!BoolOf(snap.attributes, CKA_SIGN)) return "";
  CK_MECHANISM ecdsa = {CKM_ECDSA, nullptr, 0};
  const std::string sig = SignOnce(m, s, key, ecdsa);
  if (sig.empty()) return "";
  CK_OBJECT_CLASS pub_class = CKO_PUBLIC_KEY;
  CK_KEY_TYPE kt = CKK_EC;
  std::string id = snap.cka_id;
  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &pub_class, sizeof(pub_class)},
                         {CKA_KEY_TYPE, &kt, sizeof(kt)},
                         {CKA_ID, id.data(), id.size()},
                         {CKA_TOKEN, &yes, sizeof(yes)}};
  CK_FUNCTION_LIST* fn = m.fn();
  if (fn->C_FindObjectsInit(s, tmpl, 4) != CKR_OK) return "";
  CK_OBJECT_HANDLE pubs[8];
  CK_ULONG n = 0;
  fn->C_FindObjects(s, pubs, 8, &n);
  fn->C_FindObjectsFinal(s);
  for (CK_ULONG i = 0; i < n; ++i) {
    if (fn->C_VerifyInit(s, &ecdsa, pubs[i]) != CKR_OK) continue;
    std::string sig_copy = sig;
    CK_RV rv = fn->C_Verify(s, const_cast<unsigned char*>(kProbeBlock), sizeof(kProbeBlock),
                            reinterpret_cast<unsigned char*>(sig_copy.data()), sig_copy.size());
    if (rv != CKR_OK) continue;
    auto pub = ReadObject(m, s, pubs[i]);
    if (!pub.ok()) continue;
    return "ec:" + Hex(Sha256(BytesOf(pub->attributes, CKA_EC_PARAMS) + "|" +
                              BytesOf(pub->attributes, CKA_EC_POINT)));
  }
  return "";
}

std::string SecretByFunction(Member& m, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key,
                             const ObjectSnapshot& snap) {
  if (snap.key_type == CKK_AES && BoolOf(snap.attributes, CKA_ENCRYPT)) {
    const std::string out = EncryptOnce(m, s, key, CK_MECHANISM{CKM_AES_ECB, nullptr, 0});
    if (!out.empty()) return "fn-enc:" + Hex(Sha256(out));
  }
  if (BoolOf(snap.attributes, CKA_SIGN)) {
    const CK_MECHANISM_TYPE mac = snap.key_type == CKK_AES ? CKM_AES_CMAC : CKM_SHA256_HMAC;
    const std::string out = SignOnce(m, s, key, CK_MECHANISM{mac, nullptr, 0});
    if (!out.empty()) return "fn-mac:" + Hex(Sha256(out));
  }
  return "";
}

}  // namespace

const std::vector<CK_ATTRIBUTE_TYPE>& CachedTypes() {
  static const auto* types = new std::vector<CK_ATTRIBUTE_TYPE>{
      CKA_CLASS, CKA_TOKEN, CKA_PRIVATE, CKA_LABEL, CKA_APPLICATION, CKA_VALUE, CKA_OBJECT_ID,
      CKA_CERTIFICATE_TYPE, CKA_ISSUER, CKA_SERIAL_NUMBER, CKA_AC_ISSUER, CKA_OWNER,
      CKA_ATTR_TYPES, CKA_TRUSTED, CKA_CERTIFICATE_CATEGORY, CKA_JAVA_MIDP_SECURITY_DOMAIN,
      CKA_URL, CKA_HASH_OF_SUBJECT_PUBLIC_KEY, CKA_HASH_OF_ISSUER_PUBLIC_KEY,
      CKA_NAME_HASH_ALGORITHM, CKA_CHECK_VALUE, CKA_KEY_TYPE, CKA_SUBJECT, CKA_ID,
      CKA_SENSITIVE, CKA_ENCRYPT, CKA_DECRYPT, CKA_WRAP, CKA_UNWRAP, CKA_SIGN,
      CKA_SIGN_RECOVER, CKA_VERIFY, CKA_VERIFY_RECOVER, CKA_DERIVE, CKA_START_DATE,
      CKA_END_DATE, CKA_MODULUS, CKA_MODULUS_BITS, CKA_PUBLIC_EXPONENT, CKA_VALUE_LEN,
      CKA_EXTRACTABLE, CKA_LOCAL, CKA_NEVER_EXTRACTABLE, CKA_ALWAYS_SENSITIVE,
      CKA_KEY_GEN_MECHANISM, CKA_MODIFIABLE, CKA_COPYABLE, CKA_DESTROYABLE, CKA_EC_PARAMS,
      CKA_EC_POINT, CKA_ALWAYS_AUTHENTICATE, CKA_WRAP_WITH_TRUSTED, CKA_WRAP_TEMPLATE,
      CKA_UNWRAP_TEMPLATE, CKA_DERIVE_TEMPLATE, CKA_ALLOWED_MECHANISMS, CKA_PUBLIC_KEY_INFO};
  return *types;
}

bool Cacheable(CK_OBJECT_CLASS object_class, CK_ATTRIBUTE_TYPE type) {
  if (type == CKA_VALUE) {
    // Key values are never cached, not even non-sensitive ones.
    return object_class != CKO_SECRET_KEY && object_class != CKO_PRIVATE_KEY;
  }
  for (CK_ATTRIBUTE_TYPE t : CachedTypes()) {
    if (t == type) return true;
  }
  return false;
}

const v1::Attribute* FindAttribute(const v1::AttributeList& list, CK_ATTRIBUTE_TYPE type) {
  for (const auto& a : list.attributes()) {
    if (a.type() == type) return &a;
  }
  return nullptr;
}

absl::StatusOr<ObjectSnapshot> ReadObject(Member& member, CK_SESSION_HANDLE session,
                                          CK_OBJECT_HANDLE object) {
  CK_FUNCTION_LIST* fn = member.fn();
  ObjectSnapshot snap;
  CK_ATTRIBUTE cls = {CKA_CLASS, &snap.object_class, sizeof(snap.object_class)};
  CK_RV rv = fn->C_GetAttributeValue(session, object, &cls, 1);
  if (rv != CKR_OK) return wire::CkError(rv, "read CKA_CLASS");
  const auto& types = CachedTypes();
  std::vector<CK_ATTRIBUTE> probe;
  for (CK_ATTRIBUTE_TYPE t : types) {
    if (Cacheable(snap.object_class, t)) probe.push_back({t, nullptr, 0});
  }
  rv = fn->C_GetAttributeValue(session, object, probe.data(), probe.size());
  if (rv != CKR_OK && rv != CKR_ATTRIBUTE_SENSITIVE && rv != CKR_ATTRIBUTE_TYPE_INVALID) {
    return wire::CkError(rv, "read attribute lengths");
  }
  std::vector<CK_ATTRIBUTE> wanted;
  for (const CK_ATTRIBUTE& a : probe) {
    if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION) {
      CK_ATTRIBUTE one = {a.type, nullptr, 0};
      if (fn->C_GetAttributeValue(session, object, &one, 1) == CKR_ATTRIBUTE_SENSITIVE) {
        snap.sensitive.insert(a.type);
      }
      continue;
    }
    wanted.push_back(a);
  }
  for (const CK_ATTRIBUTE& a : wanted) {
    v1::Attribute* out = snap.attributes.add_attributes();
    // Nested templates: read through the same two-step path as clients.
    std::vector<CK_ATTRIBUTE> inner;
    std::vector<std::string> inner_bufs;
    std::string buf;
    CK_ATTRIBUTE v = {a.type, nullptr, a.ulValueLen};
    if (wire::KindOf(a.type) == wire::AttributeKind::kTemplate) {
      inner.assign(a.ulValueLen / sizeof(CK_ATTRIBUTE), CK_ATTRIBUTE{0, nullptr, 0});
      v.pValue = inner.data();
      if (fn->C_GetAttributeValue(session, object, &v, 1) != CKR_OK) {
        snap.attributes.mutable_attributes()->RemoveLast();
        continue;
      }
      inner_bufs.resize(inner.size());
      for (size_t i = 0; i < inner.size(); ++i) {
        inner_bufs[i].resize(inner[i].ulValueLen == CK_UNAVAILABLE_INFORMATION
                                 ? 0
                                 : inner[i].ulValueLen);
        inner[i].pValue = inner_bufs[i].data();
      }
    } else {
      buf.resize(a.ulValueLen);
      v.pValue = buf.data();
    }
    if (fn->C_GetAttributeValue(session, object, &v, 1) != CKR_OK ||
        !wire::EncodeNativeValue(v, out).ok()) {
      snap.attributes.mutable_attributes()->RemoveLast();
    }
  }
  for (const auto& a : snap.attributes.attributes()) {
    switch (a.type()) {
      case CKA_KEY_TYPE:
      case CKA_CERTIFICATE_TYPE:
        snap.key_type = a.ulong();
        break;
      case CKA_ID:
        snap.cka_id = a.bytes();
        break;
      case CKA_LABEL:
        snap.label = a.bytes();
        break;
      case CKA_TOKEN:
        snap.is_token = a.boolean();
        break;
      case CKA_PRIVATE:
        snap.is_private = a.boolean();
        break;
      default:
        break;
    }
  }
  return snap;
}

std::string Fingerprint(Member& member, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object,
                        const ObjectSnapshot& snap) {
  const v1::AttributeList& a = snap.attributes;
  switch (snap.object_class) {
    case CKO_PUBLIC_KEY:
    case CKO_PRIVATE_KEY:
      if (snap.key_type == CKK_RSA && !BytesOf(a, CKA_MODULUS).empty()) {
        return "rsa:" +
               Hex(Sha256(BytesOf(a, CKA_MODULUS) + "|" + BytesOf(a, CKA_PUBLIC_EXPONENT)));
      }
      if (!BytesOf(a, CKA_EC_POINT).empty()) {
        return "ec:" + Hex(Sha256(BytesOf(a, CKA_EC_PARAMS) + "|" + BytesOf(a, CKA_EC_POINT)));
      }
      if (snap.object_class == CKO_PRIVATE_KEY && snap.key_type == CKK_EC) {
        return EcPrivateByFunction(member, session, object, snap);
      }
      return "";
    case CKO_CERTIFICATE:
    case CKO_DATA:
      return "sha256:" + Hex(Sha256(BytesOf(a, CKA_VALUE) + "|" + BytesOf(a, CKA_APPLICATION) +
                                    "|" + BytesOf(a, CKA_OBJECT_ID)));
    case CKO_SECRET_KEY:
      return SecretByFunction(member, session, object, snap);
    default:
      return "";
  }
}

}  // namespace hsmux::agent
