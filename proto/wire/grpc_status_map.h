// The one reviewed table from a failed RPC (transport or agent failure, never
// a Cryptoki outcome) to the CK_RV the application sees.
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "wire/cryptoki.h"

namespace hsmux::wire {

CK_RV CkRvForGrpcStatus(grpc::StatusCode code);

// A status carrying that CK_RV, with the gRPC message for the log.
absl::Status StatusFromGrpc(const grpc::Status& status);

}  // namespace hsmux::wire
