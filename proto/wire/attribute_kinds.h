// How each attribute type's value is laid out in C, which decides how it
// travels on the wire (see hsmux.v1.Attribute).
#pragma once

#include <string>

#include "wire/cryptoki.h"

namespace hsmux::wire {

enum class AttributeKind {
  kBytes,       // byte strings, UTF-8 strings, big integers, DER; also unknown types
  kUlong,       // CK_ULONG and its aliases (CK_OBJECT_CLASS, CK_KEY_TYPE, ...)
  kBool,        // CK_BBOOL
  kDate,        // CK_DATE (8 bytes, or empty); travels as bytes
  kTemplate,    // an array of CK_ATTRIBUTE (CKA_WRAP/UNWRAP/DERIVE_TEMPLATE)
  kMechanisms,  // an array of CK_MECHANISM_TYPE (CKA_ALLOWED_MECHANISMS)
};

// The kind of a PKCS#11 2.40 attribute. Unknown and vendor-defined types are
// kBytes, because their layout cannot be known: they travel untouched.
AttributeKind KindOf(CK_ATTRIBUTE_TYPE type);

// "CKA_CLASS" etc., or "CKA_0x...", for log lines.
std::string AttributeName(CK_ATTRIBUTE_TYPE type);

}  // namespace hsmux::wire
