#include "wire/mechanism_codec.h"

#include <cstdio>
#include <cstring>
#include <limits>
#include <utility>

#include "wire/errors.h"

namespace hsmux::wire {
namespace {

// p11-kit's 2.40 header lacks these two DSA mechanisms.
#ifndef CKM_DSA
#define CKM_DSA 0x11UL
#endif

// How a mechanism's parameter is read and rebuilt. Every mechanism the wire
// carries has exactly one codec; anything else is not carried with params.
enum Codec {
  kNoParam = 0,  // takes no parameter
  kRaw,          // a byte string of one of the lengths in MechSpec (IVs)
  kRawOptional,  // kRaw, or no parameter at all (AES key wrap IVs)
  kRawAny,       // a byte string of any non-zero length (DH public value)
  kStringData,   // CK_KEY_DERIVATION_STRING_DATA -> raw
  kUlong,        // CK_MAC_GENERAL_PARAMS (a CK_ULONG)
  kPss,          // CK_RSA_PKCS_PSS_PARAMS
  kOaep,         // CK_RSA_PKCS_OAEP_PARAMS
  kGcm,          // CK_GCM_PARAMS, 40-byte (JDK) or 48-byte layout
  kCtr,          // CK_AES_CTR_PARAMS
  kEcdh1,        // CK_ECDH1_DERIVE_PARAMS
  kEddsa,        // wire::EddsaParams (PKCS#11 3.0 CK_EDDSA_PARAMS)
  kAesCbcData,   // CK_AES_CBC_ENCRYPT_DATA_PARAMS
};

struct MechSpec {
  CK_MECHANISM_TYPE type;
  const char* name;
  Codec codec;
  // kRaw / kRawOptional: the allowed lengths (0 = unused).
  size_t len1;
  size_t len2;
};

// clang-format off
#define M(name, codec, l1, l2) {name, #name, codec, l1, l2},
constexpr MechSpec kMechs[] = {
  // RSA
  M(CKM_RSA_PKCS_KEY_PAIR_GEN, kNoParam, 0, 0)
  M(CKM_RSA_PKCS, kNoParam, 0, 0)
  M(CKM_RSA_X_509, kNoParam, 0, 0)
  M(CKM_MD5_RSA_PKCS, kNoParam, 0, 0)
  M(CKM_SHA1_RSA_PKCS, kNoParam, 0, 0)
  M(CKM_SHA224_RSA_PKCS, kNoParam, 0, 0)
  M(CKM_SHA256_RSA_PKCS, kNoParam, 0, 0)
  M(CKM_SHA384_RSA_PKCS, kNoParam, 0, 0)
  M(CKM_SHA512_RSA_PKCS, kNoParam, 0, 0)
  M(CKM_RSA_PKCS_PSS, kPss, 0, 0)
  M(CKM_SHA1_RSA_PKCS_PSS, kPss, 0, 0)
  M(CKM_SHA224_RSA_PKCS_PSS, kPss, 0, 0)
  M(CKM_SHA256_RSA_PKCS_PSS, kPss, 0, 0)
  M(CKM_SHA384_RSA_PKCS_PSS, kPss, 0, 0)
  M(CKM_SHA512_RSA_PKCS_PSS, kPss, 0, 0)
  M(CKM_RSA_PKCS_OAEP, kOaep, 0, 0)
  // DSA, DH
  M(CKM_DSA_KEY_PAIR_GEN, kNoParam, 0, 0)
  M(CKM_DSA, kNoParam, 0, 0)
  M(CKM_DSA_SHA1, kNoParam, 0, 0)
  M(CKM_DSA_SHA224, kNoParam, 0, 0)
  M(CKM_DSA_SHA256, kNoParam, 0, 0)
  M(CKM_DSA_SHA384, kNoParam, 0, 0)
  M(CKM_DSA_SHA512, kNoParam, 0, 0)
  M(CKM_DH_PKCS_KEY_PAIR_GEN, kNoParam, 0, 0)
  M(CKM_DH_PKCS_DERIVE, kRawAny, 0, 0)
  // EC
  M(CKM_EC_KEY_PAIR_GEN, kNoParam, 0, 0)
  M(CKM_ECDSA, kNoParam, 0, 0)
  M(CKM_ECDSA_SHA1, kNoParam, 0, 0)
  M(CKM_ECDSA_SHA224, kNoParam, 0, 0)
  M(CKM_ECDSA_SHA256, kNoParam, 0, 0)
  M(CKM_ECDSA_SHA384, kNoParam, 0, 0)
  M(CKM_ECDSA_SHA512, kNoParam, 0, 0)
  M(CKM_ECDH1_DERIVE, kEcdh1, 0, 0)
  M(CKM_ECDH1_COFACTOR_DERIVE, kEcdh1, 0, 0)
  M(CKM_EC_EDWARDS_KEY_PAIR_GEN, kNoParam, 0, 0)
  M(CKM_EDDSA, kEddsa, 0, 0)
  // AES
  M(CKM_AES_KEY_GEN, kNoParam, 0, 0)
  M(CKM_AES_ECB, kNoParam, 0, 0)
  M(CKM_AES_CBC, kRaw, 16, 0)
  M(CKM_AES_CBC_PAD, kRaw, 16, 0)
  M(CKM_AES_CTR, kCtr, 0, 0)
  M(CKM_AES_GCM, kGcm, 0, 0)
  M(CKM_AES_MAC, kNoParam, 0, 0)
  M(CKM_AES_MAC_GENERAL, kUlong, 0, 0)
  M(CKM_AES_CMAC, kNoParam, 0, 0)
  M(CKM_AES_CMAC_GENERAL, kUlong, 0, 0)
  M(CKM_AES_KEY_WRAP, kRawOptional, 8, 0)
  // RFC 5649 uses a 4-byte alternative IV; some tokens take the 8-byte form.
  M(CKM_AES_KEY_WRAP_PAD, kRawOptional, 4, 8)
  M(CKM_AES_ECB_ENCRYPT_DATA, kStringData, 0, 0)
  M(CKM_AES_CBC_ENCRYPT_DATA, kAesCbcData, 0, 0)
  // DES3
  M(CKM_DES_KEY_GEN, kNoParam, 0, 0)
  M(CKM_DES_ECB, kNoParam, 0, 0)
  M(CKM_DES_CBC, kRaw, 8, 0)
  M(CKM_DES_CBC_PAD, kRaw, 8, 0)
  M(CKM_DES_ECB_ENCRYPT_DATA, kStringData, 0, 0)
  M(CKM_DSA_PARAMETER_GEN, kNoParam, 0, 0)
  M(CKM_DH_PKCS_PARAMETER_GEN, kNoParam, 0, 0)
  M(CKM_DES2_KEY_GEN, kNoParam, 0, 0)
  M(CKM_DES3_KEY_GEN, kNoParam, 0, 0)
  M(CKM_DES3_ECB, kNoParam, 0, 0)
  M(CKM_DES3_CBC, kRaw, 8, 0)
  M(CKM_DES3_CBC_PAD, kRaw, 8, 0)
  M(CKM_DES3_MAC, kNoParam, 0, 0)
  M(CKM_DES3_MAC_GENERAL, kUlong, 0, 0)
  M(CKM_DES3_CMAC, kNoParam, 0, 0)
  M(CKM_DES3_CMAC_GENERAL, kUlong, 0, 0)
  M(CKM_DES3_ECB_ENCRYPT_DATA, kStringData, 0, 0)
  // Generic secrets and key derivation by data
  M(CKM_GENERIC_SECRET_KEY_GEN, kNoParam, 0, 0)
  M(CKM_CONCATENATE_BASE_AND_DATA, kStringData, 0, 0)
  M(CKM_CONCATENATE_DATA_AND_BASE, kStringData, 0, 0)
  M(CKM_XOR_BASE_AND_DATA, kStringData, 0, 0)
  // Digests and HMAC
  M(CKM_MD5, kNoParam, 0, 0)
  M(CKM_SHA_1, kNoParam, 0, 0)
  M(CKM_SHA224, kNoParam, 0, 0)
  M(CKM_SHA256, kNoParam, 0, 0)
  M(CKM_SHA384, kNoParam, 0, 0)
  M(CKM_SHA512, kNoParam, 0, 0)
  M(CKM_MD5_HMAC, kNoParam, 0, 0)
  M(CKM_SHA_1_HMAC, kNoParam, 0, 0)
  M(CKM_SHA224_HMAC, kNoParam, 0, 0)
  M(CKM_SHA256_HMAC, kNoParam, 0, 0)
  M(CKM_SHA384_HMAC, kNoParam, 0, 0)
  M(CKM_SHA512_HMAC, kNoParam, 0, 0)
  M(CKM_MD5_HMAC_GENERAL, kUlong, 0, 0)
  M(CKM_SHA_1_HMAC_GENERAL, kUlong, 0, 0)
  M(CKM_SHA224_HMAC_GENERAL, kUlong, 0, 0)
  M(CKM_SHA256_HMAC_GENERAL, kUlong, 0, 0)
  M(CKM_SHA384_HMAC_GENERAL, kUlong, 0, 0)
  M(CKM_SHA512_HMAC_GENERAL, kUlong, 0, 0)
};
#undef M
// clang-format on

const MechSpec* FindSpec(CK_MECHANISM_TYPE type) {
  for (const MechSpec& s : kMechs) {
    if (s.type == type) return &s;
  }
  return nullptr;
}

// The JDK's CK_GCM_PARAMS (PKCS#11 2.40 errata text): no ulIvBits. Packed
// like the p11-kit structures, which are packed on Windows only.
#if defined(_WIN32)
#pragma pack(push, 1)
#endif
struct JdkGcmParams {
  CK_BYTE_PTR pIv;
  CK_ULONG ulIvLen;
  CK_BYTE_PTR pAAD;
  CK_ULONG ulAADLen;
  CK_ULONG ulTagBits;
};
#if defined(_WIN32)
#pragma pack(pop)
#endif

bool FitsUlong(uint64_t v) { return v <= std::numeric_limits<CK_ULONG>::max(); }

absl::Status ParamInvalid(const MechSpec& spec, const char* why) {
  return CkError(CKR_MECHANISM_PARAM_INVALID, std::string(spec.name) + ": " + why);
}

// Reads the caller's structure by value: its pointer need not be aligned.
template <typename T>
T ReadStruct(const void* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Copies a (pointer, length) pair of the caller's structure, rejecting a NULL
// pointer with a non-zero length.
bool ReadBuffer(const void* ptr, CK_ULONG len, std::string* out) {
  if (ptr == nullptr) {
    out->clear();
    return len == 0;
  }
  out->assign(static_cast<const char*>(ptr), len);
  return true;
}

bool RawLengthAllowed(const MechSpec& spec, size_t len) {
  if (spec.codec == kRawAny) return len > 0;
  return len == spec.len1 || (spec.len2 != 0 && len == spec.len2);
}

absl::Status EncodeParams(const MechSpec& spec, const void* p, CK_ULONG len, v1::Mechanism* out) {
  switch (spec.codec) {
    case kNoParam:
      return ParamInvalid(spec, "takes no parameter");
    case kRaw:
    case kRawOptional:
    case kRawAny:
      if (!RawLengthAllowed(spec, len)) return ParamInvalid(spec, "wrong parameter length");
      out->set_raw(std::string(static_cast<const char*>(p), len));
      return absl::OkStatus();
    case kStringData: {
      if (len != sizeof(CK_KEY_DERIVATION_STRING_DATA)) {
        return ParamInvalid(spec, "not a CK_KEY_DERIVATION_STRING_DATA");
      }
      auto s = ReadStruct<CK_KEY_DERIVATION_STRING_DATA>(p);
      if (!ReadBuffer(s.pData, s.ulLen, out->mutable_raw())) {
        return ParamInvalid(spec, "pData is NULL");
      }
      return absl::OkStatus();
    }
    case kUlong:
      if (len != sizeof(CK_ULONG)) return ParamInvalid(spec, "not a CK_MAC_GENERAL_PARAMS");
      out->set_ulong(ReadStruct<CK_ULONG>(p));
      return absl::OkStatus();
    case kPss: {
      if (len != sizeof(CK_RSA_PKCS_PSS_PARAMS)) {
        return ParamInvalid(spec, "not a CK_RSA_PKCS_PSS_PARAMS");
      }
      auto s = ReadStruct<CK_RSA_PKCS_PSS_PARAMS>(p);
      v1::RsaPkcsPssParams* w = out->mutable_pss();
      w->set_hash_alg(s.hashAlg);
      w->set_mgf(s.mgf);
      w->set_salt_len(s.sLen);
      return absl::OkStatus();
    }
    case kOaep: {
      if (len != sizeof(CK_RSA_PKCS_OAEP_PARAMS)) {
        return ParamInvalid(spec, "not a CK_RSA_PKCS_OAEP_PARAMS");
      }
      auto s = ReadStruct<CK_RSA_PKCS_OAEP_PARAMS>(p);
      v1::RsaPkcsOaepParams* w = out->mutable_oaep();
      w->set_hash_alg(s.hashAlg);
      w->set_mgf(s.mgf);
      w->set_source(s.source);
      if (!ReadBuffer(s.pSourceData, s.ulSourceDataLen, w->mutable_source_data())) {
        return ParamInvalid(spec, "pSourceData is NULL");
      }
      return absl::OkStatus();
    }
    case kGcm: {
      v1::GcmParams* w = out->mutable_gcm();
      const void* iv;
      CK_ULONG iv_len;
      const void* aad;
      CK_ULONG aad_len;
      if (len == sizeof(CK_GCM_PARAMS)) {
        auto s = ReadStruct<CK_GCM_PARAMS>(p);
        iv = s.pIv, iv_len = s.ulIvLen, aad = s.pAAD, aad_len = s.ulAADLen;
        w->set_has_iv_bits(true);
        w->set_iv_bits(s.ulIvBits);
        w->set_tag_bits(s.ulTagBits);
      } else if (len == sizeof(JdkGcmParams)) {
        auto s = ReadStruct<JdkGcmParams>(p);
        iv = s.pIv, iv_len = s.ulIvLen, aad = s.pAAD, aad_len = s.ulAADLen;
        w->set_tag_bits(s.ulTagBits);
      } else {
        return ParamInvalid(spec, "not a CK_GCM_PARAMS (40 or 48 bytes)");
      }
      if (!ReadBuffer(iv, iv_len, w->mutable_iv())) return ParamInvalid(spec, "pIv is NULL");
      if (!ReadBuffer(aad, aad_len, w->mutable_aad())) return ParamInvalid(spec, "pAAD is NULL");
      return absl::OkStatus();
    }
    case kCtr: {
      if (len != sizeof(CK_AES_CTR_PARAMS)) return ParamInvalid(spec, "not a CK_AES_CTR_PARAMS");
      auto s = ReadStruct<CK_AES_CTR_PARAMS>(p);
      v1::CtrParams* w = out->mutable_ctr();
      w->set_counter_bits(s.ulCounterBits);
      w->set_counter_block(reinterpret_cast<const char*>(s.cb), sizeof(s.cb));
      return absl::OkStatus();
    }
    case kEcdh1: {
      if (len != sizeof(CK_ECDH1_DERIVE_PARAMS)) {
        return ParamInvalid(spec, "not a CK_ECDH1_DERIVE_PARAMS");
      }
      auto s = ReadStruct<CK_ECDH1_DERIVE_PARAMS>(p);
      v1::Ecdh1DeriveParams* w = out->mutable_ecdh1();
      w->set_kdf(s.kdf);
      if (!ReadBuffer(s.pSharedData, s.ulSharedDataLen, w->mutable_shared_data())) {
        return ParamInvalid(spec, "pSharedData is NULL");
      }
      if (!ReadBuffer(s.pPublicData, s.ulPublicDataLen, w->mutable_public_data())) {
        return ParamInvalid(spec, "pPublicData is NULL");
      }
      return absl::OkStatus();
    }
    case kEddsa: {
      if (len != sizeof(EddsaParams)) return ParamInvalid(spec, "not a CK_EDDSA_PARAMS");
      auto s = ReadStruct<EddsaParams>(p);
      v1::EddsaParams* w = out->mutable_eddsa();
      w->set_ph_flag(s.phFlag != CK_FALSE);
      if (!ReadBuffer(s.pContextData, s.ulContextDataLen, w->mutable_context_data())) {
        return ParamInvalid(spec, "pContextData is NULL");
      }
      return absl::OkStatus();
    }
    case kAesCbcData: {
      if (len != sizeof(CK_AES_CBC_ENCRYPT_DATA_PARAMS)) {
        return ParamInvalid(spec, "not a CK_AES_CBC_ENCRYPT_DATA_PARAMS");
      }
      auto s = ReadStruct<CK_AES_CBC_ENCRYPT_DATA_PARAMS>(p);
      v1::AesCbcEncryptDataParams* w = out->mutable_aes_cbc_data();
      w->set_iv(reinterpret_cast<const char*>(s.iv), sizeof(s.iv));
      if (!ReadBuffer(s.pData, s.length, w->mutable_data())) {
        return ParamInvalid(spec, "pData is NULL");
      }
      return absl::OkStatus();
    }
  }
  return CkError(CKR_GENERAL_ERROR, "unreachable mechanism codec");
}

}  // namespace

bool CanCarryMechanism(CK_MECHANISM_TYPE type) { return FindSpec(type) != nullptr; }

std::string MechanismName(CK_MECHANISM_TYPE type) {
  if (const MechSpec* spec = FindSpec(type)) return spec->name;
  char buf[32];
  std::snprintf(buf, sizeof(buf), "CKM_0x%lx", static_cast<unsigned long>(type));
  return buf;
}

absl::Status EncodeMechanism(const CK_MECHANISM* mech, v1::Mechanism* out) {
  if (mech == nullptr) return CkError(CKR_ARGUMENTS_BAD, "mechanism is NULL");
  if (mech->pParameter == nullptr && mech->ulParameterLen != 0) {
    return CkError(CKR_ARGUMENTS_BAD, "mechanism parameter is NULL with a non-zero length");
  }
  out->Clear();
  out->set_type(mech->mechanism);
  // A zero-length parameter is no parameter, whatever the pointer: there is
  // nothing to read, and the member judges whether the mechanism needs one.
  if (mech->ulParameterLen == 0) return absl::OkStatus();
  const MechSpec* spec = FindSpec(mech->mechanism);
  if (spec == nullptr) {
    return CkError(CKR_MECHANISM_INVALID,
                   MechanismName(mech->mechanism) + " with a parameter cannot be carried");
  }
  return EncodeParams(*spec, mech->pParameter, mech->ulParameterLen, out);
}

void ApplyMechanismOutput(const v1::Mechanism& answered, CK_MECHANISM* mech) {
  if (mech == nullptr || mech->pParameter == nullptr || mech->mechanism != CKM_AES_GCM ||
      answered.type() != mech->mechanism || !answered.has_gcm()) {
    return;
  }
  CK_BYTE_PTR iv;
  CK_ULONG iv_len;
  if (mech->ulParameterLen == sizeof(CK_GCM_PARAMS)) {
    auto s = ReadStruct<CK_GCM_PARAMS>(mech->pParameter);
    iv = s.pIv, iv_len = s.ulIvLen;
  } else if (mech->ulParameterLen == sizeof(JdkGcmParams)) {
    auto s = ReadStruct<JdkGcmParams>(mech->pParameter);
    iv = s.pIv, iv_len = s.ulIvLen;
  } else {
    return;
  }
  const std::string& out_iv = answered.gcm().iv();
  // Only into a buffer of the same length, and only when it changed: the
  // caller's IV may live in memory it does not expect us to write.
  if (iv == nullptr || iv_len != out_iv.size() || iv_len == 0) return;
  if (std::memcmp(iv, out_iv.data(), iv_len) != 0) std::memcpy(iv, out_iv.data(), iv_len);
}

absl::StatusOr<NativeMechanism> NativeMechanism::Decode(const v1::Mechanism& in) {
  if (!FitsUlong(in.type())) return CkError(CKR_MECHANISM_INVALID, "mechanism type out of range");
  NativeMechanism m;
  m.mech_.mechanism = static_cast<CK_MECHANISM_TYPE>(in.type());
  if (in.params_case() == v1::Mechanism::PARAMS_NOT_SET) return m;  // no parameter
  const MechSpec* spec = FindSpec(m.mech_.mechanism);
  if (spec == nullptr) {
    return CkError(CKR_MECHANISM_INVALID,
                   MechanismName(m.mech_.mechanism) + " with a parameter cannot be carried");
  }
  const MechSpec& s = *spec;
  auto wrong = [&s]() { return ParamInvalid(s, "wire parameter does not fit the mechanism"); };
  switch (s.codec) {
    case kNoParam:
      return wrong();
    case kRaw:
    case kRawOptional:
    case kRawAny:
      if (!in.has_raw() || !RawLengthAllowed(s, in.raw().size())) return wrong();
      m.raw_ = in.raw();
      m.kind_ = kRaw;
      break;
    case kStringData:
      if (!in.has_raw()) return wrong();
      m.buf1_ = in.raw();
      m.kind_ = kStringData;
      break;
    case kUlong:
      if (!in.has_ulong() || !FitsUlong(in.ulong())) return wrong();
      m.ulong_ = static_cast<CK_ULONG>(in.ulong());
      m.kind_ = kUlong;
      break;
    case kPss: {
      if (!in.has_pss()) return wrong();
      const auto& w = in.pss();
      if (!FitsUlong(w.hash_alg()) || !FitsUlong(w.mgf()) || !FitsUlong(w.salt_len())) {
        return wrong();
      }
      m.pss_.hashAlg = static_cast<CK_MECHANISM_TYPE>(w.hash_alg());
      m.pss_.mgf = static_cast<CK_RSA_PKCS_MGF_TYPE>(w.mgf());
      m.pss_.sLen = static_cast<CK_ULONG>(w.salt_len());
      m.kind_ = kPss;
      break;
    }
    case kOaep: {
      if (!in.has_oaep()) return wrong();
      const auto& w = in.oaep();
      if (!FitsUlong(w.hash_alg()) || !FitsUlong(w.mgf()) || !FitsUlong(w.source())) {
        return wrong();
      }
      m.oaep_.hashAlg = static_cast<CK_MECHANISM_TYPE>(w.hash_alg());
      m.oaep_.mgf = static_cast<CK_RSA_PKCS_MGF_TYPE>(w.mgf());
      m.oaep_.source = static_cast<CK_RSA_PKCS_OAEP_SOURCE_TYPE>(w.source());
      m.buf1_ = w.source_data();
      m.kind_ = kOaep;
      break;
    }
    case kGcm: {
      if (!in.has_gcm()) return wrong();
      const auto& w = in.gcm();
      uint64_t iv_bits = w.has_iv_bits() ? w.iv_bits() : uint64_t{w.iv().size()} * 8;
      if (!FitsUlong(iv_bits) || !FitsUlong(w.tag_bits())) return wrong();
      // Always the 48-byte structure: that is what every member's 2.40
      // header (SoftHSMv2, vendors) expects.
      m.gcm_.ulIvBits = static_cast<CK_ULONG>(iv_bits);
      m.gcm_.ulTagBits = static_cast<CK_ULONG>(w.tag_bits());
      m.buf1_ = w.iv();
      m.buf2_ = w.aad();
      m.kind_ = kGcm;
      break;
    }
    case kCtr: {
      if (!in.has_ctr()) return wrong();
      const auto& w = in.ctr();
      if (!FitsUlong(w.counter_bits()) || w.counter_block().size() != sizeof(m.ctr_.cb)) {
        return wrong();
      }
      m.ctr_.ulCounterBits = static_cast<CK_ULONG>(w.counter_bits());
      std::memcpy(m.ctr_.cb, w.counter_block().data(), sizeof(m.ctr_.cb));
      m.kind_ = kCtr;
      break;
    }
    case kEcdh1: {
      if (!in.has_ecdh1()) return wrong();
      const auto& w = in.ecdh1();
      if (!FitsUlong(w.kdf())) return wrong();
      m.ecdh1_.kdf = static_cast<CK_ULONG>(w.kdf());
      m.buf1_ = w.shared_data();
      m.buf2_ = w.public_data();
      m.kind_ = kEcdh1;
      break;
    }
    case kEddsa: {
      if (!in.has_eddsa()) return wrong();
      m.eddsa_.phFlag = in.eddsa().ph_flag() ? CK_TRUE : CK_FALSE;
      m.buf1_ = in.eddsa().context_data();
      m.kind_ = kEddsa;
      break;
    }
    case kAesCbcData: {
      if (!in.has_aes_cbc_data()) return wrong();
      const auto& w = in.aes_cbc_data();
      if (w.iv().size() != sizeof(m.aes_cbc_data_.iv)) return wrong();
      std::memcpy(m.aes_cbc_data_.iv, w.iv().data(), sizeof(m.aes_cbc_data_.iv));
      m.buf1_ = w.data();
      m.kind_ = kAesCbcData;
      break;
    }
  }
  m.Rebind();
  return m;
}

void NativeMechanism::EncodeOutput(v1::Mechanism* out) const {
  out->Clear();
  out->set_type(mech_.mechanism);
  if (kind_ != kGcm) return;
  // The IV buffer as the member left it (a token may generate the IV).
  v1::GcmParams* w = out->mutable_gcm();
  w->set_iv(buf1_);
  w->set_has_iv_bits(true);
  w->set_iv_bits(gcm_.ulIvBits);
  w->set_aad(buf2_);
  w->set_tag_bits(gcm_.ulTagBits);
}

NativeMechanism::NativeMechanism(NativeMechanism&& other) noexcept { *this = std::move(other); }

NativeMechanism& NativeMechanism::operator=(NativeMechanism&& other) noexcept {
  if (this == &other) return *this;
  mech_ = other.mech_;
  raw_ = std::move(other.raw_);
  buf1_ = std::move(other.buf1_);
  buf2_ = std::move(other.buf2_);
  ulong_ = other.ulong_;
  pss_ = other.pss_;
  oaep_ = other.oaep_;
  gcm_ = other.gcm_;
  ctr_ = other.ctr_;
  ecdh1_ = other.ecdh1_;
  eddsa_ = other.eddsa_;
  aes_cbc_data_ = other.aes_cbc_data_;
  string_data_ = other.string_data_;
  kind_ = other.kind_;
  // The moved-from object must not keep pointers into storage it lost.
  other.mech_ = CK_MECHANISM{0, nullptr, 0};
  other.kind_ = kNoParam;
  Rebind();
  return *this;
}

namespace {
// A pointer into an owned buffer, NULL when the buffer is empty (as callers
// pass "no shared data", "no label" and so on).
CK_BYTE_PTR PtrOrNull(std::string& s) {
  return s.empty() ? nullptr : reinterpret_cast<CK_BYTE_PTR>(s.data());
}
}  // namespace

void NativeMechanism::Rebind() {
  switch (kind_) {
    case kRaw:
      mech_.pParameter = PtrOrNull(raw_);
      mech_.ulParameterLen = static_cast<CK_ULONG>(raw_.size());
      return;
    case kStringData:
      string_data_.pData = PtrOrNull(buf1_);
      string_data_.ulLen = static_cast<CK_ULONG>(buf1_.size());
      mech_.pParameter = &string_data_;
      mech_.ulParameterLen = sizeof(string_data_);
      return;
    case kUlong:
      mech_.pParameter = &ulong_;
      mech_.ulParameterLen = sizeof(ulong_);
      return;
    case kPss:
      mech_.pParameter = &pss_;
      mech_.ulParameterLen = sizeof(pss_);
      return;
    case kOaep:
      oaep_.pSourceData = PtrOrNull(buf1_);
      oaep_.ulSourceDataLen = static_cast<CK_ULONG>(buf1_.size());
      mech_.pParameter = &oaep_;
      mech_.ulParameterLen = sizeof(oaep_);
      return;
    case kGcm:
      gcm_.pIv = PtrOrNull(buf1_);
      gcm_.ulIvLen = static_cast<CK_ULONG>(buf1_.size());
      gcm_.pAAD = PtrOrNull(buf2_);
      gcm_.ulAADLen = static_cast<CK_ULONG>(buf2_.size());
      mech_.pParameter = &gcm_;
      mech_.ulParameterLen = sizeof(gcm_);
      return;
    case kCtr:
      mech_.pParameter = &ctr_;
      mech_.ulParameterLen = sizeof(ctr_);
      return;
    case kEcdh1:
      ecdh1_.pSharedData = PtrOrNull(buf1_);
      ecdh1_.ulSharedDataLen = static_cast<CK_ULONG>(buf1_.size());
      ecdh1_.pPublicData = PtrOrNull(buf2_);
      ecdh1_.ulPublicDataLen = static_cast<CK_ULONG>(buf2_.size());
      mech_.pParameter = &ecdh1_;
      mech_.ulParameterLen = sizeof(ecdh1_);
      return;
    case kEddsa:
      eddsa_.pContextData = PtrOrNull(buf1_);
      eddsa_.ulContextDataLen = static_cast<CK_ULONG>(buf1_.size());
      mech_.pParameter = &eddsa_;
      mech_.ulParameterLen = sizeof(eddsa_);
      return;
    case kAesCbcData:
      aes_cbc_data_.pData = PtrOrNull(buf1_);
      aes_cbc_data_.length = static_cast<CK_ULONG>(buf1_.size());
      mech_.pParameter = &aes_cbc_data_;
      mech_.ulParameterLen = sizeof(aes_cbc_data_);
      return;
    default:
      mech_.pParameter = nullptr;
      mech_.ulParameterLen = 0;
      return;
  }
}

}  // namespace hsmux::wire
