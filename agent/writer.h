// Every write to a group's token objects goes through the Writer, which makes
// it reach every healthy member (DESIGN §3):
//  - public objects (certificates, data objects, public keys made by
//    C_CreateObject, and every C_CopyObject) by replaying the call on each
//    member;
//  - keys made by C_GenerateKey(Pair), C_CreateObject, C_UnwrapKey or
//    C_DeriveKey under the `wrap` policy by making them extractable on one
//    member, wrapping them there under the group's replication key, unwrapping
//    them on the others with the same attributes, then sealing them
//    (CKA_EXTRACTABLE=false) unless the caller asked for an extractable key;
//    the public half of a generated pair is copied attribute by attribute.
// While a write is under way its objects carry a pending label, so clients
// cannot see them and a crash leaves them recognisable. The journal records
// each finished create (with the key wrapped, never clear) before the caller
// hears of it, so that a member that was down catches up when it returns.
// Every member call runs with a deadline; a member that fails or overruns
// during a write is reported to the health monitor and left to catch-up.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "hsmux/v1/cryptoki.pb.h"
#include "registry.h"
#include "state_store.h"

namespace hsmux::agent {

class Group;

class Writer {
 public:
  Writer(Group& group, Registry& registry) : group_(group), registry_(registry) {}
  void set_store(StateStore* store) { store_ = store; }

  // Runs the creating call on one member's holder session with the
  // (adjusted) templates, writing the new member handles in template order.
  // It runs on a worker thread and may outlive the call that started it, so
  // it must own what it captures (values, not references).
  using MakeFn = std::function<CK_RV(size_t member, CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE holder,
                                     const std::vector<v1::AttributeList>& templates,
                                     std::vector<CK_OBJECT_HANDLE>* made)>;

  enum class How {
    kReplay,      // run `make` on every member (public objects, copies)
    kKeysByWrap,  // run `make` on `source`, replicate keys by wrapping
  };

  // The templates are the caller's; `is_key[i]` says whether templates[i]
  // makes a secret or private key. Returns the new logical objects in
  // template order, or the CK_RV to answer (the source member's refusal is
  // the caller's error; a member failing after that is left to catch-up).
  absl::StatusOr<std::vector<uint64_t>> Create(How how, size_t source,
                                               std::vector<v1::AttributeList> templates,
                                               const std::vector<bool>& is_key, MakeFn make,
                                               bool keygen);

  // Destroys the object on every member and leaves a tombstone.
  CK_RV Destroy(uint64_t logical_id);

  // Applies attribute changes on every member; all or none.
  CK_RV SetAttributes(uint64_t logical_id, const v1::AttributeList& changes);

  // Makes the group's replication key on every member from one random value
  // (never stored or logged). Fails if any member already has one.
  absl::Status CreateReplicationKey();

  // Rolls back writes a crash left unacknowledged: destroys every member
  // object that still carries a pending label. Called at start.
  void RollBackPending();

  // Brings a returning member up to date (DESIGN §5 "Recovery"): finds its
  // objects, drops leftovers of unfinished writes and tombstoned objects,
  // makes journalled objects it missed, aligns changed attributes, and
  // records its replicas in the registry, then marks it healthy — all while
  // no write runs, so none can slip past it. Errors leave the member out.
  absl::Status CatchUp(size_t member);

 private:
  // Runs a call on a member with the write deadline; reports failures.
  // `recovering`: the member is being caught up and not healthy yet.
  CK_RV OnMember(size_t member, bool keygen,
                 std::function<CK_RV(CK_FUNCTION_LIST*, CK_SESSION_HANDLE holder)> call,
                 bool recovering = false);
  // Destroys member objects made by a write that did not complete; returns
  // the (member, object) pairs it could not destroy.
  std::vector<std::pair<size_t, size_t>> Undo(const std::vector<std::vector<CK_OBJECT_HANDLE>>& made);
  uint64_t Journal(const std::string& op, uint64_t logical_id, const v1::JournalPayload& payload,
                   const std::string& state);
  void JournalState(uint64_t seq, const std::string& state);
  // `external` policy: waits for the vendor's copies of new objects.
  void WaitForExternalCopies(size_t source, size_t count,
                             std::vector<std::vector<CK_OBJECT_HANDLE>>* made);

  Group& group_;
  Registry& registry_;
  StateStore* store_ = nullptr;
  // Writes share it; catch-up takes it alone.
  absl::Mutex catchup_mu_;
  // Objects of failed writes on members that did not answer, dropped when
  // the member is caught up.
  struct Orphan {
    size_t member;
    CK_OBJECT_CLASS object_class;
    std::string fingerprint;
  };
  absl::Mutex orphans_mu_;
  std::vector<Orphan> orphans_ ABSL_GUARDED_BY(orphans_mu_);
};

}  // namespace hsmux::agent
