// What the module answers itself, from what the agent told it earlier, so
// that a logical operation costs one transport round trip (issue 6,
// docs/decisions/0010-round-trips.md):
//
// - static information: the mechanism list and each mechanism's info, and
//   the slot info, kept per registered instance (they are fixed when the
//   agent forms its groups); token info is not kept (its flags and counters
//   change);
// - C_*Init: answered CKR_OK here only when the agent answered the very same
//   Init (slot, operation, mechanism without a parameter, key) with CKR_OK
//   at the agent's current view epoch, and the module knows the session is
//   open with no operation of that kind: every error the spec gives C_*Init
//   depends on exactly those facts, so the agent would answer CKR_OK again.
//   The Init is then kept and carried with the operation's next call.
// - a length query of attributes: C_GetAttributeValue with NULL values is
//   sent as a fetch of the values, and the fetch of the same attributes of
//   the same object that follows is answered from it (one round trip); the
//   same for a single-part call (C_Sign, C_Encrypt, C_Decrypt, C_Digest)
//   whose length query is sent as the real call when the session has no
//   other operation: the call with a buffer and the same input is answered
//   from it (the output is zeroed when dropped); any other call of that
//   operation sends the Init again first, as the agent's ended;
// - a search: C_FindObjectsInit asks the agent for every match (up to
//   kFindPrefetch); C_FindObjects and C_FindObjectsFinal are then answered
//   here, so a search costs one round trip; when it found few objects,
//   their registry-kept attributes came with it and C_GetAttributeValue of
//   those is answered here until the view epoch moves.
//
// Everything else, and every case of doubt, goes to the agent. The module
// mirrors each session's operation state from the agent's answers; a state
// it cannot be sure of is "unknown", which only ever sends calls to the
// agent.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "hsmux/v1/cryptoki.pb.h"
#include "wire/operations.h"

namespace hsmux::module {

class LocalAnswers {
 public:
  // `defer_parameter_checks`: module config parameter_checks: deferred.
  explicit LocalAnswers(bool defer_parameter_checks = false)
      : defer_parameters_(defer_parameter_checks) {}

  // The answer to `request` without a round trip, if the module has one.
  // `instance` is the agent instance the module is registered as now (0:
  // none); everything learnt under another instance is forgotten first.
  std::optional<v1::CallResponse> Answer(const v1::CallRequest& request, uint64_t instance);

  // Before `request` is sent: moves the session's kept Inits that this call
  // continues into request.carried_inits, and returns kept Inits that must
  // reach the agent first, on their own (before a login or logout).
  std::vector<v1::CallRequest> Prepare(v1::CallRequest& request);

  // After the agent answered `request` (sent as instance
  // request.instance_id()), or the transport failed: learns the operation state
  // and keepable answers.
  // May adjust the answer the caller sees (a length query sent as a fetch).
  void Learn(const v1::CallRequest& request, absl::StatusOr<v1::CallResponse>& response);
  // The same for a kept Init sent on its own (from Prepare): the caller had
  // CKR_OK for it already, so a refusal is kept for the operation's next call.
  void LearnSent(const v1::CallRequest& init, const absl::StatusOr<v1::CallResponse>& response);

 private:
  enum class OpState { kIdle, kActive, kUnknown };
  struct Session {
    uint64_t slot = 0;
    std::array<OpState, wire::kOpKinds> state{};
    // Inits answered here, not yet sent (they go with the next call).
    std::array<std::optional<v1::CallRequest>, wire::kOpKinds> kept;
    // A kept Init the agent refused when it had to be sent on its own: the
    // next call of that kind answers this.
    std::array<uint64_t, wire::kOpKinds> refused{};
    // A search the agent answered in full at C_FindObjectsInit: the handles
    // C_FindObjects has not returned yet.
    std::optional<std::deque<uint64_t>> found;
    // The last C_GetAttributeValue answer with every value (a length query
    // is sent as a fetch), for the fetch that follows it: request key and
    // answer. Used once, zeroed when dropped.
    std::string attributes_key;
    std::optional<v1::CallResponse> attributes;
    bool attributes_query_sent = false;  // the call in flight is such a query
    // The last Init the agent accepted per kind: sent again when a single-part
    // call's length query was run in full (below) and a different call follows.
    std::array<std::optional<v1::CallRequest>, wire::kOpKinds> last_init;
    // A single-part call's length query (C_Sign with a NULL buffer...) sent
    // as the real call: its answer, for the call with a buffer that follows.
    // The agent's operation ended with it; the caller's has not.
    struct Output {
      size_t kind = 0;
      uint32_t function = 0;
      std::string input;
      v1::CallResponse response;
    };
    std::optional<Output> output;
    std::array<bool, wire::kOpKinds> query_sent{};
  };
  // (slot, operation kind, mechanism type, key handle or 0).
  using InitKey = std::tuple<uint64_t, size_t, uint64_t, uint64_t>;

  void ResetLocked(uint64_t instance) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Forgets a session, zeroing what it kept.
  std::map<uint64_t, Session>::iterator EraseLocked(std::map<uint64_t, Session>::iterator it)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EraseLocked(uint64_t session) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops (and zeroes) every session's kept attribute answer.
  void DropAttributesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops (and zeroes) a session's kept single-part output.
  static void DropOutput(Session& s);
  std::optional<v1::CallResponse> AnswerOutputLocked(Session& s, const v1::CallRequest& request,
                                                     const wire::OpRole& role)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::optional<v1::CallResponse> AnswerInitLocked(const v1::CallRequest& request,
                                                   const wire::OpRole& role)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::optional<v1::CallResponse> AnswerAttributesLocked(const v1::CallRequest& request)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::optional<v1::CallResponse> AnswerFindLocked(const v1::CallRequest& request)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LearnInitLocked(const v1::CallRequest& init, uint64_t rv, uint64_t epoch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void LearnOperationLocked(const v1::CallRequest& request, const wire::OpRole& role, uint64_t rv)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Session* FindLocked(const v1::CallRequest& request) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const bool defer_parameters_;
  absl::Mutex mu_;
  uint64_t instance_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t epoch_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<uint64_t, Session> sessions_ ABSL_GUARDED_BY(mu_);
  std::set<InitKey> accepted_ ABSL_GUARDED_BY(mu_);
  // Attributes of objects a search found, as the agent answered them with it
  // (CallResponse.found_attributes): object handle -> type -> answer.
  std::map<uint64_t, std::map<uint64_t, v1::AttributeAnswer>> found_attributes_
      ABSL_GUARDED_BY(mu_);
  // Static answers by request (function and arguments, serialised).
  std::map<std::string, v1::CallResponse> fixed_ ABSL_GUARDED_BY(mu_);
};

}  // namespace hsmux::module
