// Attribute templates between native CK_ATTRIBUTE arrays and the wire.
//
// Values are encoded by attribute type (attribute_kinds.h): CK_ULONG-valued
// attributes travel as 64-bit integers, CK_BBOOL as bool, attribute arrays
// (CKA_WRAP_TEMPLATE, CKA_UNWRAP_TEMPLATE, CKA_DERIVE_TEMPLATE) as nested
// templates, CKA_ALLOWED_MECHANISMS as a list; everything else as bytes.
// Order is always kept.
#pragma once

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hsmux/v1/cryptoki.pb.h"
#include "wire/cryptoki.h"

namespace hsmux::wire {

// Module side, input templates (C_CreateObject, C_FindObjectsInit, ...).
// Errors: CKR_ARGUMENTS_BAD (NULL array with count > 0, NULL pValue with a
// non-zero length), CKR_ATTRIBUTE_VALUE_INVALID (a typed attribute whose
// length does not fit its type, e.g. CKA_CLASS of 3 bytes).
absl::Status EncodeTemplate(const CK_ATTRIBUTE* attrs, CK_ULONG count,
                            v1::AttributeList* out);

// Agent side: a native template that owns the storage its pointers point into.
class NativeTemplate {
 public:
  // Errors: CKR_TEMPLATE_INCONSISTENT for malformed wire input (e.g. a nested
  // template inside a non-array attribute), CKR_ARGUMENTS_BAD for too deep
  // nesting (more than 4 levels).
  static absl::StatusOr<NativeTemplate> Decode(const v1::AttributeList& in);

  // Never NULL, even when empty: SoftHSM refuses a NULL template with a zero
  // count (C_CopyObject, C_CreateObject answer CKR_ARGUMENTS_BAD), which the
  // caller's valid empty template must not turn into.
  CK_ATTRIBUTE* data() { return attrs_.empty() ? &empty_ : attrs_.data(); }
  CK_ULONG size() const { return static_cast<CK_ULONG>(attrs_.size()); }

  NativeTemplate() = default;
  NativeTemplate(NativeTemplate&&) = default;
  NativeTemplate& operator=(NativeTemplate&&) = default;

 private:
  std::vector<CK_ATTRIBUTE> attrs_;
  CK_ATTRIBUTE empty_{};  // what data() points to when there are no attributes
  // Owned value storage; std::deque keeps element addresses stable.
  std::deque<std::string> bytes_;
  std::deque<CK_ULONG> ulongs_;
  std::deque<CK_BBOOL> bools_;
  std::deque<std::vector<CK_MECHANISM_TYPE>> mechs_;
  std::deque<NativeTemplate> nested_;
};

// Agent side: turns the native value of one attribute (as a member returned
// it: pValue/ulValueLen) into its wire form. Errors: CKR_GENERAL_ERROR for a
// member value whose length does not fit the type.
absl::Status EncodeNativeValue(const CK_ATTRIBUTE& attr, v1::Attribute* out);

// Module side, C_GetAttributeValue: builds the queries from the caller's
// template, and writes the agent's answers back into it in the caller's own
// units, applying the spec's rules for each attribute (ulValueLen =
// CK_UNAVAILABLE_INFORMATION for sensitive, invalid or too small ones).
// Returns the CK_RV the call must give: CKR_OK, CKR_ATTRIBUTE_SENSITIVE,
// CKR_ATTRIBUTE_TYPE_INVALID or CKR_BUFFER_TOO_SMALL (if several apply, the
// first in that order), or CKR_GENERAL_ERROR for an answer that does not
// match the query.
absl::Status EncodeQueries(const CK_ATTRIBUTE* attrs, CK_ULONG count,
                           v1::AttributeQueryList* out);
CK_RV ApplyAnswers(const v1::AttributeAnswerList& answers, CK_ATTRIBUTE* attrs,
                   CK_ULONG count);

}  // namespace hsmux::wire
