#include "marshal.h"

#include <algorithm>

#include "module_state.h"

namespace hsmux::module {

absl::Status Slot::Encode(v1::CallRequest& req) const {
  if (!ModuleState::Get().HasSlot(value)) {
    return wire::CkError(CKR_SLOT_ID_INVALID, "slot not configured");
  }
  req.add_args()->set_ulong(value);
  return absl::OkStatus();
}

CK_RV Out::Decode(CK_RV rv, const v1::Value* result) const {
  if (rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL) return rv;
  if (result == nullptr || !result->has_output()) return CKR_GENERAL_ERROR;
  const v1::OutputBytes& out = result->output();
  if (rv == CKR_OK && ptr != nullptr) {
    // The agent never writes more than the capacity we sent.
    if (out.data().size() > *len) return CKR_GENERAL_ERROR;
    std::memcpy(ptr, out.data().data(), out.data().size());
  }
  *len = static_cast<CK_ULONG>(out.length());
  return rv;
}

CK_RV FixedOut::Decode(CK_RV rv, const v1::Value* result) const {
  if (rv != CKR_OK) return rv;
  if (result == nullptr || !result->has_output() || result->output().data().size() != len) {
    return CKR_GENERAL_ERROR;
  }
  if (len != 0) std::memcpy(ptr, result->output().data().data(), len);
  return rv;
}

CK_RV UlongOut::Decode(CK_RV rv, const v1::Value* result) const {
  if (rv != CKR_OK) return rv;
  if (result == nullptr || result->kind_case() != v1::Value::kUlong) return CKR_GENERAL_ERROR;
  *ptr = static_cast<CK_ULONG>(result->ulong());
  return rv;
}

CK_RV HandlesOut::Decode(CK_RV rv, const v1::Value* result) const {
  if (rv != CKR_OK) return rv;
  if (result == nullptr || !result->has_ulongs()) return CKR_GENERAL_ERROR;
  const auto& values = result->ulongs().values();
  if (static_cast<CK_ULONG>(values.size()) > max) return CKR_GENERAL_ERROR;
  for (int i = 0; i < values.size(); ++i) ptr[i] = static_cast<CK_OBJECT_HANDLE>(values[i]);
  *count = static_cast<CK_ULONG>(values.size());
  return rv;
}

CK_RV ListOut::Decode(CK_RV rv, const v1::Value* result) const {
  if (rv != CKR_OK) return rv;
  if (result == nullptr || !result->has_ulongs()) return CKR_GENERAL_ERROR;
  const auto& values = result->ulongs().values();
  const CK_ULONG n = static_cast<CK_ULONG>(values.size());
  if (ptr == nullptr) {
    *count = n;
    return CKR_OK;
  }
  if (*count < n) {
    *count = n;
    return CKR_BUFFER_TOO_SMALL;
  }
  for (CK_ULONG i = 0; i < n; ++i) ptr[i] = static_cast<CK_ULONG>(values[static_cast<int>(i)]);
  *count = n;
  return CKR_OK;
}

CK_RV Queries::Decode(CK_RV rv, const v1::Value* result) const {
  if (rv != CKR_OK) return rv;
  if (result == nullptr || !result->has_answers()) return CKR_GENERAL_ERROR;
  return wire::ApplyAnswers(result->answers(), ptr, count);
}

void PadCopy(unsigned char* dst, size_t size, const std::string& src) {
  std::memset(dst, ' ', size);
  std::memcpy(dst, src.data(), std::min(size, src.size()));
}

void FillTokenInfo(const v1::TokenInfo& in, CK_TOKEN_INFO* out) {
  std::memset(out, 0, sizeof(*out));
  PadCopy(out->label, sizeof(out->label), in.label());
  PadCopy(out->manufacturerID, sizeof(out->manufacturerID), in.manufacturer());
  PadCopy(out->model, sizeof(out->model), in.model());
  PadCopy(out->serialNumber, sizeof(out->serialNumber), in.serial());
  out->flags = in.flags();
  out->ulMaxSessionCount = in.max_session_count();
  out->ulSessionCount = in.session_count();
  out->ulMaxRwSessionCount = in.max_rw_session_count();
  out->ulRwSessionCount = in.rw_session_count();
  out->ulMaxPinLen = in.max_pin_len();
  out->ulMinPinLen = in.min_pin_len();
  out->ulTotalPublicMemory = in.total_public_memory();
  out->ulFreePublicMemory = in.free_public_memory();
  out->ulTotalPrivateMemory = in.total_private_memory();
  out->ulFreePrivateMemory = in.free_private_memory();
  out->hardwareVersion = {static_cast<CK_BYTE>(in.hardware().major()),
                          static_cast<CK_BYTE>(in.hardware().minor())};
  out->firmwareVersion = {static_cast<CK_BYTE>(in.firmware().major()),
                          static_cast<CK_BYTE>(in.firmware().minor())};
  PadCopy(out->utcTime, sizeof(out->utcTime), in.utc_time());
}

void FillSlotInfo(const v1::SlotInfo& in, CK_SLOT_INFO* out) {
  std::memset(out, 0, sizeof(*out));
  PadCopy(out->slotDescription, sizeof(out->slotDescription), in.description());
  PadCopy(out->manufacturerID, sizeof(out->manufacturerID), in.manufacturer());
  out->flags = in.flags();
  out->hardwareVersion = {static_cast<CK_BYTE>(in.hardware().major()),
                          static_cast<CK_BYTE>(in.hardware().minor())};
  out->firmwareVersion = {static_cast<CK_BYTE>(in.firmware().major()),
                          static_cast<CK_BYTE>(in.firmware().minor())};
}

template <>
CK_RV StructOut<CK_TOKEN_INFO>::Decode(CK_RV rv, const v1::Value* result) const {
  if (rv != CKR_OK) return rv;
  if (result == nullptr || !result->has_token_info()) return CKR_GENERAL_ERROR;
  FillTokenInfo(result->token_info(), ptr);
  return rv;
}

template <>
CK_RV StructOut<CK_SLOT_INFO>::Decode(CK_RV rv, const v1::Value* result) const {
  if (rv != CKR_OK) return rv;
  if (result == nullptr || !result->has_slot_info()) return CKR_GENERAL_ERROR;
  FillSlotInfo(result->slot_info(), ptr);
  return rv;
}

template <>
CK_RV StructOut<CK_SESSION_INFO>::Decode(CK_RV rv, const v1::Value* result) const {
  if (rv != CKR_OK) return rv;
  if (result == nullptr || !result->has_session_info()) return CKR_GENERAL_ERROR;
  const v1::SessionInfo& in = result->session_info();
  std::memset(ptr, 0, sizeof(*ptr));
  ptr->slotID = in.slot_id();
  ptr->state = in.state();
  ptr->flags = in.flags();
  ptr->ulDeviceError = in.device_error();
  return rv;
}

template <>
CK_RV StructOut<CK_MECHANISM_INFO>::Decode(CK_RV rv, const v1::Value* result) const {
  if (rv != CKR_OK) return rv;
  if (result == nullptr || !result->has_mechanism_info()) return CKR_GENERAL_ERROR;
  const v1::MechanismInfo& in = result->mechanism_info();
  std::memset(ptr, 0, sizeof(*ptr));
  ptr->ulMinKeySize = in.min_key_size();
  ptr->ulMaxKeySize = in.max_key_size();
  ptr->flags = in.flags();
  return rv;
}

}  // namespace hsmux::module
