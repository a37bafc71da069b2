#include "wire/attribute_kinds.h"

#include <cstdio>

namespace hsmux::wire {
namespace {

// Every attribute of PKCS#11 2.40 (Base Specification §4 and Current
// Mechanisms), with the C type of its value. Types listed here as kBytes
// could be left out (unknown types are bytes); they are listed for names.
// clang-format off
#define HSMUX_ATTRIBUTES(X)                                  \
  X(CKA_CLASS, kUlong)                                       \
  X(CKA_TOKEN, kBool)                                        \
  X(CKA_PRIVATE, kBool)                                      \
  X(CKA_LABEL, kBytes)                                       \
  X(CKA_APPLICATION, kBytes)                                 \
  X(CKA_VALUE, kBytes)                                       \
  X(CKA_OBJECT_ID, kBytes)                                   \
  X(CKA_CERTIFICATE_TYPE, kUlong)                            \
  X(CKA_ISSUER, kBytes)                                      \
  X(CKA_SERIAL_NUMBER, kBytes)                               \
  X(CKA_AC_ISSUER, kBytes)                                   \
  X(CKA_OWNER, kBytes)                                       \
  X(CKA_ATTR_TYPES, kBytes)                                  \
  X(CKA_TRUSTED, kBool)                                      \
  X(CKA_CERTIFICATE_CATEGORY, kUlong)                        \
  X(CKA_JAVA_MIDP_SECURITY_DOMAIN, kUlong)                   \
  X(CKA_URL, kBytes)                                         \
  X(CKA_HASH_OF_SUBJECT_PUBLIC_KEY, kBytes)                  \
  X(CKA_HASH_OF_ISSUER_PUBLIC_KEY, kBytes)                   \
  X(CKA_NAME_HASH_ALGORITHM, kUlong)                         \
  X(CKA_CHECK_VALUE, kBytes)                                 \
  X(CKA_KEY_TYPE, kUlong)                                    \
  X(CKA_SUBJECT, kBytes)                                     \
  X(CKA_ID, kBytes)                                          \
  X(CKA_SENSITIVE, kBool)                                    \
  X(CKA_ENCRYPT, kBool)                                      \
  X(CKA_DECRYPT, kBool)                                      \
  X(CKA_WRAP, kBool)                                         \
  X(CKA_UNWRAP, kBool)                                       \
  X(CKA_SIGN, kBool)                                         \
  X(CKA_SIGN_RECOVER, kBool)                                 \
  X(CKA_VERIFY, kBool)                                       \
  X(CKA_VERIFY_RECOVER, kBool)                               \
  X(CKA_DERIVE, kBool)                                       \
  X(CKA_START_DATE, kDate)                                   \
  X(CKA_END_DATE, kDate)                                     \
  X(CKA_MODULUS, kBytes)                                     \
  X(CKA_MODULUS_BITS, kUlong)                                \
  X(CKA_PUBLIC_EXPONENT, kBytes)                             \
  X(CKA_PRIVATE_EXPONENT, kBytes)                            \
  X(CKA_PRIME_1, kBytes)                                     \
  X(CKA_PRIME_2, kBytes)                                     \
  X(CKA_EXPONENT_1, kBytes)                                  \
  X(CKA_EXPONENT_2, kBytes)                                  \
  X(CKA_COEFFICIENT, kBytes)                                 \
  X(CKA_PUBLIC_KEY_INFO, kBytes)                             \
  X(CKA_PRIME, kBytes)                                       \
  X(CKA_SUBPRIME, kBytes)                                    \
  X(CKA_BASE, kBytes)                                        \
  X(CKA_PRIME_BITS, kUlong)                                  \
  X(CKA_SUB_PRIME_BITS, kUlong)                              \
  X(CKA_VALUE_BITS, kUlong)                                  \
  X(CKA_VALUE_LEN, kUlong)                                   \
  X(CKA_EXTRACTABLE, kBool)                                  \
  X(CKA_LOCAL, kBool)                                        \
  X(CKA_NEVER_EXTRACTABLE, kBool)                            \
  X(CKA_ALWAYS_SENSITIVE, kBool)                             \
  X(CKA_KEY_GEN_MECHANISM, kUlong)                           \
  X(CKA_MODIFIABLE, kBool)                                   \
  X(CKA_COPYABLE, kBool)                                     \
  X(CKA_DESTROYABLE, kBool)                                  \
  X(CKA_EC_PARAMS, kBytes)                                   \
  X(CKA_EC_POINT, kBytes)                                    \
  X(CKA_SECONDARY_AUTH, kBool)                               \
  X(CKA_AUTH_PIN_FLAGS, kUlong)                              \
  X(CKA_ALWAYS_AUTHENTICATE, kBool)                          \
  X(CKA_WRAP_WITH_TRUSTED, kBool)                            \
  X(CKA_WRAP_TEMPLATE, kTemplate)                            \
  X(CKA_UNWRAP_TEMPLATE, kTemplate)                          \
  X(CKA_DERIVE_TEMPLATE, kTemplate)                          \
  X(CKA_OTP_FORMAT, kUlong)                                  \
  X(CKA_OTP_LENGTH, kUlong)                                  \
  X(CKA_OTP_TIME_INTERVAL, kUlong)                           \
  X(CKA_OTP_USER_FRIENDLY_MODE, kBool)                       \
  X(CKA_OTP_CHALLENGE_REQUIREMENT, kUlong)                   \
  X(CKA_OTP_TIME_REQUIREMENT, kUlong)                        \
  X(CKA_OTP_COUNTER_REQUIREMENT, kUlong)                     \
  X(CKA_OTP_PIN_REQUIREMENT, kUlong)                         \
  X(CKA_OTP_COUNTER, kBytes)                                 \
  X(CKA_OTP_TIME, kBytes)                                    \
  X(CKA_OTP_USER_IDENTIFIER, kBytes)                         \
  X(CKA_OTP_SERVICE_IDENTIFIER, kBytes)                      \
  X(CKA_OTP_SERVICE_LOGO, kBytes)                            \
  X(CKA_OTP_SERVICE_LOGO_TYPE, kBytes)                       \
  X(CKA_GOSTR3410_PARAMS, kBytes)                            \
  X(CKA_GOSTR3411_PARAMS, kBytes)                            \
  X(CKA_GOST28147_PARAMS, kBytes)                            \
  X(CKA_HW_FEATURE_TYPE, kUlong)                             \
  X(CKA_RESET_ON_INIT, kBool)                                \
  X(CKA_HAS_RESET, kBool)                                    \
  X(CKA_PIXEL_X, kUlong)                                     \
  X(CKA_PIXEL_Y, kUlong)                                     \
  X(CKA_RESOLUTION, kUlong)                                  \
  X(CKA_CHAR_ROWS, kUlong)                                   \
  X(CKA_CHAR_COLUMNS, kUlong)                                \
  X(CKA_COLOR, kBool)                                        \
  X(CKA_BITS_PER_PIXEL, kUlong)                              \
  X(CKA_CHAR_SETS, kBytes)                                   \
  X(CKA_ENCODING_METHODS, kBytes)                            \
  X(CKA_MIME_TYPES, kBytes)                                  \
  X(CKA_MECHANISM_TYPE, kUlong)                              \
  X(CKA_REQUIRED_CMS_ATTRIBUTES, kBytes)                     \
  X(CKA_DEFAULT_CMS_ATTRIBUTES, kBytes)                      \
  X(CKA_SUPPORTED_CMS_ATTRIBUTES, kBytes)                    \
  X(CKA_ALLOWED_MECHANISMS, kMechanisms)
// clang-format on

}  // namespace

AttributeKind KindOf(CK_ATTRIBUTE_TYPE type) {
  // Vendor-defined types have private layouts: never reinterpret them.
  if (type & CKA_VENDOR_DEFINED) return AttributeKind::kBytes;
  switch (type) {
#define HSMUX_ATTR_KIND(name, kind) \
  case name:                        \
    return AttributeKind::kind;
    HSMUX_ATTRIBUTES(HSMUX_ATTR_KIND)
#undef HSMUX_ATTR_KIND
    default:
      return AttributeKind::kBytes;
  }
}

std::string AttributeName(CK_ATTRIBUTE_TYPE type) {
  switch (type) {
#define HSMUX_ATTR_NAME(name, kind) \
  case name:                        \
    return #name;
    HSMUX_ATTRIBUTES(HSMUX_ATTR_NAME)
#undef HSMUX_ATTR_NAME
    default: {
      char buf[32];
      std::snprintf(buf, sizeof(buf), "CKA_0x%lx", static_cast<unsigned long>(type));
      return buf;
    }
  }
}

}  // namespace hsmux::wire
