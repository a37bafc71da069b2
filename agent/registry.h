// The registry of a group's logical token objects (DESIGN §3): logical object
// -> the replica on each member, with the non-sensitive attributes that
// C_FindObjects and C_GetAttributeValue are answered from. Built by
// discovery at start, kept by every write through the agent.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "hsmux/v1/cryptoki.pb.h"
#include "object_reader.h"
#include "state_store.h"

namespace hsmux::agent {

class Group;

// The label of the group's replication key on every member; reserved.
inline constexpr char kReplicationKeyLabel[] = "hsmux-replication-key";
// Objects being written carry this label prefix until they are complete on
// every healthy member, so a crash leaves them recognisable.
inline constexpr char kPendingLabelPrefix[] = "hsmux-pending-";

struct LogicalObject {
  uint64_t id = 0;
  uint64_t store_id = 0;    // its row in the state store (0: not stored yet)
  ObjectSnapshot snapshot;  // attributes as clients see them (weakest values)
  std::string fingerprint;
  std::vector<CK_OBJECT_HANDLE> handles;  // per member; CK_INVALID_HANDLE: absent
  // Why replicas are considered one object: "attributes", "function",
  // "created" (made by the agent), or "unproven" (one member only).
  std::string proof;

  bool OnMember(size_t i) const { return i < handles.size() && handles[i] != CK_INVALID_HANDLE; }
};

struct DiscoveryReport {
  size_t objects = 0;     // logical objects
  size_t merged = 0;      // of them, with replicas on more than one member
  size_t unproven = 0;    // kept apart: nothing proves identity across members
  size_t ambiguous = 0;   // kept apart: several candidates on one member
  std::vector<std::string> notes;  // one line per refusal, for logs and hsmuxctl
};

class Registry {
 public:
  explicit Registry(size_t member_count) : member_count_(member_count) {}

  // Keeps the registry in the state store (DESIGN §3 "persistent registry"):
  // every logical object with its replicas, by member name.
  void set_store(StateStore* store, uint64_t slot_id, std::vector<std::string> member_names) {
    store_ = store;
    slot_id_ = slot_id;
    member_names_ = std::move(member_names);
  }

  // Rebuilds the registry from the members' token objects. Members whose
  // index is in `skip` (unreachable) are left out.
  absl::StatusOr<DiscoveryReport> Discover(Group& group);

  std::shared_ptr<const LogicalObject> Get(uint64_t id) const;
  std::vector<std::shared_ptr<const LogicalObject>> All() const;
  // Adds a new object (its id is assigned) and returns the id.
  uint64_t Add(LogicalObject object);
  void Replace(std::shared_ptr<const LogicalObject> object);
  void Remove(uint64_t id);

  // Logical objects matching a template, or nullopt if the template names an
  // attribute the registry does not keep (the caller then asks a member).
  std::optional<std::vector<uint64_t>> Match(const v1::AttributeList& tmpl) const;

  // The replication key's handle on each member (CK_INVALID_HANDLE: none).
  std::vector<CK_OBJECT_HANDLE> replication_keys() const;
  void SetReplicationKey(size_t member, CK_OBJECT_HANDLE handle);
  // Member objects found with the pending label (left by a crash).
  std::vector<std::pair<size_t, CK_OBJECT_HANDLE>> pending_found() const;

  const DiscoveryReport& last_report() const { return report_; }

 private:
  // Writes the object's row; returns its store id (0 on failure, logged).
  uint64_t Persist(const LogicalObject& object);

  const size_t member_count_;
  StateStore* store_ = nullptr;
  uint64_t slot_id_ = 0;
  std::vector<std::string> member_names_;
  mutable absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, std::shared_ptr<const LogicalObject>> objects_ ABSL_GUARDED_BY(mu_);
  std::vector<CK_OBJECT_HANDLE> rk_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<size_t, CK_OBJECT_HANDLE>> pending_ ABSL_GUARDED_BY(mu_);
  DiscoveryReport report_;
};

// True if two wire attributes hold the same value.
bool SameValue(const v1::Attribute& a, const v1::Attribute& b);

}  // namespace hsmux::agent
