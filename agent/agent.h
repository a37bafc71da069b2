// The agent's core, independent of gRPC: groups, instances and their leases,
// and call dispatch.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "client_pins.h"
#include "config.h"
#include "group.h"
#include "hsmux/v1/cryptoki.pb.h"
#include "instance.h"
#include "state_store.h"

namespace hsmux::agent {

// Who is calling, from the verified client certificate.
struct PeerIdentity {
  std::string common_name;
  std::vector<std::string> sans;
  std::string Describe() const;
};

class Agent {
 public:
  // Loads every member library, logs in to every member, forms the groups.
  static absl::StatusOr<std::unique_ptr<Agent>> Start(AgentConfig config);

  const AgentConfig& config() const { return config_; }

  // The configured client an identity is, or nullptr.
  const ClientConfig* Authorize(const PeerIdentity& peer) const;

  std::shared_ptr<Instance> OpenInstance(const ClientConfig* client, const std::string& identity);
  // The instance, if it exists and belongs to this identity.
  std::shared_ptr<Instance> FindInstance(uint64_t id, const std::string& identity);
  bool RenewLease(uint64_t id, const std::string& identity);
  // The same for an instance already found (every call: one lookup, not two).
  void RenewLease(Instance& instance);
  void CloseInstance(uint64_t id, const std::string& identity);
  // Closes the sessions of instances whose lease ran out.
  void ReapExpired();

  void Call(const std::shared_ptr<Instance>& instance, const v1::CallRequest& request,
            v1::CallResponse& response);

  Group* GroupForSlot(uint64_t slot);
  const std::map<uint64_t, std::unique_ptr<Group>>& groups() const { return groups_; }
  StateStore& store() { return *store_; }
  ClientPins& pins() { return *pins_; }
  // Counts served calls per identity and outcome (metrics); may be unset.
  void set_call_counter(std::function<void(const std::string&, CK_RV)> count) {
    count_call_ = std::move(count);
  }
  // True while some group has a healthy member (gRPC health: SERVING).
  bool AnyMemberHealthy();

  // Instances and client sessions now, for status.
  std::pair<uint64_t, uint64_t> Counts();

  // CallStreams (service.cc): a place for one more, false when
  // config().max_streams are open; each taken place is given back once.
  bool TakeStreamPlace();
  void GiveStreamPlace();
  uint32_t open_streams() const { return open_streams_.load(); }

  // Operator actions (hsmuxctl over the admin socket).
  absl::Status CreateReplicationKey(uint64_t slot);

  // Closes one client session: ends its operations, destroys its session
  // objects on the members. Caller holds no instance lock.
  void CloseClientSession(Instance& instance, const std::shared_ptr<ClientSession>& session);

 private:
  std::atomic<uint32_t> open_streams_{0};
  explicit Agent(AgentConfig config) : config_(std::move(config)) {}
  // Runs the C_*Init calls the module carried with `request`; CKR_OK when
  // all passed (response.carried_done says how many did).
  CK_RV RunCarriedInits(const std::shared_ptr<Instance>& instance, const v1::CallRequest& request,
                        v1::CallResponse& response);
  void DropInstance(const std::shared_ptr<Instance>& instance, const char* why);

  AgentConfig config_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<ClientPins> pins_;
  std::function<void(const std::string&, CK_RV)> count_call_;
  std::map<std::string, std::shared_ptr<MemberLibrary>> libraries_;
  std::map<uint64_t, std::unique_ptr<Group>> groups_;

  absl::Mutex mu_;
  std::map<uint64_t, std::shared_ptr<Instance>> instances_ ABSL_GUARDED_BY(mu_);
};

}  // namespace hsmux::agent
