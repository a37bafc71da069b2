#include "agent_client.h"

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "log.h"
#include "wire/errors.h"
#include "wire/grpc_status_map.h"

namespace hsmux::module {
namespace {

constexpr char kModuleVersion[] = "0.1.0";

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return wire::CkError(CKR_GENERAL_ERROR, absl::StrCat("cannot read ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// gRPC deadlines take only system_clock.
std::chrono::system_clock::time_point DeadlineIn(uint32_t ms) {
  return std::chrono::system_clock::now() + std::chrono::milliseconds(ms);
}

int64_t UnixMs(std::chrono::system_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

}  // namespace

absl::StatusOr<std::unique_ptr<AgentClient>> AgentClient::Create(const ModuleConfig& config) {
  HSMUX_ASSIGN_OR_RETURN(std::string ca, ReadFile(config.ca_file));
  HSMUX_ASSIGN_OR_RETURN(std::string cert, ReadFile(config.cert_file));
  HSMUX_ASSIGN_OR_RETURN(std::string key, ReadFile(config.key_file));
  return std::unique_ptr<AgentClient>(
      new AgentClient(config, std::move(ca), std::move(cert), std::move(key)));
}

AgentClient::AgentClient(ModuleConfig config, std::string ca, std::string cert, std::string key)
    : config_(std::move(config)),
      ca_pem_(std::move(ca)),
      cert_pem_(std::move(cert)),
      key_pem_(std::move(key)),
      answers_(config_.defer_parameter_checks),
      streams_(config_.use_streams ? std::make_unique<CallStreams>() : nullptr) {}

v1::Cryptoki::Stub* AgentClient::StubLocked() {
  if (stub_ == nullptr) {
    // Each new channel reads the TLS files again, so renewed certificates
    // are taken without restarting the host (kept contents if unreadable).
    grpc::SslCredentialsOptions ssl;
    auto ca = ReadFile(config_.ca_file);
    auto cert = ReadFile(config_.cert_file);
    auto key = ReadFile(config_.key_file);
    const bool fresh = ca.ok() && cert.ok() && key.ok();
    ssl.pem_root_certs = fresh ? *ca : ca_pem_;
    ssl.pem_cert_chain = fresh ? *cert : cert_pem_;
    ssl.pem_private_key = fresh ? *key : key_pem_;
    grpc::ChannelArguments args;
    if (!config_.server_name.empty()) {
      args.SetSslTargetNameOverride(config_.server_name);
    }
    args.SetMaxReceiveMessageSize(static_cast<int>(config_.max_message_bytes));
    args.SetMaxSendMessageSize(static_cast<int>(config_.max_message_bytes));
    // Retry connecting soon after an agent outage, so calls answer
    // CKR_DEVICE_ERROR within the call timeout and work again after.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
    // Despite its name, gRPC core (1.51 subchannel.cc) takes this as the
    // minimum time one connection attempt (TCP, TLS handshake, HTTP/2
    // SETTINGS) may take before it is abandoned (default 20 s). At 200 ms a
    // loaded host or a distant agent never connected: every attempt timed out
    // ("connection attempt timed out before receiving SETTINGS frame").
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, static_cast<int>(config_.connect_timeout_ms));
    args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
    channel_ =
        grpc::CreateCustomChannel(config_.agents[endpoint_], grpc::SslCredentials(ssl), args);
    stub_ = v1::Cryptoki::NewStub(channel_);
  }
  return stub_.get();
}

void AgentClient::NextEndpointLocked() {
  endpoint_ = (endpoint_ + 1) % config_.agents.size();
  stub_.reset();
  channel_.reset();
}

absl::Status AgentClient::OpenLocked() {
  absl::Status last;
  for (size_t tries = 0; tries < config_.agents.size(); ++tries) {
    v1::OpenRequest req;
    req.set_pid(static_cast<uint32_t>(getpid()));
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    req.set_host(host);
    req.set_module_version(kModuleVersion);
    v1::OpenResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(DeadlineIn(config_.connect_timeout_ms));
    ++round_trips_;
    grpc::Status st = StubLocked()->Open(&ctx, req, &resp);
    if (st.ok()) {
      instance_id_ = resp.instance_id();
      return absl::OkStatus();
    }
    LogLine(absl::StrCat("agent ", config_.agents[endpoint_],
                         " did not register us: ", st.error_message()));
    last = wire::StatusFromGrpc(st);
    if (config_.agents.size() > 1) NextEndpointLocked();
  }
  return last;
}

absl::StatusOr<v1::CallResponse> AgentClient::Call(v1::CallRequest& request) {
  uint64_t instance;
  {
    absl::MutexLock lock(&mu_);
    instance = instance_id_;
  }
  if (auto local = answers_.Answer(request, instance)) return *local;
  for (v1::CallRequest& init : answers_.Prepare(request)) answers_.LearnSent(init, Send(init));
  auto response = Send(request);
  answers_.Learn(request, response);
  return response;
}

absl::StatusOr<v1::CallResponse> AgentClient::Send(v1::CallRequest& request) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    std::shared_ptr<v1::Cryptoki::Stub> stub;
    {
      absl::MutexLock lock(&mu_);
      if (instance_id_ == 0) HSMUX_RETURN_IF_ERROR(OpenLocked());
      request.set_instance_id(instance_id_);
      StubLocked();
      stub = stub_;
      ++round_trips_;
    }
    const auto deadline = DeadlineIn(config_.call_timeout_ms);
    request.set_deadline_unix_ms(UnixMs(deadline));
    v1::CallResponse response;
    grpc::Status st = Exchange(stub, request, deadline, &response);
    if (st.ok()) return response;
    if (st.error_code() == grpc::StatusCode::NOT_FOUND && attempt == 0) {
      // The agent no longer knows this instance (lease expired or agent
      // restarted): register again; the old handles are gone with it.
      absl::MutexLock lock(&mu_);
      if (instance_id_ == request.instance_id()) instance_id_ = 0;
      continue;
    }
    LogLine(absl::StrCat("call ", request.function(), " failed: ", st.error_message()));
    if (st.error_code() == grpc::StatusCode::UNAVAILABLE) {
      // The agent went away. A channel that saw its agent go may never connect to the agent
      // that comes back on the same address (measured with Debian's gRPC: every reconnect ends
      // in "Handshake read failed" / "tcp handshaker shutdown" while a new channel connects at
      // once), so the next call starts with a new channel.
      absl::MutexLock lock(&mu_);
      if (stub_ == stub) {
        stub_.reset();
        channel_.reset();
        // With several agents configured, the next call registers with the
        // next one (a standby that took over the state directory); the old
        // instance's handles are gone with the old agent.
        if (config_.agents.size() > 1) {
          NextEndpointLocked();
          instance_id_ = 0;
        }
      }
    }
    return wire::StatusFromGrpc(st);
  }
  return wire::CkError(CKR_DEVICE_ERROR, "agent keeps forgetting the instance");
}

grpc::Status AgentClient::Exchange(const std::shared_ptr<v1::Cryptoki::Stub>& stub,
                                   const v1::CallRequest& request,
                                   std::chrono::system_clock::time_point deadline,
                                   v1::CallResponse* response) {
  if (streams_ != nullptr && streams_->UseStream()) {
    // A stream that broke while idle (the agent restarted, or dropped it)
    // fails before the request goes out: one more try on a new stream.
    for (int attempt = 0; attempt < 2; ++attempt) {
      CallStreams::Result r = streams_->Exchange(stub, request, deadline, response);
      if (r.status.ok() || r.sent) return r.status;
      if (r.refused) break;  // the agent's stream limit: unary below
      if (attempt == 1) return r.status;
    }
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(deadline);
  return stub->Call(&ctx, request, response);
}

void AgentClient::Heartbeat() {
  absl::MutexLock lock(&mu_);
  if (instance_id_ == 0) return;
  v1::HeartbeatRequest req;
  req.set_instance_id(instance_id_);
  v1::HeartbeatResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(config_.connect_timeout_ms));
  ++round_trips_;
  grpc::Status st = StubLocked()->Heartbeat(&ctx, req, &resp);
  if (st.ok() && !resp.known()) instance_id_ = 0;
}

void AgentClient::Close() {
  if (streams_ != nullptr) streams_->CloseAll();
  absl::MutexLock lock(&mu_);
  if (instance_id_ == 0 || stub_ == nullptr) return;
  v1::CloseRequest req;
  req.set_instance_id(instance_id_);
  v1::CloseResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(DeadlineIn(config_.connect_timeout_ms));
  ++round_trips_;
  (void)stub_->Close(&ctx, req, &resp);
  instance_id_ = 0;
}

AgentClient::TransportStats AgentClient::stats() const {
  TransportStats stats;
  {
    absl::MutexLock lock(&mu_);
    stats.round_trips = round_trips_;
  }
  if (streams_ != nullptr) {
    stats.streams_opened = streams_->opened();
    stats.streams_refused = streams_->refused();
  }
  return stats;
}

}  // namespace hsmux::module
