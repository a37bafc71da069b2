// The module's process-wide state: one per loaded copy of the library, on the
// heap and never destroyed (no global destructors run inside a host), created
// by C_Initialize and released by C_Finalize.
#pragma once

#include <sys/types.h>

#include <memory>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "agent_client.h"
#include "module_config.h"
#include "wire/cryptoki.h"

namespace grpc_event_engine::experimental {
class EventEngine;
}  // namespace grpc_event_engine::experimental

namespace hsmux::module {

class ModuleState {
 public:
  static ModuleState& Get();
  // pthread_atfork child handler: replaces the state with a fresh one (the
  // parent's is leaked). Installed by the first Initialize.
  static void ResetInChild();

  // C_Initialize after argument checks. CKR_CRYPTOKI_ALREADY_INITIALIZED if
  // this process initialised already; in a forked child the parent's state is
  // abandoned (never destroyed: its gRPC objects belong to the parent).
  absl::Status Initialize();
  // C_Finalize: tells the agent, stops the heartbeat, wakes blocked waits,
  // and (when the host does not use gRPC itself) shuts gRPC down, its threads
  // joined, before it returns, or at exit if something still holds the
  // channel then. Also run at exit if the host never called it.
  absl::Status Finalize();

  // True between C_Initialize and C_Finalize in this very process (a forked
  // child sees false until it initialises again).
  bool Initialized() const;

  // The client for a call, or CKR_CRYPTOKI_NOT_INITIALIZED.
  absl::StatusOr<std::shared_ptr<AgentClient>> Client() const;

  bool HasSlot(CK_SLOT_ID slot) const;
  std::vector<uint64_t> Slots() const;

  // C_WaitForSlotEvent without CKF_DONT_BLOCK: no slot ever changes, so it
  // blocks until C_Finalize and then answers CKR_CRYPTOKI_NOT_INITIALIZED.
  CK_RV BlockUntilFinalized();

 private:
  ModuleState() = default;
  void HeartbeatLoop(std::shared_ptr<AgentClient> client, uint32_t seconds);

  mutable absl::Mutex mu_;
  bool initialized_ ABSL_GUARDED_BY(mu_) = false;
  pid_t pid_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  ModuleConfig config_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<AgentClient> client_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<std::thread> heartbeat_ ABSL_GUARDED_BY(mu_);
  // Held from Initialize to Finalize, which destroys it (module_state.cc).
  std::shared_ptr<grpc_event_engine::experimental::EventEngine> engine_ ABSL_GUARDED_BY(mu_);
  // Every gRPC object in the process is the module's (gRPC was not
  // initialised when Initialize began, or only by what an earlier Finalize
  // left): Finalize tears gRPC down (module_state.cc, ReleaseGrpc).
  bool grpc_all_ours_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_heartbeat_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace hsmux::module
