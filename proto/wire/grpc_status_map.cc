#include "wire/grpc_status_map.h"

#include "absl/strings/str_cat.h"
#include "wire/errors.h"

namespace hsmux::wire {

CK_RV CkRvForGrpcStatus(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return CKR_OK;
    // The agent could not take more, or a message was over the size limit.
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return CKR_DEVICE_MEMORY;
    // The agent is unreachable, slow, restarting, refused our certificate,
    // or failed internally: the device is in error for the caller; the next
    // call may work.
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::ABORTED:
    case grpc::StatusCode::UNAUTHENTICATED:
    case grpc::StatusCode::PERMISSION_DENIED:
    case grpc::StatusCode::INTERNAL:
    case grpc::StatusCode::UNKNOWN:
    case grpc::StatusCode::DATA_LOSS:
    case grpc::StatusCode::NOT_FOUND:
    case grpc::StatusCode::FAILED_PRECONDITION:
      return CKR_DEVICE_ERROR;
    // The two sides disagree about the wire contract: a bug, not a device
    // state.
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE:
    case grpc::StatusCode::UNIMPLEMENTED:
    case grpc::StatusCode::ALREADY_EXISTS:
    default:
      return CKR_GENERAL_ERROR;
  }
}

absl::Status StatusFromGrpc(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return CkError(CkRvForGrpcStatus(status.error_code()),
                 absl::StrCat("rpc failed (", static_cast<int>(status.error_code()),
                              "): ", status.error_message()));
}

}  // namespace hsmux::wire
