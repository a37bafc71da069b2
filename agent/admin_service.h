// The admin endpoint hsmuxctl talks to: a Unix socket in the state directory
// (<state_dir>/admin.sock, mode 0600, owned by the service user). Whoever
// can open the socket is the operator.
#pragma once

#include "agent.h"
#include "hsmux/v1/admin.grpc.pb.h"

namespace hsmux::agent {

class AdminService final : public v1::Admin::Service {
 public:
  explicit AdminService(Agent& agent) : agent_(agent) {}

  grpc::Status Status(grpc::ServerContext* ctx, const v1::StatusRequest* req,
                      v1::StatusResponse* resp) override;
  grpc::Status CreateReplicationKey(grpc::ServerContext* ctx,
                                    const v1::CreateReplicationKeyRequest* req,
                                    v1::CreateReplicationKeyResponse* resp) override;
  grpc::Status Unlock(grpc::ServerContext* ctx, const v1::UnlockRequest* req,
                      v1::UnlockResponse* resp) override;
  grpc::Status Drain(grpc::ServerContext* ctx, const v1::MemberRequest* req,
                     v1::MemberResponse* resp) override;
  grpc::Status Readmit(grpc::ServerContext* ctx, const v1::MemberRequest* req,
                       v1::MemberResponse* resp) override;

 private:
  Agent& agent_;
};

}  // namespace hsmux::agent
