// A group: one virtual slot/token over its members. Fixed at start: slot and
// token identity from config, the mechanism list as the intersection of what
// every member supports and the wire can carry (DESIGN §2).
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "config.h"
#include "member.h"
#include "registry.h"
#include "wire/cryptoki.h"
#include "writer.h"

namespace hsmux::agent {

class Group {
 public:
  static absl::StatusOr<std::unique_ptr<Group>> Form(
      const GroupConfig& config, std::map<std::string, std::shared_ptr<MemberLibrary>>& libraries);

  const GroupConfig& config() const { return config_; }
  const std::map<CK_MECHANISM_TYPE, CK_MECHANISM_INFO>& mechanisms() const { return mechanisms_; }
  // The advertised list, in the first member's order (clients such as
  // pkcs11-tool walk it in order).
  const std::vector<CK_MECHANISM_TYPE>& mechanism_order() const { return order_; }
  size_t member_count() const { return members_.size(); }
  Member* member(size_t i) { return members_[i].get(); }

  Registry& registry() { return *registry_; }
  Writer& writer() { return *writer_; }

  // Routing (DESIGN §4): among healthy members holding the object, the one
  // with the fewest in-flight calls per unit of weight; ties rotate so equal
  // members share the load. nullopt if no healthy member holds it.
  std::optional<size_t> Route(const LogicalObject& object);
  // The same among members where `filter(i)` holds.
  std::optional<size_t> RouteWhere(const std::function<bool(size_t)>& filter);
  // A member for calls that need no object (random, digest, session keys).
  size_t AnyMember();

  // Runs `call` on a pooled session of the healthy member `filter` allows
  // with the fewest calls in flight, within the group's call deadline. On a
  // device-class failure (or CKR_GENERAL_ERROR from a member a probe then
  // finds sick) the member is reported and the call runs on the next one;
  // CKR_DEVICE_ERROR when none is left. `call` runs on a worker thread and
  // must own what it captures. `*used` (if given) is the member that
  // answered.
  CK_RV RunOnMember(
      const std::function<bool(size_t)>& filter,
      std::function<CK_RV(size_t member, CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE session)> call,
      const std::string& what, size_t* used = nullptr);

  // Health (DESIGN §5). A call's device-class failure makes the member a
  // suspect: it is probed at once, and only a failed probe takes it out.
  void Suspect(size_t member, CK_RV rv, const std::string& what);
  // Probes a member now (with the probe deadline); takes it out on failure.
  bool Probe(size_t member);
  // A member that missed a write the others took (a device failure after the
  // first member answered): out, so that recovery catches it up before it
  // serves again — it must not serve the old attributes or miss the object.
  void MissedWrite(size_t member, const std::string& what);
  // Operator actions: take a member out / let it back in (after catch-up).
  absl::Status Drain(const std::string& member);
  absl::Status Readmit(const std::string& member);
  // Starts the monitor thread: periodic probes and automatic recovery.
  void StartMonitor();

 private:
  explicit Group(GroupConfig config) : config_(std::move(config)) {}
  GroupConfig config_;
  std::vector<std::unique_ptr<Member>> members_;
  std::map<CK_MECHANISM_TYPE, CK_MECHANISM_INFO> mechanisms_;
  std::vector<CK_MECHANISM_TYPE> order_;
  void MarkDown(size_t member, const std::string& why);
  void Recover(size_t member);
  void MonitorLoop();

  std::unique_ptr<Registry> registry_;
  std::unique_ptr<Writer> writer_;
  std::atomic<uint64_t> rotate_{0};

  absl::Mutex monitor_mu_;
  std::set<size_t> suspects_ ABSL_GUARDED_BY(monitor_mu_);
};

}  // namespace hsmux::agent
