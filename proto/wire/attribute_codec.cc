#include "wire/attribute_codec.h"

#include <cstring>
#include <functional>
#include <limits>
#include <utility>

#include "wire/attribute_kinds.h"
#include "wire/errors.h"

namespace hsmux::wire {
namespace {

// Nested templates are one level deep in practice (a wrap template inside a
// key template); a bound keeps hostile input from recursing without end.
constexpr int kMaxDepth = 4;

bool FitsUlong(uint64_t v) { return v <= std::numeric_limits<CK_ULONG>::max(); }

CK_ULONG ReadUlong(const void* p) {
  CK_ULONG v;
  std::memcpy(&v, p, sizeof(v));  // the caller's buffer need not be aligned
  return v;
}

absl::Status EncodeTemplateAt(const CK_ATTRIBUTE* attrs, CK_ULONG count, int depth,
                              v1::AttributeList* out);

absl::Status EncodeAttribute(const CK_ATTRIBUTE& a, int depth, v1::Attribute* out) {
  if (a.pValue == nullptr && a.ulValueLen != 0) {
    return CkError(CKR_ARGUMENTS_BAD, "attribute value is NULL with a non-zero length");
  }
  out->set_type(a.type);
  switch (KindOf(a.type)) {
    case AttributeKind::kUlong:
      if (a.ulValueLen != sizeof(CK_ULONG)) {
        return CkError(CKR_ATTRIBUTE_VALUE_INVALID,
                       AttributeName(a.type) + " needs sizeof(CK_ULONG) bytes");
      }
      out->set_ulong(ReadUlong(a.pValue));
      return absl::OkStatus();
    case AttributeKind::kBool:
      if (a.ulValueLen != sizeof(CK_BBOOL)) {
        return CkError(CKR_ATTRIBUTE_VALUE_INVALID, AttributeName(a.type) + " needs 1 byte");
      }
      out->set_boolean(*static_cast<const CK_BBOOL*>(a.pValue) != CK_FALSE);
      return absl::OkStatus();
    case AttributeKind::kTemplate: {
      if (a.ulValueLen % sizeof(CK_ATTRIBUTE) != 0) {
        return CkError(CKR_ATTRIBUTE_VALUE_INVALID,
                       AttributeName(a.type) + " is not an array of CK_ATTRIBUTE");
      }
      if (depth + 1 >= kMaxDepth) {
        return CkError(CKR_ATTRIBUTE_VALUE_INVALID, "attribute templates nested too deep");
      }
      return EncodeTemplateAt(static_cast<const CK_ATTRIBUTE*>(a.pValue),
                              a.ulValueLen / sizeof(CK_ATTRIBUTE), depth + 1,
                              out->mutable_nested());
    }
    case AttributeKind::kMechanisms: {
      if (a.ulValueLen % sizeof(CK_MECHANISM_TYPE) != 0) {
        return CkError(CKR_ATTRIBUTE_VALUE_INVALID,
                       AttributeName(a.type) + " is not an array of CK_MECHANISM_TYPE");
      }
      v1::UlongList* list = out->mutable_mechanisms();
      const auto* bytes = static_cast<const unsigned char*>(a.pValue);
      for (CK_ULONG off = 0; off < a.ulValueLen; off += sizeof(CK_MECHANISM_TYPE)) {
        list->add_values(ReadUlong(bytes + off));
      }
      return absl::OkStatus();
    }
    case AttributeKind::kBytes:
    case AttributeKind::kDate:
      // Dates are not length-checked: tokens accept an empty date, and the
      // token itself judges everything else.
      out->set_bytes(a.pValue == nullptr
                         ? std::string()
                         : std::string(static_cast<const char*>(a.pValue), a.ulValueLen));
      return absl::OkStatus();
  }
  return CkError(CKR_GENERAL_ERROR, "unreachable attribute kind");
}

absl::Status EncodeTemplateAt(const CK_ATTRIBUTE* attrs, CK_ULONG count, int depth,
                              v1::AttributeList* out) {
  if (attrs == nullptr && count > 0) {
    return CkError(CKR_ARGUMENTS_BAD, "template is NULL with a non-zero count");
  }
  out->mutable_attributes()->Reserve(static_cast<int>(count));
  for (CK_ULONG i = 0; i < count; ++i) {
    HSMUX_RETURN_IF_ERROR(EncodeAttribute(attrs[i], depth, out->add_attributes()));
  }
  return absl::OkStatus();
}

// The value a wire attribute needs in C, in bytes.
CK_ULONG NativeLength(const v1::Attribute& v) {
  switch (v.value_case()) {
    case v1::Attribute::kUlong:
      return sizeof(CK_ULONG);
    case v1::Attribute::kBoolean:
      return sizeof(CK_BBOOL);
    case v1::Attribute::kBytes:
      return static_cast<CK_ULONG>(v.bytes().size());
    case v1::Attribute::kNested:
      return static_cast<CK_ULONG>(v.nested().attributes_size()) * sizeof(CK_ATTRIBUTE);
    case v1::Attribute::kMechanisms:
      return static_cast<CK_ULONG>(v.mechanisms().values_size()) * sizeof(CK_MECHANISM_TYPE);
    case v1::Attribute::VALUE_NOT_SET:
      break;
  }
  return 0;
}

// True if the wire value's representation is the one the type's kind needs.
bool ValueMatchesKind(const v1::Attribute& v) {
  switch (KindOf(v.type())) {
    case AttributeKind::kUlong:
      return v.value_case() == v1::Attribute::kUlong && FitsUlong(v.ulong());
    case AttributeKind::kBool:
      return v.value_case() == v1::Attribute::kBoolean;
    case AttributeKind::kTemplate:
      return v.value_case() == v1::Attribute::kNested;
    case AttributeKind::kMechanisms:
      if (v.value_case() != v1::Attribute::kMechanisms) return false;
      for (uint64_t m : v.mechanisms().values()) {
        if (!FitsUlong(m)) return false;
      }
      return true;
    case AttributeKind::kBytes:
    case AttributeKind::kDate:
      return v.value_case() == v1::Attribute::kBytes;
  }
  return false;
}

// Checks an answered value, recursively, before anything is written into the
// caller's memory.
bool ValidAnswerValue(const v1::Attribute& v, int depth) {
  if (!ValueMatchesKind(v)) return false;
  if (v.value_case() == v1::Attribute::kNested) {
    if (depth + 1 >= kMaxDepth) return false;
    for (const auto& e : v.nested().attributes()) {
      if (!ValidAnswerValue(e, depth + 1)) return false;
    }
  }
  return true;
}

// Writes a validated value into a caller's attribute whose pValue is not NULL
// and whose ulValueLen is at least NativeLength(v). Returns false if some
// element of a nested template did not fit (CKR_BUFFER_TOO_SMALL).
bool WriteValue(const v1::Attribute& v, CK_ATTRIBUTE* dst);

// Fills one caller attribute from a value: a length query (pValue NULL), a
// value, or CK_UNAVAILABLE_INFORMATION when it does not fit. Returns false if
// something did not fit.
bool FillAttribute(const v1::Attribute& v, CK_ATTRIBUTE* dst) {
  CK_ULONG needed = NativeLength(v);
  if (dst->pValue == nullptr) {
    dst->ulValueLen = needed;
    return true;
  }
  if (dst->ulValueLen < needed) {
    dst->ulValueLen = CK_UNAVAILABLE_INFORMATION;
    return false;
  }
  bool fit = WriteValue(v, dst);
  dst->ulValueLen = needed;
  return fit;
}

bool WriteValue(const v1::Attribute& v, CK_ATTRIBUTE* dst) {
  switch (v.value_case()) {
    case v1::Attribute::kUlong: {
      CK_ULONG u = static_cast<CK_ULONG>(v.ulong());
      std::memcpy(dst->pValue, &u, sizeof(u));
      return true;
    }
    case v1::Attribute::kBoolean: {
      CK_BBOOL b = v.boolean() ? CK_TRUE : CK_FALSE;
      std::memcpy(dst->pValue, &b, sizeof(b));
      return true;
    }
    case v1::Attribute::kBytes:
      if (!v.bytes().empty()) std::memcpy(dst->pValue, v.bytes().data(), v.bytes().size());
      return true;
    case v1::Attribute::kMechanisms: {
      auto* out = static_cast<unsigned char*>(dst->pValue);
      for (uint64_t m : v.mechanisms().values()) {
        CK_MECHANISM_TYPE t = static_cast<CK_MECHANISM_TYPE>(m);
        std::memcpy(out, &t, sizeof(t));
        out += sizeof(t);
      }
      return true;
    }
    case v1::Attribute::kNested: {
      // The caller's array: each element names its own buffer (or NULL for a
      // length query), as for a top-level C_GetAttributeValue.
      auto* elems = static_cast<CK_ATTRIBUTE*>(dst->pValue);
      bool fit = true;
      for (int i = 0; i < v.nested().attributes_size(); ++i) {
        const v1::Attribute& e = v.nested().attributes(i);
        elems[i].type = static_cast<CK_ATTRIBUTE_TYPE>(e.type());
        fit = FillAttribute(e, &elems[i]) && fit;
      }
      return fit;
    }
    case v1::Attribute::VALUE_NOT_SET:
      break;
  }
  return true;
}

}  // namespace

absl::Status EncodeTemplate(const CK_ATTRIBUTE* attrs, CK_ULONG count, v1::AttributeList* out) {
  return EncodeTemplateAt(attrs, count, 0, out);
}

absl::StatusOr<NativeTemplate> NativeTemplate::Decode(const v1::AttributeList& in) {
  // A member lambda, so that every level can use the private storage.
  std::function<absl::StatusOr<NativeTemplate>(const v1::AttributeList&, int)> decode =
      [&decode](const v1::AttributeList& list, int depth) -> absl::StatusOr<NativeTemplate> {
    NativeTemplate t;
    t.attrs_.reserve(list.attributes_size());
    for (const v1::Attribute& a : list.attributes()) {
      if (!FitsUlong(a.type())) {
        return CkError(CKR_TEMPLATE_INCONSISTENT, "attribute type out of range");
      }
      if (a.value_case() == v1::Attribute::VALUE_NOT_SET || !ValueMatchesKind(a)) {
        return CkError(CKR_TEMPLATE_INCONSISTENT,
                       AttributeName(a.type()) + ": value does not match its type");
      }
      CK_ATTRIBUTE native{static_cast<CK_ATTRIBUTE_TYPE>(a.type()), nullptr, 0};
      switch (a.value_case()) {
        case v1::Attribute::kUlong:
          t.ulongs_.push_back(static_cast<CK_ULONG>(a.ulong()));
          native.pValue = &t.ulongs_.back();
          native.ulValueLen = sizeof(CK_ULONG);
          break;
        case v1::Attribute::kBoolean:
          t.bools_.push_back(a.boolean() ? CK_TRUE : CK_FALSE);
          native.pValue = &t.bools_.back();
          native.ulValueLen = sizeof(CK_BBOOL);
          break;
        case v1::Attribute::kBytes:
          // Never NULL, even when empty: some tokens reject a NULL pValue.
          t.bytes_.push_back(a.bytes());
          native.pValue = t.bytes_.back().data();
          native.ulValueLen = static_cast<CK_ULONG>(a.bytes().size());
          break;
        case v1::Attribute::kMechanisms: {
          std::vector<CK_MECHANISM_TYPE> m(a.mechanisms().values().begin(),
                                           a.mechanisms().values().end());
          t.mechs_.push_back(std::move(m));
          native.pValue = t.mechs_.back().empty() ? nullptr : t.mechs_.back().data();
          native.ulValueLen =
              static_cast<CK_ULONG>(t.mechs_.back().size() * sizeof(CK_MECHANISM_TYPE));
          break;
        }
        case v1::Attribute::kNested: {
          if (depth + 1 >= kMaxDepth) {
            return CkError(CKR_ARGUMENTS_BAD, "attribute templates nested too deep");
          }
          HSMUX_ASSIGN_OR_RETURN(NativeTemplate nested, decode(a.nested(), depth + 1));
          t.nested_.push_back(std::move(nested));
          native.pValue = t.nested_.back().data();
          native.ulValueLen = t.nested_.back().size() * sizeof(CK_ATTRIBUTE);
          break;
        }
        case v1::Attribute::VALUE_NOT_SET:
          break;
      }
      t.attrs_.push_back(native);
    }
    return t;
  };
  return decode(in, 0);
}

namespace {

absl::Status EncodeNativeValueAt(const CK_ATTRIBUTE& attr, int depth, v1::Attribute* out) {
  if (attr.ulValueLen == CK_UNAVAILABLE_INFORMATION ||
      (attr.pValue == nullptr && attr.ulValueLen != 0)) {
    return CkError(CKR_GENERAL_ERROR, AttributeName(attr.type) + ": member gave no value");
  }
  out->set_type(attr.type);
  switch (KindOf(attr.type)) {
    case AttributeKind::kUlong:
      if (attr.ulValueLen != sizeof(CK_ULONG)) break;
      out->set_ulong(ReadUlong(attr.pValue));
      return absl::OkStatus();
    case AttributeKind::kBool:
      if (attr.ulValueLen != sizeof(CK_BBOOL)) break;
      out->set_boolean(*static_cast<const CK_BBOOL*>(attr.pValue) != CK_FALSE);
      return absl::OkStatus();
    case AttributeKind::kTemplate: {
      if (attr.ulValueLen % sizeof(CK_ATTRIBUTE) != 0 || depth + 1 >= kMaxDepth) break;
      const auto* elems = static_cast<const CK_ATTRIBUTE*>(attr.pValue);
      v1::AttributeList* list = out->mutable_nested();
      for (CK_ULONG i = 0; i < attr.ulValueLen / sizeof(CK_ATTRIBUTE); ++i) {
        HSMUX_RETURN_IF_ERROR(EncodeNativeValueAt(elems[i], depth + 1, list->add_attributes()));
      }
      return absl::OkStatus();
    }
    case AttributeKind::kMechanisms: {
      if (attr.ulValueLen % sizeof(CK_MECHANISM_TYPE) != 0) break;
      v1::UlongList* list = out->mutable_mechanisms();
      const auto* bytes = static_cast<const unsigned char*>(attr.pValue);
      for (CK_ULONG off = 0; off < attr.ulValueLen; off += sizeof(CK_MECHANISM_TYPE)) {
        list->add_values(ReadUlong(bytes + off));
      }
      return absl::OkStatus();
    }
    case AttributeKind::kBytes:
    case AttributeKind::kDate:
      out->set_bytes(attr.pValue == nullptr
                         ? std::string()
                         : std::string(static_cast<const char*>(attr.pValue), attr.ulValueLen));
      return absl::OkStatus();
  }
  return CkError(CKR_GENERAL_ERROR,
                 AttributeName(attr.type) + ": member value does not fit its type");
}

}  // namespace

absl::Status EncodeNativeValue(const CK_ATTRIBUTE& attr, v1::Attribute* out) {
  return EncodeNativeValueAt(attr, 0, out);
}

absl::Status EncodeQueries(const CK_ATTRIBUTE* attrs, CK_ULONG count, v1::AttributeQueryList* out) {
  if (attrs == nullptr && count > 0) {
    return CkError(CKR_ARGUMENTS_BAD, "template is NULL with a non-zero count");
  }
  out->mutable_queries()->Reserve(static_cast<int>(count));
  for (CK_ULONG i = 0; i < count; ++i) {
    v1::AttributeQuery* q = out->add_queries();
    q->set_type(attrs[i].type);
    q->set_want_value(attrs[i].pValue != nullptr);
    if (attrs[i].pValue == nullptr) continue;
    // Arrays: how many elements the caller has room for. Other kinds: the
    // byte capacity, only a hint (the module does the real check).
    switch (KindOf(attrs[i].type)) {
      case AttributeKind::kTemplate:
        q->set_capacity(attrs[i].ulValueLen / sizeof(CK_ATTRIBUTE));
        break;
      case AttributeKind::kMechanisms:
        q->set_capacity(attrs[i].ulValueLen / sizeof(CK_MECHANISM_TYPE));
        break;
      default:
        q->set_capacity(attrs[i].ulValueLen);
        break;
    }
  }
  return absl::OkStatus();
}

CK_RV ApplyAnswers(const v1::AttributeAnswerList& answers, CK_ATTRIBUTE* attrs, CK_ULONG count) {
  if (attrs == nullptr && count > 0) return CKR_ARGUMENTS_BAD;
  if (static_cast<uint64_t>(answers.answers_size()) != count) return CKR_GENERAL_ERROR;
  // First pass: check the whole answer, so that a malformed one leaves the
  // caller's template untouched.
  for (CK_ULONG i = 0; i < count; ++i) {
    const v1::AttributeAnswer& a = answers.answers(static_cast<int>(i));
    switch (a.status()) {
      case v1::AttributeAnswer::SENSITIVE:
      case v1::AttributeAnswer::TYPE_INVALID:
        continue;
      case v1::AttributeAnswer::OK:
        break;
      default:
        return CKR_GENERAL_ERROR;
    }
    if (a.has_value()) {
      if (a.value().type() != attrs[i].type || !ValidAnswerValue(a.value(), 0)) {
        return CKR_GENERAL_ERROR;
      }
    } else if (attrs[i].pValue != nullptr) {
      return CKR_GENERAL_ERROR;  // a value was asked for and not given
    }
  }

  bool sensitive = false, invalid = false, too_small = false;
  for (CK_ULONG i = 0; i < count; ++i) {
    const v1::AttributeAnswer& a = answers.answers(static_cast<int>(i));
    CK_ATTRIBUTE* dst = &attrs[i];
    if (a.status() == v1::AttributeAnswer::SENSITIVE) {
      dst->ulValueLen = CK_UNAVAILABLE_INFORMATION;
      sensitive = true;
      continue;
    }
    if (a.status() == v1::AttributeAnswer::TYPE_INVALID) {
      dst->ulValueLen = CK_UNAVAILABLE_INFORMATION;
      invalid = true;
      continue;
    }
    if (a.has_value()) {
      if (!FillAttribute(a.value(), dst)) too_small = true;
      continue;
    }
    // A length query answered by length only: convert elements to bytes.
    switch (KindOf(dst->type)) {
      case AttributeKind::kUlong:
        dst->ulValueLen = sizeof(CK_ULONG);
        break;
      case AttributeKind::kBool:
        dst->ulValueLen = sizeof(CK_BBOOL);
        break;
      case AttributeKind::kTemplate:
        dst->ulValueLen = static_cast<CK_ULONG>(a.length() * sizeof(CK_ATTRIBUTE));
        break;
      case AttributeKind::kMechanisms:
        dst->ulValueLen = static_cast<CK_ULONG>(a.length() * sizeof(CK_MECHANISM_TYPE));
        break;
      case AttributeKind::kBytes:
      case AttributeKind::kDate:
        dst->ulValueLen = static_cast<CK_ULONG>(a.length());
        break;
    }
  }
  if (sensitive) return CKR_ATTRIBUTE_SENSITIVE;
  if (invalid) return CKR_ATTRIBUTE_TYPE_INVALID;
  if (too_small) return CKR_BUFFER_TOO_SMALL;
  return CKR_OK;
}

}  // namespace hsmux::wire
