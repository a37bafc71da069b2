// What the agent keeps per client: instances (one C_Initialize of one
// process), their sessions, login state and object handles. Every handle is
// the agent's own, scoped to its instance (DESIGN §2).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "wire/operations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "config.h"
#include "hsmux/v1/cryptoki.pb.h"
#include "wire/cryptoki.h"

namespace hsmux::agent {

class Group;

// An object as one instance sees it: a token object of the group's registry
// (logical_id != 0), or a session object on one member.
struct ObjectRef {
  uint64_t logical_id = 0;                       // token objects
  size_t member = 0;                             // session objects: where it lives
  CK_OBJECT_HANDLE member_handle = CK_INVALID_HANDLE;
  uint64_t owner_session = 0;                    // session objects: the owner
  int is_private = -1;                           // -1: not read yet
  // Session objects made by C_CreateObject: the template, kept in agent
  // memory only, to make the object again on another member if its member
  // fails (DESIGN §3). Generated session keys have none and are lost.
  std::shared_ptr<const v1::AttributeList> create_template;
};

// The cryptographic operations a session can have active.
using wire::OpKind;
using wire::kOpKinds;
// Whether an active operation has seen a single-part or a multi-part call:
// mixing the two is refused (CKR_OPERATION_ACTIVE).
enum class OpMode { kNone, kSingle, kMulti };

// An operation initialised by the client and checked by the agent, whose
// member Init has not run yet (it runs with the first call carrying data).
struct PendingOp {
  v1::Mechanism mechanism;
  std::optional<ObjectRef> key;
  uint64_t key_handle = 0;  // the instance's handle, to look the key up again
};

struct ClientSession {
  absl::Mutex mu;  // one call at a time on a session, as Cryptoki requires
  uint64_t handle = 0;
  uint64_t slot_id = 0;
  bool rw = false;
  Group* group = nullptr;

  std::array<bool, kOpKinds> active{};
  std::array<OpMode, kOpKinds> mode{};
  std::array<std::optional<PendingOp>, kOpKinds> pending{};
  // For failover: each active operation's Init, the input its multi-part
  // calls processed so far, and whether replaying it gives the same result.
  std::array<std::optional<PendingOp>, kOpKinds> inits{};
  std::array<std::string, kOpKinds> replay{};
  std::array<bool, kOpKinds> replayable{};
  // The member session leased while any operation is active.
  int op_member = -1;
  CK_SESSION_HANDLE op_session = CK_INVALID_HANDLE;

  bool find_active = false;
  std::vector<uint64_t> find_results;
  size_t find_pos = 0;

  bool AnyActive() const {
    for (bool a : active) {
      if (a) return true;
    }
    return false;
  }
};

struct Instance {
  uint64_t id = 0;
  std::string identity;  // for logs and the ownership check on every call
  const ClientConfig* client = nullptr;

  absl::Mutex mu;
  absl::Time expires ABSL_GUARDED_BY(mu);
  std::map<uint64_t, std::shared_ptr<ClientSession>> sessions ABSL_GUARDED_BY(mu);
  std::set<uint64_t> logged_in_slots ABSL_GUARDED_BY(mu);
  std::map<uint64_t, ObjectRef> objects ABSL_GUARDED_BY(mu);
  // Session objects by (member, member handle); token objects by logical id.
  std::map<std::pair<size_t, CK_OBJECT_HANDLE>, uint64_t> object_index ABSL_GUARDED_BY(mu);
  std::map<uint64_t, uint64_t> logical_index ABSL_GUARDED_BY(mu);
  // Where this instance's session objects are made, so that they can be
  // used together (wrap one session key with another); -1: not chosen yet.
  int home_member ABSL_GUARDED_BY(mu) = -1;
};

// Random handles in [1, 2^31): never 0, below 2^32 (Windows CK_ULONG), and
// not guessable from another instance's.
uint64_t NewHandle();

}  // namespace hsmux::agent
