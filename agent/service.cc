#include "service.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "log.h"
#include "recent_errors.h"
#include "wire/call_stream.h"
#include "wire/errors.h"
#include "wire/function_table.h"

namespace hsmux::agent {

grpc::Status CryptokiService::Identify(grpc::ServerContext* ctx, const ClientConfig** client,
                                       std::string* identity) {
  PeerIdentity peer;
  auto auth = ctx->auth_context();
  if (auth != nullptr) {
    for (const auto& v : auth->FindPropertyValues("x509_common_name")) {
      peer.common_name.assign(v.data(), v.size());
    }
    for (const auto& v : auth->FindPropertyValues("x509_subject_alternative_name")) {
      peer.sans.emplace_back(v.data(), v.size());
    }
  }
  *client = agent_.Authorize(peer);
  *identity = peer.Describe();
  if (*client == nullptr) {
    LogWarning(absl::StrCat("refused client ", *identity, " from ", ctx->peer(),
                            ": not in the clients list"));
    RecordError(
        "refused_client", "", "",
        absl::StrCat("client ", *identity, " from ", ctx->peer(), ": not in the clients list"));
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "unknown client identity");
  }
  return grpc::Status::OK;
}

grpc::Status CryptokiService::Open(grpc::ServerContext* ctx, const v1::OpenRequest* req,
                                   v1::OpenResponse* resp) {
  const ClientConfig* client;
  std::string identity;
  if (auto st = Identify(ctx, &client, &identity); !st.ok()) return st;
  auto inst = agent_.OpenInstance(client, identity);
  LogInfo(absl::StrCat("instance ", inst->id, ": pid ", req->pid(), " on ", req->host(),
                       ", module ", req->module_version()));
  resp->set_instance_id(inst->id);
  resp->set_lease_seconds(agent_.config().lease_seconds);
  resp->set_agent_version("0.1.0");
  return grpc::Status::OK;
}

grpc::Status CryptokiService::Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* req,
                                        v1::HeartbeatResponse* resp) {
  const ClientConfig* client;
  std::string identity;
  if (auto st = Identify(ctx, &client, &identity); !st.ok()) return st;
  resp->set_known(agent_.RenewLease(req->instance_id(), identity));
  return grpc::Status::OK;
}

grpc::Status CryptokiService::Close(grpc::ServerContext* ctx, const v1::CloseRequest* req,
                                    v1::CloseResponse*) {
  const ClientConfig* client;
  std::string identity;
  if (auto st = Identify(ctx, &client, &identity); !st.ok()) return st;
  agent_.CloseInstance(req->instance_id(), identity);
  return grpc::Status::OK;
}

grpc::Status CryptokiService::Serve(const std::string& identity, const v1::CallRequest& req,
                                    v1::CallResponse* resp) {
  // An instance of another identity is as unknown as one that never existed.
  auto inst = agent_.FindInstance(req.instance_id(), identity);
  if (inst == nullptr) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown instance");
  }
  agent_.RenewLease(*inst);
  agent_.Call(inst, req, *resp);
  if (resp->ck_rv() != CKR_OK && resp->ck_rv() != CKR_BUFFER_TOO_SMALL) {
    LogInfo(absl::StrCat("instance ", inst->id, ": ", wire::FunctionName(req.function()), " -> ",
                         wire::CkRvName(resp->ck_rv())));
  }
  return grpc::Status::OK;
}

grpc::Status CryptokiService::Call(grpc::ServerContext* ctx, const v1::CallRequest* req,
                                   v1::CallResponse* resp) {
  const ClientConfig* client;
  std::string identity;
  if (auto st = Identify(ctx, &client, &identity); !st.ok()) return st;
  return Serve(identity, *req, resp);
}

namespace {

// Holds one of the agent's stream places for the life of a stream: on the
// synchronous server a stream holds a server thread while it is open.
class StreamPlace {
 public:
  explicit StreamPlace(Agent& agent) : agent_(agent), held_(agent.TakeStreamPlace()) {}
  ~StreamPlace() {
    if (held_) agent_.GiveStreamPlace();
  }
  StreamPlace(const StreamPlace&) = delete;
  StreamPlace& operator=(const StreamPlace&) = delete;
  bool held() const { return held_; }

 private:
  Agent& agent_;
  const bool held_;
};

}  // namespace

grpc::Status CryptokiService::CallStream(
    grpc::ServerContext* ctx, grpc::ServerReaderWriter<v1::CallResponse, v1::CallRequest>* stream) {
  StreamPlace place(agent_);
  if (!place.held()) {
    // Refused before reading anything: the module resends the request as a
    // unary call (wire/call_stream.h), which needs no thread of its own.
    ctx->AddTrailingMetadata(wire::kStreamRefusedTrailer, "1");
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "stream limit reached");
  }
  // The peer's certificate is fixed for the connection: identified once.
  const ClientConfig* client;
  std::string identity;
  if (auto st = Identify(ctx, &client, &identity); !st.ok()) return st;
  v1::CallRequest req;
  v1::CallResponse resp;
  while (stream->Read(&req)) {
    resp.Clear();
    grpc::Status st = Serve(identity, req, &resp);
    if (!st.ok()) return st;
    if (!stream->Write(resp)) break;
  }
  return grpc::Status::OK;
}

}  // namespace hsmux::agent
