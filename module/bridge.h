// The bodies the function table (wire/function_table.h) refers to: Remote()
// for calls answered by the agent, and the few functions the module answers
// itself.
#pragma once

#include <cstddef>
#include <tuple>
#include <utility>

#include "absl/status/status.h"
#include "hsmux/v1/cryptoki.pb.h"
#include "marshal.h"
#include "module_state.h"
#include "wire/cryptoki.h"
#include "wire/errors.h"
#include "wire/function_table.h"

namespace hsmux::module {

using wire::F;

namespace internal {

template <typename... Args>
absl::Status EncodeAll(v1::CallRequest& req, const Args&... args) {
  absl::Status status;
  // Stops at the first failing argument, in parameter order.
  (void)((status = args.Encode(req), status.ok()) && ...);
  return status;
}

template <typename Arg>
CK_RV DecodeOne(CK_RV rv, const v1::CallResponse& resp, int& next, const Arg& arg) {
  if constexpr (Arg::kHasResult) {
    const v1::Value* result = next < resp.results_size() ? &resp.results(next) : nullptr;
    ++next;
    return arg.Decode(rv, result);
  } else {
    return rv;
  }
}

}  // namespace internal

// Reports a local error inside an operation to the agent, which ends the
// operation there as the spec requires (the call itself is not run).
void EndOperationOnAgent(F f, CK_ULONG session, CK_RV rv);

// Marshals the arguments, sends the call, and writes the answer back.
template <typename... Args>
CK_RV Remote(F f, const Args&... args) {
  auto client = ModuleState::Get().Client();
  if (!client.ok()) return wire::GetCkRv(client.status());
  v1::CallRequest req;
  req.set_function(static_cast<uint32_t>(f));
  absl::Status encoded = internal::EncodeAll(req, args...);
  if (!encoded.ok()) {
    const CK_RV rv = wire::GetCkRv(encoded);
    if (wire::IsOperationCall(f) && req.args_size() > 0) {
      EndOperationOnAgent(f, static_cast<CK_ULONG>(req.args(0).ulong()), rv);
    }
    return rv;
  }
  auto resp = (*client)->Call(req);
  if (!resp.ok()) return wire::GetCkRv(resp.status());
  CK_RV rv = static_cast<CK_RV>(resp->ck_rv());
  int next = 0;
  // Every output wrapper sees the agent's rv and may refine it (in order).
  ((rv = internal::DecodeOne(rv, *resp, next, args)), ...);
  return rv;
}

// ---- answered in the module ----
CK_RV Initialize(CK_VOID_PTR pInitArgs);
CK_RV Finalize(CK_VOID_PTR pReserved);
CK_RV GetInfo(CK_INFO_PTR pInfo);
CK_RV GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList);
CK_RV GetSlotList(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount);
CK_RV GetSlotInfo(CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo);
CK_RV OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_SESSION_HANDLE_PTR phSession);
CK_RV WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR pSlot, CK_VOID_PTR pReserved);
// Functions hsmux does not offer (README lists them and why).
CK_RV NotOffered(F f);
// C_GetFunctionStatus / C_CancelFunction: legacy, not parallel.
CK_RV NotParallel(CK_SESSION_HANDLE hSession);

}  // namespace hsmux::module
