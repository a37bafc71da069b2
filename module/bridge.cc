#include "bridge.h"

#include <cstring>

#include "log.h"
#include "stats_file.h"

namespace hsmux::module {
namespace {

constexpr CK_VERSION kLibraryVersion = {0, 1};

CK_RV CheckInitArgs(const CK_C_INITIALIZE_ARGS* args) {
  if (args == nullptr) return CKR_OK;
  if (args->pReserved != nullptr) return CKR_ARGUMENTS_BAD;
  const int fns = (args->CreateMutex != nullptr) + (args->DestroyMutex != nullptr) +
                  (args->LockMutex != nullptr) + (args->UnlockMutex != nullptr);
  if (fns != 0 && fns != 4) return CKR_ARGUMENTS_BAD;
  // gRPC runs its own threads; a host that forbids them cannot use us —
  // unless the operator said the host's flag is a formality (p11-kit).
  if (args->flags & CKF_LIBRARY_CANT_CREATE_OS_THREADS) {
    auto config = LoadModuleConfig();
    if (!config.ok() || !config->ignore_cant_create_threads) return CKR_NEED_TO_CREATE_THREADS;
  }
  // Callbacks without CKF_OS_LOCKING_OK demand that we lock only through
  // them, which gRPC's own locking cannot honour.
  if (fns == 4 && !(args->flags & CKF_OS_LOCKING_OK)) return CKR_CANT_LOCK;
  return CKR_OK;
}

}  // namespace

void EndOperationOnAgent(F f, CK_ULONG session, CK_RV rv) {
  auto client = ModuleState::Get().Client();
  if (!client.ok()) return;
  v1::CallRequest req;
  req.set_function(static_cast<uint32_t>(f));
  req.add_args()->set_ulong(session);
  req.set_local_error(rv);
  (void)(*client)->Call(req);
}

CK_RV Initialize(CK_VOID_PTR pInitArgs) {
  CK_RV rv = CheckInitArgs(static_cast<const CK_C_INITIALIZE_ARGS*>(pInitArgs));
  if (rv != CKR_OK) return rv;
  return wire::GetCkRv(ModuleState::Get().Initialize());
}

CK_RV Finalize(CK_VOID_PTR pReserved) {
  if (!ModuleState::Get().Initialized()) return CKR_CRYPTOKI_NOT_INITIALIZED;
  if (pReserved != nullptr) return CKR_ARGUMENTS_BAD;
  return wire::GetCkRv(ModuleState::Get().Finalize());
}

CK_RV GetInfo(CK_INFO_PTR pInfo) {
  if (!ModuleState::Get().Initialized()) return CKR_CRYPTOKI_NOT_INITIALIZED;
  if (pInfo == nullptr) return CKR_ARGUMENTS_BAD;
  std::memset(pInfo, 0, sizeof(*pInfo));
  pInfo->cryptokiVersion = {CRYPTOKI_VERSION_MAJOR, CRYPTOKI_VERSION_MINOR};
  PadCopy(pInfo->manufacturerID, sizeof(pInfo->manufacturerID), "hsmux");
  PadCopy(pInfo->libraryDescription, sizeof(pInfo->libraryDescription),
          "hsmux PKCS#11 module");
  pInfo->libraryVersion = kLibraryVersion;
  SnapshotStats();  // HSMUX_STATS_FILE only (docs/decisions/0008)
  return CKR_OK;
}

CK_RV GetSlotList(CK_BBOOL /*tokenPresent*/, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount) {
  if (!ModuleState::Get().Initialized()) return CKR_CRYPTOKI_NOT_INITIALIZED;
  if (pulCount == nullptr) return CKR_ARGUMENTS_BAD;
  // Slots come from config and never change; their tokens count as present
  // even during an agent outage (calls then answer CKR_DEVICE_ERROR), so
  // applications do not drop their keys over a brief outage.
  const std::vector<uint64_t> slots = ModuleState::Get().Slots();
  const CK_ULONG n = static_cast<CK_ULONG>(slots.size());
  if (pSlotList == nullptr) {
    *pulCount = n;
    return CKR_OK;
  }
  if (*pulCount < n) {
    *pulCount = n;
    return CKR_BUFFER_TOO_SMALL;
  }
  for (CK_ULONG i = 0; i < n; ++i) pSlotList[i] = slots[i];
  *pulCount = n;
  return CKR_OK;
}

CK_RV GetSlotInfo(CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo) {
  CK_RV rv = Remote(F::kGetSlotInfo, Slot(slotID), StructOut<CK_SLOT_INFO>(pInfo));
  if (rv == CKR_DEVICE_ERROR || rv == CKR_DEVICE_MEMORY) {
    // No agent answers: describe the configured slot from what we know.
    v1::SlotInfo local;
    local.set_description("hsmux virtual slot");
    local.set_manufacturer("hsmux");
    local.set_flags(CKF_TOKEN_PRESENT | CKF_REMOVABLE_DEVICE | CKF_HW_SLOT);
    FillSlotInfo(local, pInfo);
    return CKR_OK;
  }
  return rv;
}

CK_RV OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_SESSION_HANDLE_PTR phSession) {
  if (!ModuleState::Get().Initialized()) return CKR_CRYPTOKI_NOT_INITIALIZED;
  if (!ModuleState::Get().HasSlot(slotID)) return CKR_SLOT_ID_INVALID;
  if (!(flags & CKF_SERIAL_SESSION)) return CKR_SESSION_PARALLEL_NOT_SUPPORTED;
  if (phSession == nullptr) return CKR_ARGUMENTS_BAD;
  // Notify callbacks are accepted and never called: hsmux has no
  // surrender points, which the spec allows.
  return Remote(F::kOpenSession, Slot(slotID), Ulong(flags), UlongOut(phSession));
}

CK_RV WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR pSlot, CK_VOID_PTR pReserved) {
  if (!ModuleState::Get().Initialized()) return CKR_CRYPTOKI_NOT_INITIALIZED;
  if (pSlot == nullptr || pReserved != nullptr) return CKR_ARGUMENTS_BAD;
  // Virtual slots never change, so there is never an event to report.
  if (flags & CKF_DONT_BLOCK) return CKR_NO_EVENT;
  return ModuleState::Get().BlockUntilFinalized();
}

CK_RV NotOffered(F f) {
  if (!ModuleState::Get().Initialized()) return CKR_CRYPTOKI_NOT_INITIALIZED;
  LogLine(std::string(wire::FunctionName(static_cast<uint32_t>(f))) +
          ": not supported by hsmux");
  return CKR_FUNCTION_NOT_SUPPORTED;
}

CK_RV NotParallel(CK_SESSION_HANDLE /*hSession*/) {
  if (!ModuleState::Get().Initialized()) return CKR_CRYPTOKI_NOT_INITIALIZED;
  return CKR_FUNCTION_NOT_PARALLEL;
}

}  // namespace hsmux::module
