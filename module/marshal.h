// Typed argument wrappers: each knows how one kind of Cryptoki argument is
// checked, put on the wire, and how its answer is written back into the
// caller's memory. The function table (wire/function_table.h) composes them
// into one Remote(...) expression per function, so the NULL checks, length
// queries and CKR_BUFFER_TOO_SMALL copy-out each live in exactly one place.
#pragma once

#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "hsmux/v1/cryptoki.pb.h"
#include "wire/attribute_codec.h"
#include "wire/cryptoki.h"
#include "wire/errors.h"
#include "wire/mechanism_codec.h"

namespace hsmux::module {

// ---- inputs ---------------------------------------------------------------

// A CK_ULONG passed by value (handles, flags, user types, mechanism types).
struct Ulong {
  explicit Ulong(CK_ULONG v) : value(v) {}
  static constexpr bool kHasResult = false;
  absl::Status Encode(v1::CallRequest& req) const {
    req.add_args()->set_ulong(value);
    return absl::OkStatus();
  }
  CK_ULONG value;
};

// A slot ID; the module knows the configured slots and answers
// CKR_SLOT_ID_INVALID for any other without a round trip.
struct Slot {
  explicit Slot(CK_SLOT_ID v) : value(v) {}
  static constexpr bool kHasResult = false;
  absl::Status Encode(v1::CallRequest& req) const;
  CK_SLOT_ID value;
};

// An input byte string; NULL with a non-zero length is CKR_ARGUMENTS_BAD.
struct In {
  In(const CK_BYTE* p, CK_ULONG n) : ptr(p), len(n) {}
  static constexpr bool kHasResult = false;
  absl::Status Encode(v1::CallRequest& req) const {
    if (ptr == nullptr && len != 0) return wire::CkError(CKR_ARGUMENTS_BAD, "NULL input buffer");
    req.add_args()->set_bytes(ptr == nullptr ? std::string() : std::string(
                                                                   reinterpret_cast<const char*>(ptr), len));
    return absl::OkStatus();
  }
  const CK_BYTE* ptr;
  CK_ULONG len;
};

// A PIN. NULL is allowed by the spec only with a protected authentication
// path, which no hsmux token has.
struct Pin {
  Pin(const CK_UTF8CHAR* p, CK_ULONG n) : ptr(p), len(n) {}
  static constexpr bool kHasResult = false;
  absl::Status Encode(v1::CallRequest& req) const {
    if (ptr == nullptr) return wire::CkError(CKR_ARGUMENTS_BAD, "NULL PIN");
    req.add_args()->set_bytes(std::string(reinterpret_cast<const char*>(ptr), len));
    return absl::OkStatus();
  }
  const CK_UTF8CHAR* ptr;
  CK_ULONG len;
};

struct Template {
  Template(const CK_ATTRIBUTE* p, CK_ULONG n) : ptr(p), count(n) {}
  static constexpr bool kHasResult = false;
  absl::Status Encode(v1::CallRequest& req) const {
    return wire::EncodeTemplate(ptr, count, req.add_args()->mutable_attributes());
  }
  const CK_ATTRIBUTE* ptr;
  CK_ULONG count;
};

struct Mech {
  explicit Mech(CK_MECHANISM* p) : ptr(p) {}
  static constexpr bool kHasResult = false;
  absl::Status Encode(v1::CallRequest& req) const {
    return wire::EncodeMechanism(ptr, req.add_args()->mutable_mechanism());
  }
  CK_MECHANISM* ptr;
};

// ---- outputs --------------------------------------------------------------
// Decode(rv, result) runs after the agent answered; `result` is this
// wrapper's entry in CallResponse.results (nullptr if the agent sent none).
// It returns the CK_RV the caller sees.

// An output buffer with a length in/out pointer: travels as capacity, so a
// length query and CKR_BUFFER_TOO_SMALL behave as with a local module.
struct Out {
  Out(CK_BYTE* p, CK_ULONG* plen) : ptr(p), len(plen) {}
  static constexpr bool kHasResult = true;
  absl::Status Encode(v1::CallRequest& req) const {
    if (len == nullptr) return wire::CkError(CKR_ARGUMENTS_BAD, "NULL length pointer");
    auto* cap = req.add_args()->mutable_capacity();
    cap->set_is_null(ptr == nullptr);
    cap->set_capacity(*len);
    return absl::OkStatus();
  }
  CK_RV Decode(CK_RV rv, const v1::Value* result) const;
  CK_BYTE* ptr;
  CK_ULONG* len;
};

// C_GenerateRandom's buffer: the length is fixed by the caller.
struct FixedOut {
  FixedOut(CK_BYTE* p, CK_ULONG n) : ptr(p), len(n) {}
  static constexpr bool kHasResult = true;
  absl::Status Encode(v1::CallRequest& req) const {
    if (ptr == nullptr && len != 0) return wire::CkError(CKR_ARGUMENTS_BAD, "NULL output buffer");
    auto* cap = req.add_args()->mutable_capacity();
    cap->set_is_null(false);
    cap->set_capacity(len);
    return absl::OkStatus();
  }
  CK_RV Decode(CK_RV rv, const v1::Value* result) const;
  CK_BYTE* ptr;
  CK_ULONG len;
};

// One CK_ULONG written by the callee (a new object handle, an object size).
struct UlongOut {
  explicit UlongOut(CK_ULONG* p) : ptr(p) {}
  static constexpr bool kHasResult = true;
  absl::Status Encode(v1::CallRequest&) const {
    if (ptr == nullptr) return wire::CkError(CKR_ARGUMENTS_BAD, "NULL output pointer");
    return absl::OkStatus();
  }
  CK_RV Decode(CK_RV rv, const v1::Value* result) const;
  CK_ULONG* ptr;
};

// C_FindObjects: at most `max` handles, count written back.
struct HandlesOut {
  HandlesOut(CK_OBJECT_HANDLE* p, CK_ULONG m, CK_ULONG* pc) : ptr(p), max(m), count(pc) {}
  static constexpr bool kHasResult = true;
  absl::Status Encode(v1::CallRequest& req) const {
    if (count == nullptr || (ptr == nullptr && max != 0)) {
      return wire::CkError(CKR_ARGUMENTS_BAD, "NULL handle array or count");
    }
    req.add_args()->set_ulong(max);
    return absl::OkStatus();
  }
  CK_RV Decode(CK_RV rv, const v1::Value* result) const;
  CK_OBJECT_HANDLE* ptr;
  CK_ULONG max;
  CK_ULONG* count;
};

// A list the caller sizes with a NULL query (mechanism list): the agent
// answers the whole list; the module applies the length-query rules.
struct ListOut {
  ListOut(CK_ULONG* p, CK_ULONG* pc) : ptr(p), count(pc) {}
  static constexpr bool kHasResult = true;
  absl::Status Encode(v1::CallRequest&) const {
    if (count == nullptr) return wire::CkError(CKR_ARGUMENTS_BAD, "NULL count pointer");
    return absl::OkStatus();
  }
  CK_RV Decode(CK_RV rv, const v1::Value* result) const;
  CK_ULONG* ptr;
  CK_ULONG* count;
};

// C_GetAttributeValue's template: queries out, answers back in.
struct Queries {
  Queries(CK_ATTRIBUTE* p, CK_ULONG n) : ptr(p), count(n) {}
  static constexpr bool kHasResult = true;
  absl::Status Encode(v1::CallRequest& req) const {
    if (ptr == nullptr && count != 0) return wire::CkError(CKR_ARGUMENTS_BAD, "NULL template");
    return wire::EncodeQueries(ptr, count, req.add_args()->mutable_queries());
  }
  CK_RV Decode(CK_RV rv, const v1::Value* result) const;
  CK_ATTRIBUTE* ptr;
  CK_ULONG count;
};

// CK_TOKEN_INFO, CK_SESSION_INFO, CK_MECHANISM_INFO, CK_SLOT_INFO.
template <typename T>
struct StructOut {
  explicit StructOut(T* p) : ptr(p) {}
  static constexpr bool kHasResult = true;
  absl::Status Encode(v1::CallRequest&) const {
    if (ptr == nullptr) return wire::CkError(CKR_ARGUMENTS_BAD, "NULL info pointer");
    return absl::OkStatus();
  }
  CK_RV Decode(CK_RV rv, const v1::Value* result) const;
  T* ptr;
};

// Fills a blank-padded, not NUL-terminated Cryptoki string field.
void PadCopy(unsigned char* dst, size_t size, const std::string& src);

void FillTokenInfo(const v1::TokenInfo& in, CK_TOKEN_INFO* out);
void FillSlotInfo(const v1::SlotInfo& in, CK_SLOT_INFO* out);

}  // namespace hsmux::module
