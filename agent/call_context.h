// One call being served: typed access to its arguments (in the order the
// function table gives), its results, and the lookups every handler needs
// (session, object and key handles of this instance).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "group.h"
#include "hsmux/v1/cryptoki.pb.h"
#include "instance.h"
#include "wire/cryptoki.h"
#include "wire/errors.h"

// Handlers answer a CK_RV: these unwrap Status/StatusOr into it.
#define HSMUX_RV_IF_ERROR(expr)               \
  do {                                        \
    ::absl::Status rv_status_ = (expr);       \
    if (!rv_status_.ok()) return ::hsmux::wire::GetCkRv(rv_status_); \
  } while (0)
#define ASSIGN_OR_RV(lhs, expr) ASSIGN_OR_RV_IMPL_(HSMUX_CONCAT_(rv_sor_, __LINE__), lhs, expr)
#define ASSIGN_OR_RV_IMPL_(tmp, lhs, expr)                           \
  auto tmp = (expr);                                                 \
  if (!tmp.ok()) return ::hsmux::wire::GetCkRv(tmp.status());        \
  lhs = std::move(tmp).value()

namespace hsmux::agent {

class Agent;

// The most bytes the agent allocates for one output buffer; a larger
// capacity is clamped (a member needing more answers CKR_BUFFER_TOO_SMALL).
inline constexpr uint64_t kMaxOutputBytes = 16u << 20;

class CallContext {
 public:
  CallContext(Agent& agent, const std::shared_ptr<Instance>& instance,
              const v1::CallRequest& request, v1::CallResponse& response)
      : agent_(agent), instance_(instance), request_(request), response_(response) {}

  Agent& agent() { return agent_; }
  Instance& instance() { return *instance_; }
  const v1::CallRequest& request() const { return request_; }

  // Argument readers: a missing or mistyped argument is CKR_ARGUMENTS_BAD.
  absl::StatusOr<uint64_t> Ulong(int i) const;
  absl::StatusOr<const std::string*> Bytes(int i) const;
  absl::StatusOr<const v1::OutputCapacity*> Capacity(int i) const;
  absl::StatusOr<const v1::AttributeList*> Attributes(int i) const;
  absl::StatusOr<const v1::AttributeQueryList*> Queries(int i) const;
  absl::StatusOr<const v1::Mechanism*> Mechanism(int i) const;

  // The whole answer, for fields beside the results (found_attributes).
  v1::CallResponse& response() { return response_; }
  // Results, appended in the order of the function's output parameters.
  v1::Value* AddResult() { return response_.add_results(); }
  void AddUlong(uint64_t v) { AddResult()->set_ulong(v); }
  // The last result added, as a CK_ULONG (0 if there is none).
  uint64_t LastResultUlong() const {
    const int n = response_.results_size();
    return n == 0 ? 0 : response_.results(n - 1).ulong();
  }

  // The caller's session (args[0]), or CKR_SESSION_HANDLE_INVALID.
  absl::StatusOr<std::shared_ptr<ClientSession>> Session() const;
  // The group of a slot this identity may use, or CKR_SLOT_ID_INVALID.
  absl::StatusOr<Group*> SlotGroup(uint64_t slot) const;
  bool LoggedIn(uint64_t slot) const;

  // Per-identity allow-lists (DESIGN §2): what is not allowed is absent.
  const GroupAccess* Access(uint64_t slot) const;
  bool MechanismAllowed(uint64_t slot, CK_MECHANISM_TYPE type) const;
  // Keys (secret, private, public) whose label or ID matches the identity's
  // patterns; other objects always.
  bool ObjectAllowed(uint64_t slot, CK_OBJECT_CLASS cls, const std::string& label,
                     const std::string& cka_id) const;
  // The group has the mechanism and this identity may use it, else
  // CKR_MECHANISM_INVALID.
  CK_RV CheckMechanism(const ClientSession& session, CK_MECHANISM_TYPE type) const;

  // An object handle of this instance. `invalid_rv` is the code for a handle
  // the instance does not have (CKR_OBJECT_HANDLE_INVALID,
  // CKR_KEY_HANDLE_INVALID, CKR_WRAPPING_KEY_HANDLE_INVALID, ...). Private
  // objects are absent before login.
  absl::StatusOr<ObjectRef> Object(const ClientSession& session, uint64_t handle,
                                   CK_RV invalid_rv);
  // The instance's handle for a session object, made if it has none yet.
  uint64_t MapObject(size_t member, CK_OBJECT_HANDLE member_handle, uint64_t owner_session);
  // The instance's handle for a token object of the registry.
  uint64_t MapLogical(uint64_t logical_id);
  // Remembers the template a session object was created from.
  void KeepTemplate(uint64_t handle, const v1::AttributeList& tmpl);
  void UnmapObject(uint64_t handle);
  // True when the instance holds max_objects_per_instance handles.
  bool ObjectLimitReached() const;

  // Where to run a call on an object: a member holding it (routed for token
  // objects) and the object's handle there. `invalid_rv` if no healthy
  // member holds it any more.
  absl::StatusOr<std::pair<size_t, CK_OBJECT_HANDLE>> Place(Group& group, const ObjectRef& ref,
                                                            CK_RV invalid_rv);
  // The member this instance's session objects are made on (chosen once,
  // chosen again if it is down).
  size_t HomeMember(Group& group);
  // The handle of an object on a given member, or CK_INVALID_HANDLE.
  CK_OBJECT_HANDLE HandleOn(Group& group, const ObjectRef& ref, size_t member);

 private:
  Agent& agent_;
  std::shared_ptr<Instance> instance_;
  const v1::CallRequest& request_;
  v1::CallResponse& response_;
};

// An output buffer sized from the caller's capacity, and its answer.
class OutputBuffer {
 public:
  explicit OutputBuffer(const v1::OutputCapacity& cap)
      : is_null_(cap.is_null()),
        len_(static_cast<CK_ULONG>(std::min<uint64_t>(cap.capacity(), kMaxOutputBytes))) {
    if (!is_null_) buf_.resize(len_);
  }
  CK_BYTE_PTR ptr() {
    return is_null_ ? nullptr : reinterpret_cast<CK_BYTE_PTR>(buf_.data());
  }
  CK_ULONG* len() { return &len_; }
  bool is_null() const { return is_null_; }
  // Writes the answer for the module: the length, and the bytes when written.
  void Answer(CK_RV rv, v1::Value* out) {
    auto* o = out->mutable_output();
    o->set_length(len_);
    if (rv == CKR_OK && !is_null_) o->set_data(buf_.data(), std::min<size_t>(len_, buf_.size()));
  }

 private:
  bool is_null_;
  CK_ULONG len_;
  std::string buf_;
};

}  // namespace hsmux::agent
