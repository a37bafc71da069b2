// The gRPC face of the agent: authenticates the caller from its verified
// client certificate and hands calls to Agent. Thin on purpose.
#pragma once

#include "agent.h"
#include "hsmux/v1/cryptoki.grpc.pb.h"

namespace hsmux::agent {

class CryptokiService final : public v1::Cryptoki::Service {
 public:
  explicit CryptokiService(Agent& agent) : agent_(agent) {}

  grpc::Status Open(grpc::ServerContext* ctx, const v1::OpenRequest* req,
                    v1::OpenResponse* resp) override;
  grpc::Status Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* req,
                         v1::HeartbeatResponse* resp) override;
  grpc::Status Close(grpc::ServerContext* ctx, const v1::CloseRequest* req,
                     v1::CloseResponse* resp) override;
  grpc::Status Call(grpc::ServerContext* ctx, const v1::CallRequest* req,
                    v1::CallResponse* resp) override;
  grpc::Status CallStream(
      grpc::ServerContext* ctx,
      grpc::ServerReaderWriter<v1::CallResponse, v1::CallRequest>* stream) override;

 private:
  // The caller's identity string, or an error status for an unknown client.
  grpc::Status Identify(grpc::ServerContext* ctx, const ClientConfig** client,
                        std::string* identity);
  // One call of an identified client (Call, and each message of a stream).
  grpc::Status Serve(const std::string& identity, const v1::CallRequest& req,
                     v1::CallResponse* resp);

  Agent& agent_;
};

}  // namespace hsmux::agent
