// libFuzzer target: proto/wire/attribute_codec (both directions).
//
// The first input byte picks a mode; the rest is either a wire message
// (protobuf bytes, as a hostile peer sends it) or a recipe for native C
// templates (as a hostile or careless Cryptoki caller passes them). Native
// buffers are heap blocks of exactly the length the attribute claims, so
// ASan sees any read or write past what the caller gave.
//
//   0: AttributeList -> NativeTemplate::Decode -> EncodeTemplate (must give
//      the same list back) and EncodeNativeValue of every attribute
//   1: native template -> EncodeTemplate, EncodeQueries, EncodeNativeValue
//   2: native template + AttributeAnswerList -> ApplyAnswers
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include <fuzzer/FuzzedDataProvider.h>
#include <google/protobuf/util/message_differencer.h>

#include "wire/attribute_codec.h"
#include "wire/attribute_kinds.h"

namespace {

using hsmux::wire::AttributeKind;
using hsmux::wire::KindOf;

// Attribute types worth hitting: one or more of every kind.
constexpr CK_ATTRIBUTE_TYPE kTypes[] = {
    CKA_CLASS,          CKA_TOKEN,          CKA_PRIVATE,        CKA_LABEL,
    CKA_VALUE,          CKA_KEY_TYPE,       CKA_ID,             CKA_START_DATE,
    CKA_END_DATE,       CKA_MODULUS_BITS,   CKA_VALUE_LEN,      CKA_EXTRACTABLE,
    CKA_SENSITIVE,      CKA_EC_PARAMS,      CKA_WRAP_TEMPLATE,  CKA_UNWRAP_TEMPLATE,
    CKA_DERIVE_TEMPLATE, CKA_ALLOWED_MECHANISMS, CKA_VENDOR_DEFINED, 0xffffffffUL,
};

// Owns every buffer a native template points into.
struct Arena {
  std::vector<std::unique_ptr<unsigned char[]>> blocks;
  void* Block(size_t n) {
    // new[0] is a valid unique pointer, and ASan flags any access to it.
    blocks.emplace_back(new unsigned char[n]);
    return blocks.back().get();
  }
};

// Builds `count` native attributes from the input. Template-kind attributes
// get a real CK_ATTRIBUTE array (a caller must pass one there); everything
// else gets a block of fuzzed length and content, or NULL.
CK_ATTRIBUTE* BuildTemplate(FuzzedDataProvider& in, Arena& arena, size_t count, int depth) {
  auto* attrs = static_cast<CK_ATTRIBUTE*>(arena.Block(count * sizeof(CK_ATTRIBUTE)));
  for (size_t i = 0; i < count; ++i) {
    CK_ATTRIBUTE& a = attrs[i];
    a.type = in.ConsumeBool() ? in.PickValueInArray(kTypes) : in.ConsumeIntegral<CK_ULONG>();
    const uint8_t shape = in.ConsumeIntegralInRange<uint8_t>(0, 7);
    if (shape == 0) {  // NULL, with a fuzzed (often non-zero) length
      a.pValue = nullptr;
      a.ulValueLen = in.ConsumeBool() ? 0 : in.ConsumeIntegralInRange<CK_ULONG>(0, 64);
      continue;
    }
    if (KindOf(a.type) == AttributeKind::kTemplate && depth < 6 && shape > 2) {
      const size_t n = in.ConsumeIntegralInRange<size_t>(0, 4);
      a.pValue = BuildTemplate(in, arena, n, depth + 1);
      a.ulValueLen = n * sizeof(CK_ATTRIBUTE);
      continue;
    }
    if (KindOf(a.type) == AttributeKind::kTemplate) {
      // A length that is not a whole array: must be refused before any read.
      const size_t n = in.ConsumeIntegralInRange<size_t>(1, sizeof(CK_ATTRIBUTE) - 1);
      a.pValue = arena.Block(n);
      std::memset(a.pValue, 0, n);
      a.ulValueLen = n;
      continue;
    }
    const size_t n = shape == 1 ? sizeof(CK_ULONG) : in.ConsumeIntegralInRange<size_t>(0, 80);
    std::vector<uint8_t> bytes = in.ConsumeBytes<uint8_t>(n);
    bytes.resize(n);
    a.pValue = arena.Block(n);
    if (n) std::memcpy(a.pValue, bytes.data(), n);
    a.ulValueLen = n;
  }
  return attrs;
}

void DecodeRoundTrip(const uint8_t* data, size_t size) {
  hsmux::v1::AttributeList list;
  if (!list.ParseFromArray(data, static_cast<int>(size))) return;
  list.DiscardUnknownFields();  // not part of what the codec sees or keeps
  auto native = hsmux::wire::NativeTemplate::Decode(list);
  if (!native.ok()) return;
  // What the agent passes to a member must read back as what came in.
  hsmux::v1::AttributeList again;
  absl::Status s = hsmux::wire::EncodeTemplate(native->data(), native->size(), &again);
  if (!s.ok() || !google::protobuf::util::MessageDifferencer::Equals(list, again)) {
    std::fprintf(stderr, "round trip differs: %s\nin:  %s\nout: %s\n", s.ToString().c_str(),
                 list.ShortDebugString().c_str(), again.ShortDebugString().c_str());
    std::abort();
  }
  for (CK_ULONG i = 0; i < native->size(); ++i) {
    hsmux::v1::Attribute out;
    (void)hsmux::wire::EncodeNativeValue(native->data()[i], &out);
  }
  // Moving keeps the pointers valid (std::deque storage).
  hsmux::wire::NativeTemplate moved = std::move(*native);
  hsmux::v1::AttributeList third;
  if (!hsmux::wire::EncodeTemplate(moved.data(), moved.size(), &third).ok()) std::abort();
}

void EncodeNative(FuzzedDataProvider& in) {
  Arena arena;
  const size_t count = in.ConsumeIntegralInRange<size_t>(0, 8);
  CK_ATTRIBUTE* attrs = in.ConsumeBool() || count > 0 ? BuildTemplate(in, arena, count, 0)
                                                      : nullptr;
  hsmux::v1::AttributeList list;
  (void)hsmux::wire::EncodeTemplate(attrs, count, &list);
  hsmux::v1::AttributeQueryList queries;
  (void)hsmux::wire::EncodeQueries(attrs, count, &queries);
  for (size_t i = 0; i < count; ++i) {
    hsmux::v1::Attribute out;
    (void)hsmux::wire::EncodeNativeValue(attrs[i], &out);
  }
}

void Apply(FuzzedDataProvider& in) {
  Arena arena;
  const size_t count = in.ConsumeIntegralInRange<size_t>(0, 6);
  CK_ATTRIBUTE* attrs = BuildTemplate(in, arena, count, 0);
  // A NULL pValue with a length is a length query here (the module passes
  // the caller's template as is), so that is kept.
  std::vector<uint8_t> wire = in.ConsumeRemainingBytes<uint8_t>();
  hsmux::v1::AttributeAnswerList answers;
  if (!answers.ParseFromArray(wire.data(), static_cast<int>(wire.size()))) return;
  (void)hsmux::wire::ApplyAnswers(answers, attrs, count);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  switch (data[0] % 3) {
    case 0:
      DecodeRoundTrip(data + 1, size - 1);
      break;
    case 1: {
      FuzzedDataProvider in(data + 1, size - 1);
      EncodeNative(in);
      break;
    }
    case 2: {
      FuzzedDataProvider in(data + 1, size - 1);
      Apply(in);
      break;
    }
  }
  return 0;
}
