// The module's side of the wire: one mTLS channel to the current agent, the
// instance it registered there, and calls with deadlines.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "call_stream.h"
#include "hsmux/v1/cryptoki.grpc.pb.h"
#include "local_answers.h"
#include "module_config.h"

namespace hsmux::module {

class AgentClient {
 public:
  // Reads the TLS files. Errors (CKR_GENERAL_ERROR) for unreadable files.
  static absl::StatusOr<std::unique_ptr<AgentClient>> Create(const ModuleConfig& config);

  // Sends one call, registering an instance first if there is none (or the
  // agent forgot it). A non-OK status carries the CK_RV for a transport or
  // agent failure (grpc_status_map.h); Cryptoki outcomes are in ck_rv.
  // Answers it without a round trip when the module can (local_answers.h).
  absl::StatusOr<v1::CallResponse> Call(v1::CallRequest& request);

  // Renews the lease; registers again if the agent no longer knows us.
  void Heartbeat();

  // Closes the threads' streams and tells the agent the instance is gone
  // (C_Finalize). Best effort.
  void Close();

  // What the transport did so far (for benchmarks and tests).
  struct TransportStats {
    uint64_t round_trips = 0;
    uint64_t streams_opened = 0;
    uint64_t streams_refused = 0;
  };
  TransportStats stats() const;

 private:
  AgentClient(ModuleConfig config, std::string ca, std::string cert, std::string key);

  // One round trip.
  absl::StatusOr<v1::CallResponse> Send(v1::CallRequest& request);
  // One request and its answer: on the thread's stream, or as a unary Call
  // when streams are off or the agent refused this thread's stream.
  grpc::Status Exchange(const std::shared_ptr<v1::Cryptoki::Stub>& stub,
                        const v1::CallRequest& request,
                        std::chrono::system_clock::time_point deadline, v1::CallResponse* response);
  // The stub of the current endpoint, created on first use.
  v1::Cryptoki::Stub* StubLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Registers an instance, trying each endpoint in turn.
  absl::Status OpenLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void NextEndpointLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ModuleConfig config_;
  const std::string ca_pem_, cert_pem_, key_pem_;

  mutable absl::Mutex mu_;
  size_t endpoint_ ABSL_GUARDED_BY(mu_) = 0;
  std::shared_ptr<grpc::Channel> channel_ ABSL_GUARDED_BY(mu_);
  // Shared so that a call in flight keeps its stub while another thread replaces it.
  std::shared_ptr<v1::Cryptoki::Stub> stub_ ABSL_GUARDED_BY(mu_);
  uint64_t instance_id_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t round_trips_ ABSL_GUARDED_BY(mu_) = 0;
  LocalAnswers answers_;
  // Null when the config says transport: unary.
  std::unique_ptr<CallStreams> streams_;
};

}  // namespace hsmux::module
