// libFuzzer target: proto/wire/mechanism_codec (both directions).
//
// The first input byte picks a mode:
//   0: v1::Mechanism (protobuf bytes from a hostile peer) ->
//      NativeMechanism::Decode; the parameter is read in full (as a member
//      would), moved, encoded back (must succeed and decode again) and its
//      output applied to a caller structure.
//   1: a native CK_MECHANISM built from the input as a caller passes it:
//      a known or any mechanism type, a parameter of fuzzed length, and for
//      structures with pointers, real buffers of fuzzed lengths (or NULL
//      with a length). Every block is exactly as long as claimed, so ASan
//      sees any read past it. Then EncodeMechanism, and if that succeeds,
//      Decode and ApplyMechanismOutput.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include <fuzzer/FuzzedDataProvider.h>

#include "wire/mechanism_codec.h"

namespace {

using hsmux::wire::EddsaParams;

constexpr CK_MECHANISM_TYPE kMechs[] = {
    CKM_RSA_PKCS, CKM_RSA_PKCS_PSS, CKM_SHA256_RSA_PKCS_PSS, CKM_RSA_PKCS_OAEP,
    CKM_DH_PKCS_DERIVE, CKM_ECDSA, CKM_ECDH1_DERIVE, CKM_ECDH1_COFACTOR_DERIVE, CKM_EDDSA,
    CKM_AES_ECB, CKM_AES_CBC, CKM_AES_CBC_PAD, CKM_AES_CTR, CKM_AES_GCM, CKM_AES_MAC_GENERAL,
    CKM_AES_CMAC_GENERAL, CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_PAD, CKM_AES_ECB_ENCRYPT_DATA,
    CKM_AES_CBC_ENCRYPT_DATA, CKM_DES3_CBC, CKM_DES3_ECB_ENCRYPT_DATA,
    CKM_CONCATENATE_BASE_AND_DATA, CKM_XOR_BASE_AND_DATA, CKM_SHA256_HMAC_GENERAL,
    CKM_SHA256, 0x80000001UL,
};

// The JDK's 40-byte CK_GCM_PARAMS (no ulIvBits).
struct JdkGcm {
  CK_BYTE_PTR pIv;
  CK_ULONG ulIvLen;
  CK_BYTE_PTR pAAD;
  CK_ULONG ulAADLen;
  CK_ULONG ulTagBits;
};

struct Arena {
  std::vector<std::unique_ptr<unsigned char[]>> blocks;
  unsigned char* Block(size_t n) {
    blocks.emplace_back(new unsigned char[n]);
    return blocks.back().get();
  }
};

// A caller buffer: a block of exactly `len` fuzzed bytes, or NULL with a
// (possibly non-zero) length.
void Buffer(FuzzedDataProvider& in, Arena& arena, CK_BYTE_PTR* ptr, CK_ULONG* len) {
  const bool null = in.ConsumeIntegralInRange<int>(0, 7) == 0;
  const size_t n = in.ConsumeIntegralInRange<size_t>(0, 40);
  *len = n;
  if (null) {
    *ptr = nullptr;
    return;
  }
  std::vector<uint8_t> b = in.ConsumeBytes<uint8_t>(n);
  b.resize(n);
  *ptr = arena.Block(n);
  if (n) std::memcpy(*ptr, b.data(), n);
}

// The parameter structure a caller of `type` would build, as bytes.
std::vector<uint8_t> Struct(FuzzedDataProvider& in, Arena& arena, CK_MECHANISM_TYPE type) {
  auto bytes = [](const auto& s) {
    const auto* p = reinterpret_cast<const uint8_t*>(&s);
    return std::vector<uint8_t>(p, p + sizeof(s));
  };
  switch (type) {
    case CKM_RSA_PKCS_OAEP: {
      CK_RSA_PKCS_OAEP_PARAMS s{};
      s.hashAlg = in.ConsumeIntegral<CK_ULONG>();
      s.mgf = in.ConsumeIntegral<CK_ULONG>();
      s.source = in.ConsumeIntegral<CK_ULONG>();
      Buffer(in, arena, reinterpret_cast<CK_BYTE_PTR*>(&s.pSourceData), &s.ulSourceDataLen);
      return bytes(s);
    }
    case CKM_AES_GCM: {
      if (in.ConsumeBool()) {
        JdkGcm s{};
        Buffer(in, arena, &s.pIv, &s.ulIvLen);
        Buffer(in, arena, &s.pAAD, &s.ulAADLen);
        s.ulTagBits = in.ConsumeIntegral<CK_ULONG>();
        return bytes(s);
      }
      CK_GCM_PARAMS s{};
      Buffer(in, arena, &s.pIv, &s.ulIvLen);
      Buffer(in, arena, &s.pAAD, &s.ulAADLen);
      s.ulIvBits = in.ConsumeIntegral<CK_ULONG>();
      s.ulTagBits = in.ConsumeIntegral<CK_ULONG>();
      return bytes(s);
    }
    case CKM_ECDH1_DERIVE:
    case CKM_ECDH1_COFACTOR_DERIVE: {
      CK_ECDH1_DERIVE_PARAMS s{};
      s.kdf = in.ConsumeIntegral<CK_ULONG>();
      Buffer(in, arena, &s.pSharedData, &s.ulSharedDataLen);
      Buffer(in, arena, &s.pPublicData, &s.ulPublicDataLen);
      return bytes(s);
    }
    case CKM_EDDSA: {
      EddsaParams s{};
      s.phFlag = in.ConsumeIntegral<CK_BBOOL>();
      Buffer(in, arena, &s.pContextData, &s.ulContextDataLen);
      return bytes(s);
    }
    case CKM_AES_CBC_ENCRYPT_DATA: {
      CK_AES_CBC_ENCRYPT_DATA_PARAMS s{};
      for (auto& b : s.iv) b = in.ConsumeIntegral<CK_BYTE>();
      Buffer(in, arena, &s.pData, &s.length);
      return bytes(s);
    }
    case CKM_AES_ECB_ENCRYPT_DATA:
    case CKM_DES3_ECB_ENCRYPT_DATA:
    case CKM_CONCATENATE_BASE_AND_DATA:
    case CKM_XOR_BASE_AND_DATA: {
      CK_KEY_DERIVATION_STRING_DATA s{};
      Buffer(in, arena, &s.pData, &s.ulLen);
      return bytes(s);
    }
    default:
      return {};  // no pointers: plain bytes
  }
}

bool HasPointers(CK_MECHANISM_TYPE type) {
  switch (type) {
    case CKM_RSA_PKCS_OAEP: case CKM_AES_GCM: case CKM_ECDH1_DERIVE:
    case CKM_ECDH1_COFACTOR_DERIVE: case CKM_EDDSA: case CKM_AES_CBC_ENCRYPT_DATA:
    case CKM_AES_ECB_ENCRYPT_DATA: case CKM_DES3_ECB_ENCRYPT_DATA:
    case CKM_CONCATENATE_BASE_AND_DATA: case CKM_XOR_BASE_AND_DATA:
      return true;
    default:
      return false;
  }
}

// Reads every byte a member would read from a decoded mechanism.
void TouchParameter(CK_MECHANISM* m) {
  static volatile uint8_t sink;
  auto touch = [](const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) sink = sink + b[i];
  };
  if (m->pParameter == nullptr) {
    if (m->ulParameterLen != 0) std::abort();
    return;
  }
  touch(m->pParameter, m->ulParameterLen);
  switch (m->mechanism) {
    case CKM_AES_GCM: {
      auto* s = static_cast<CK_GCM_PARAMS*>(m->pParameter);
      if (s->pIv) touch(s->pIv, s->ulIvLen);
      if (s->pAAD) touch(s->pAAD, s->ulAADLen);
      break;
    }
    case CKM_RSA_PKCS_OAEP: {
      auto* s = static_cast<CK_RSA_PKCS_OAEP_PARAMS*>(m->pParameter);
      if (s->pSourceData) touch(s->pSourceData, s->ulSourceDataLen);
      break;
    }
    case CKM_ECDH1_DERIVE:
    case CKM_ECDH1_COFACTOR_DERIVE: {
      auto* s = static_cast<CK_ECDH1_DERIVE_PARAMS*>(m->pParameter);
      if (s->pSharedData) touch(s->pSharedData, s->ulSharedDataLen);
      if (s->pPublicData) touch(s->pPublicData, s->ulPublicDataLen);
      break;
    }
    case CKM_EDDSA: {
      auto* s = static_cast<EddsaParams*>(m->pParameter);
      if (s->pContextData) touch(s->pContextData, s->ulContextDataLen);
      break;
    }
    case CKM_AES_CBC_ENCRYPT_DATA: {
      auto* s = static_cast<CK_AES_CBC_ENCRYPT_DATA_PARAMS*>(m->pParameter);
      if (s->pData) touch(s->pData, s->length);
      break;
    }
    case CKM_AES_ECB_ENCRYPT_DATA:
    case CKM_DES3_ECB_ENCRYPT_DATA:
    case CKM_CONCATENATE_BASE_AND_DATA:
    case CKM_XOR_BASE_AND_DATA: {
      auto* s = static_cast<CK_KEY_DERIVATION_STRING_DATA*>(m->pParameter);
      if (s->pData) touch(s->pData, s->ulLen);
      break;
    }
    default:
      break;
  }
}

void Fail(const char* what, const hsmux::v1::Mechanism& m, const absl::Status& s) {
  std::fprintf(stderr, "%s: %s\n%s\n", what, s.ToString().c_str(), m.ShortDebugString().c_str());
  std::abort();
}

void DecodeWire(const uint8_t* data, size_t size) {
  hsmux::v1::Mechanism wire;
  if (!wire.ParseFromArray(data, static_cast<int>(size))) return;
  auto native = hsmux::wire::NativeMechanism::Decode(wire);
  if (!native.ok()) return;
  TouchParameter(native->get());
  // Moves must rebind the internal pointers.
  hsmux::wire::NativeMechanism moved(std::move(*native));
  hsmux::wire::NativeMechanism again;
  again = std::move(moved);
  TouchParameter(again.get());
  // What the agent hands a member is a mechanism a caller could have passed.
  hsmux::v1::Mechanism encoded;
  absl::Status s = hsmux::wire::EncodeMechanism(again.get(), &encoded);
  if (!s.ok()) Fail("decoded mechanism does not encode", wire, s);
  auto twice = hsmux::wire::NativeMechanism::Decode(encoded);
  if (!twice.ok()) Fail("re-encoded mechanism does not decode", encoded, twice.status());
  hsmux::v1::Mechanism output;
  again.EncodeOutput(&output);
  hsmux::wire::ApplyMechanismOutput(output, twice->get());
  (void)hsmux::wire::MechanismName(wire.type());
}

void EncodeNative(FuzzedDataProvider& in) {
  Arena arena;
  CK_MECHANISM mech{};
  mech.mechanism = in.ConsumeBool() ? in.PickValueInArray(kMechs) : in.ConsumeIntegral<CK_ULONG>();
  std::vector<uint8_t> param;
  const uint8_t shape = in.ConsumeIntegralInRange<uint8_t>(0, 3);
  if (HasPointers(mech.mechanism) && shape != 0) {
    param = Struct(in, arena, mech.mechanism);
    // Sometimes a length off the structure's: must be refused unread. (Not
    // by 8: a 48-byte CK_GCM_PARAMS cut to 40 bytes is the JDK's layout, and
    // the codec rightly reads it as one.)
    if (shape == 3 && !param.empty()) {
      if (in.ConsumeBool()) {
        param.resize(param.size() + 4);
      } else {
        param.resize(param.size() - 4);
      }
    }
  } else if (!HasPointers(mech.mechanism)) {
    param = in.ConsumeBytes<uint8_t>(in.ConsumeIntegralInRange<size_t>(0, 64));
  }
  if (in.ConsumeIntegralInRange<int>(0, 15) == 0) {
    mech.pParameter = nullptr;
    mech.ulParameterLen = param.size();
  } else {
    unsigned char* block = arena.Block(param.size());
    if (!param.empty()) std::memcpy(block, param.data(), param.size());
    mech.pParameter = block;
    mech.ulParameterLen = param.size();
  }
  hsmux::v1::Mechanism wire;
  if (!hsmux::wire::EncodeMechanism(in.ConsumeIntegralInRange<int>(0, 31) == 0 ? nullptr : &mech,
                                    &wire)
           .ok()) {
    return;
  }
  auto native = hsmux::wire::NativeMechanism::Decode(wire);
  if (!native.ok()) Fail("encoded mechanism does not decode", wire, native.status());
  TouchParameter(native->get());
  hsmux::v1::Mechanism output;
  native->EncodeOutput(&output);
  // A token that changed the IV: written back only into a same-length buffer.
  if (output.has_gcm() && in.ConsumeBool()) {
    output.mutable_gcm()->set_iv(in.ConsumeBytesAsString(in.ConsumeIntegralInRange<size_t>(0, 40)));
  }
  hsmux::wire::ApplyMechanismOutput(output, &mech);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  if (data[0] % 2 == 0) {
    DecodeWire(data + 1, size - 1);
  } else {
    FuzzedDataProvider in(data + 1, size - 1);
    EncodeNative(in);
  }
  return 0;
}
