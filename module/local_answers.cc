#include "local_answers.h"

#include <openssl/crypto.h>

#include "wire/attribute_kinds.h"
#include "wire/cryptoki.h"
#include "wire/function_table.h"

namespace hsmux::module {
namespace {

using wire::F;
using wire::OpKind;
using wire::Part;

// Keeps the memory bounded for hosts that churn through keys.
constexpr size_t kMaxAccepted = 4096;
constexpr size_t kMaxFixed = 1024;
// Searches with more matches than this stay on the agent (C_FindObjects
// pages through them there).
constexpr uint32_t kFindPrefetch = 1024;
constexpr size_t kMaxFoundObjects = 4096;
// The output room asked for when a length query is sent as the real call;
// a larger output comes back as CKR_BUFFER_TOO_SMALL with its length.
constexpr uint64_t kQueryCapacity = 16384;

F FunctionOf(const v1::CallRequest& r) { return static_cast<F>(r.function()); }

// Calls whose first argument is a session handle.
bool SessionScoped(F f) {
  switch (f) {
    case F::kInitialize:
    case F::kFinalize:
    case F::kGetInfo:
    case F::kGetFunctionList:
    case F::kGetSlotList:
    case F::kGetSlotInfo:
    case F::kGetTokenInfo:
    case F::kGetMechanismList:
    case F::kGetMechanismInfo:
    case F::kInitToken:
    case F::kOpenSession:
    case F::kCloseAllSessions:
    case F::kWaitForSlotEvent:
      return false;
    default:
      return true;
  }
}

// Answers fixed while the agent's groups are (DESIGN §2: the mechanism list
// is the intersection formed at start).
bool Fixed(F f) {
  return f == F::kGetMechanismList || f == F::kGetMechanismInfo || f == F::kGetSlotInfo;
}

std::string FixedKey(const v1::CallRequest& r) {
  v1::CallRequest key;
  key.set_function(r.function());
  *key.mutable_args() = r.args();
  return key.SerializeAsString();
}

v1::CallResponse Rv(uint64_t rv) {
  v1::CallResponse r;
  r.set_ck_rv(rv);
  return r;
}

size_t Index(OpKind k) { return static_cast<size_t>(k); }

// C_GetAttributeValue's object and attribute types: what a kept answer is
// for. Empty when the call is not one whose length query may be sent as a
// fetch (nested templates and mechanism lists are sized by the caller).
std::string AttributesKey(const v1::CallRequest& r) {
  if (r.args_size() < 3 || !r.args(1).has_ulong() || !r.args(2).has_queries()) return {};
  std::string key = std::to_string(r.args(1).ulong());
  for (const v1::AttributeQuery& q : r.args(2).queries().queries()) {
    switch (wire::KindOf(q.type())) {
      case wire::AttributeKind::kTemplate:
      case wire::AttributeKind::kMechanisms:
        return {};
      default:
        break;
    }
    key += "," + std::to_string(q.type());
  }
  return key;
}

// Attribute values can be key material (a non-sensitive secret's CKA_VALUE).
void Zero(v1::CallResponse& r) {
  for (v1::Value& v : *r.mutable_results()) {
    if (!v.has_answers()) continue;
    for (v1::AttributeAnswer& a : *v.mutable_answers()->mutable_answers()) {
      if (a.has_value() && a.value().has_bytes()) {
        std::string* b = a.mutable_value()->mutable_bytes();
        OPENSSL_cleanse(b->data(), b->size());
      }
    }
  }
  r.Clear();
}

// The kinds a call continues: one, or two for a dual-function update.
std::vector<OpKind> KindsOf(const wire::OpRole& role) {
  std::vector<OpKind> kinds{role.kind};
  if (role.second.has_value()) kinds.push_back(*role.second);
  return kinds;
}

// Whether the call asked only for the output length (a NULL buffer), which
// leaves the operation active when it succeeds.
bool LengthQuery(const v1::CallRequest& r) {
  for (const v1::Value& v : r.args()) {
    if (v.has_capacity()) return v.capacity().is_null();
  }
  return false;
}

// The Init's key handle (0 for C_DigestInit).
uint64_t InitKeyHandle(const v1::CallRequest& init) {
  return init.args_size() > 2 && init.args(2).has_ulong() ? init.args(2).ulong() : 0;
}

}  // namespace

void LocalAnswers::DropOutput(Session& s) {
  if (!s.output.has_value()) return;
  for (v1::Value& v : *s.output->response.mutable_results()) {
    if (v.has_output()) {
      std::string* d = v.mutable_output()->mutable_data();
      OPENSSL_cleanse(d->data(), d->size());
    }
  }
  OPENSSL_cleanse(s.output->input.data(), s.output->input.size());
  s.output.reset();
}

void LocalAnswers::DropAttributesLocked() {
  for (auto& [h, s] : sessions_) {
    if (s.attributes.has_value()) Zero(*s.attributes);
    s.attributes.reset();
  }
}

std::map<uint64_t, LocalAnswers::Session>::iterator LocalAnswers::EraseLocked(
    std::map<uint64_t, Session>::iterator it) {
  if (it->second.attributes.has_value()) Zero(*it->second.attributes);
  DropOutput(it->second);
  return sessions_.erase(it);
}

void LocalAnswers::EraseLocked(uint64_t session) {
  auto it = sessions_.find(session);
  if (it != sessions_.end()) EraseLocked(it);
}

void LocalAnswers::ResetLocked(uint64_t instance) {
  DropAttributesLocked();
  for (auto& [h, s] : sessions_) DropOutput(s);
  instance_ = instance;
  // Another instance may be another agent process, whose epoch starts anew.
  epoch_ = 0;
  sessions_.clear();
  accepted_.clear();
  found_attributes_.clear();
  fixed_.clear();
}

LocalAnswers::Session* LocalAnswers::FindLocked(const v1::CallRequest& request) {
  if (!SessionScoped(FunctionOf(request)) || request.args_size() == 0 ||
      !request.args(0).has_ulong()) {
    return nullptr;
  }
  auto it = sessions_.find(request.args(0).ulong());
  return it == sessions_.end() ? nullptr : &it->second;
}

std::optional<v1::CallResponse> LocalAnswers::Answer(const v1::CallRequest& request,
                                                     uint64_t instance) {
  absl::MutexLock lock(&mu_);
  if (instance != instance_) ResetLocked(instance);
  if (instance == 0) return std::nullopt;
  const F f = FunctionOf(request);
  if (Fixed(f)) {
    auto it = fixed_.find(FixedKey(request));
    if (it != fixed_.end()) return it->second;
    return std::nullopt;
  }
  if (f == F::kFindObjectsInit || f == F::kFindObjects || f == F::kFindObjectsFinal) {
    return AnswerFindLocked(request);
  }
  if (f == F::kGetAttributeValue) return AnswerAttributesLocked(request);
  const std::optional<wire::OpRole> role = wire::OperationOf(f);
  if (!role.has_value()) return std::nullopt;
  Session* s = FindLocked(request);
  if (s == nullptr) return std::nullopt;
  for (OpKind k : KindsOf(*role)) {
    if (uint64_t rv = s->refused[Index(k)]; rv != CKR_OK) {
      // The Init this module answered was refused when it reached the agent.
      s->refused[Index(k)] = CKR_OK;
      s->state[Index(k)] = OpState::kIdle;
      return Rv(rv);
    }
  }
  if (s->output.has_value() && s->output->kind == Index(role->kind)) {
    if (auto local = AnswerOutputLocked(*s, request, *role)) return local;
  }
  if (role->part == Part::kInit) return AnswerInitLocked(request, *role);
  if (request.local_error() != 0 && s->kept[Index(role->kind)].has_value() &&
      !role->second.has_value()) {
    // Bad arguments inside an operation the agent has not seen yet: it ends
    // here, and there is nothing to tell the agent.
    s->kept[Index(role->kind)].reset();
    s->state[Index(role->kind)] = OpState::kIdle;
    return Rv(request.local_error());
  }
  return std::nullopt;
}

std::optional<v1::CallResponse> LocalAnswers::AnswerOutputLocked(Session& s,
                                                                 const v1::CallRequest& request,
                                                                 const wire::OpRole& role) {
  const size_t k = s.output->kind;
  if (role.part == Part::kInit) return Rv(CKR_OPERATION_ACTIVE);  // the caller's is active
  if (request.local_error() != 0) {
    // Bad arguments end the caller's operation; the agent's ended already.
    DropOutput(s);
    s.state[k] = OpState::kIdle;
    return Rv(request.local_error());
  }
  if (role.part != Part::kSingle) {
    // A multi-part call after a single-part one (agent/handlers_crypto.cc
    // OperationCall): CKR_OPERATION_ACTIVE, and the operation ends. The
    // session had no other operation (Prepare), so nothing else ends.
    DropOutput(s);
    s.state[k] = OpState::kIdle;
    return Rv(CKR_OPERATION_ACTIVE);
  }
  const v1::OutputCapacity* cap = nullptr;
  for (const v1::Value& v : request.args()) {
    if (v.has_capacity()) cap = &v.capacity();
  }
  if (cap == nullptr || request.function() != s.output->function || request.args_size() < 2 ||
      request.args(1).bytes() != s.output->input) {
    return std::nullopt;  // another call: the Init goes again with it (Prepare)
  }
  const v1::OutputBytes& out = s.output->response.results(0).output();
  if (cap->is_null()) return s.output->response;  // the length again
  if (cap->capacity() < out.length()) {
    v1::CallResponse r = Rv(CKR_BUFFER_TOO_SMALL);
    r.add_results()->mutable_output()->set_length(out.length());
    return r;
  }
  v1::CallResponse r = s.output->response;
  DropOutput(s);
  s.state[k] = OpState::kIdle;
  return r;
}

std::optional<v1::CallResponse> LocalAnswers::AnswerAttributesLocked(
    const v1::CallRequest& request) {
  Session* s = FindLocked(request);
  if (s == nullptr || request.args_size() < 3 || !request.args(2).has_queries()) {
    return std::nullopt;
  }
  if (auto it = found_attributes_.find(request.args(1).ulong()); it != found_attributes_.end()) {
    v1::CallResponse r = Rv(CKR_OK);
    auto* answers = r.add_results()->mutable_answers();
    bool all = true;
    for (const v1::AttributeQuery& q : request.args(2).queries().queries()) {
      auto a = it->second.find(q.type());
      if (a == it->second.end()) {
        all = false;
        break;
      }
      *answers->add_answers() = a->second;
    }
    if (all) return r;
  }
  // The fetch after a length query: the answer kept from it, used once.
  if (!s->attributes.has_value()) return std::nullopt;
  std::optional<v1::CallResponse> kept;
  kept.swap(s->attributes);
  if (s->attributes_key == AttributesKey(request)) return kept;
  Zero(*kept);
  return std::nullopt;
}

std::optional<v1::CallResponse> LocalAnswers::AnswerInitLocked(const v1::CallRequest& request,
                                                               const wire::OpRole& role) {
  Session* s = FindLocked(request);
  const size_t k = Index(role.kind);
  if (s->kept[k].has_value()) return Rv(CKR_OPERATION_ACTIVE);  // active, the agent not told yet
  if (s->state[k] != OpState::kIdle) return std::nullopt;
  if (request.args_size() < 2 || !request.args(1).has_mechanism()) return std::nullopt;
  const v1::Mechanism& mech = request.args(1).mechanism();
  if (mech.params_case() != v1::Mechanism::PARAMS_NOT_SET && !defer_parameters_) {
    // Whether a member accepts a parameter is the member's to say, at Init
    // (unless the operator chose parameter_checks: deferred).
    return std::nullopt;
  }
  if (!accepted_.count({s->slot, k, mech.type(), InitKeyHandle(request)})) return std::nullopt;
  s->kept[k] = request;
  s->state[k] = OpState::kActive;
  return Rv(CKR_OK);
}

std::optional<v1::CallResponse> LocalAnswers::AnswerFindLocked(const v1::CallRequest& request) {
  Session* s = FindLocked(request);
  if (s == nullptr || !s->found.has_value()) return std::nullopt;
  switch (FunctionOf(request)) {
    case F::kFindObjectsInit:
      return Rv(CKR_OPERATION_ACTIVE);
    case F::kFindObjects: {
      if (request.args_size() < 2) return std::nullopt;
      v1::CallResponse r = Rv(CKR_OK);
      auto* list = r.add_results()->mutable_ulongs();
      while (!s->found->empty() &&
             static_cast<uint64_t>(list->values_size()) < request.args(1).ulong()) {
        list->add_values(s->found->front());
        s->found->pop_front();
      }
      return r;
    }
    default:  // C_FindObjectsFinal
      s->found.reset();
      return Rv(CKR_OK);
  }
}

std::vector<v1::CallRequest> LocalAnswers::Prepare(v1::CallRequest& request) {
  absl::MutexLock lock(&mu_);
  std::vector<v1::CallRequest> first;
  const F f = FunctionOf(request);
  if (f == F::kCloseAllSessions && request.args_size() > 0) {
    // Kept Inits die with their sessions; the agent never needs them.
    for (auto& [h, s] : sessions_) {
      if (s.slot == request.args(0).ulong()) s.kept = {};
    }
    return first;
  }
  Session* s = FindLocked(request);
  if (s == nullptr) return first;
  if (f == F::kFindObjectsInit) {
    request.set_find_prefetch(kFindPrefetch);
    return first;
  }
  if (f == F::kGetAttributeValue && !AttributesKey(request).empty()) {
    // A length query is sent as a fetch: the fetch after it is then local.
    bool query = false;
    for (auto& q : *request.mutable_args(2)->mutable_queries()->mutable_queries()) {
      query |= !q.want_value();
      q.set_want_value(true);
    }
    s->attributes_query_sent = query;
    return first;
  }
  if (f == F::kCloseSession) {
    s->kept = {};
    return first;
  }
  if (f == F::kLogin || f == F::kLogout) {
    // A login or logout changes what the kept Inits would see (and a
    // context-specific login must reach the operation): every kept Init of
    // the slot reaches the agent first.
    const uint64_t slot = s->slot;
    for (auto& [h, other] : sessions_) {
      if (other.slot != slot) continue;
      for (auto& kept : other.kept) {
        if (kept.has_value()) first.push_back(std::move(*kept));
        kept.reset();
      }
    }
    return first;
  }
  const std::optional<wire::OpRole> role = wire::OperationOf(f);
  if (!role.has_value() || role->part == Part::kInit) return first;
  const size_t rk = Index(role->kind);
  if (s->output.has_value() && s->output->kind == rk) {
    // The agent's operation ended with the length query; this call differs
    // from it, so the operation starts there again.
    DropOutput(*s);
    if (s->last_init[rk].has_value()) *request.add_carried_inits() = *s->last_init[rk];
    return first;
  }
  if (role->part == Part::kSingle && !role->second.has_value() &&
      (s->kept[rk].has_value() || s->last_init[rk].has_value()) && request.local_error() == 0) {
    v1::OutputCapacity* cap = nullptr;
    for (v1::Value& v : *request.mutable_args()) {
      if (v.has_capacity()) cap = v.mutable_capacity();
    }
    bool alone = true;
    for (size_t k = 0; k < s->state.size(); ++k) {
      if (k != rk && s->state[k] != OpState::kIdle) alone = false;
    }
    if (cap != nullptr && cap->is_null() && alone && request.args_size() > 1) {
      cap->set_is_null(false);
      cap->set_capacity(std::max<uint64_t>(kQueryCapacity, request.args(1).bytes().size() + 1024));
      s->query_sent[rk] = true;
    }
  }
  for (OpKind k : KindsOf(*role)) {
    if (s->kept[Index(k)].has_value()) {
      *request.add_carried_inits() = std::move(*s->kept[Index(k)]);
      s->kept[Index(k)].reset();
    }
  }
  return first;
}

void LocalAnswers::Learn(const v1::CallRequest& request,
                         absl::StatusOr<v1::CallResponse>& response) {
  absl::MutexLock lock(&mu_);
  // An answer under another instance than the one known here: the client
  // registered anew (the old handles are gone with the old instance).
  if (request.instance_id() != instance_) ResetLocked(request.instance_id());
  const F f = FunctionOf(request);
  const std::optional<wire::OpRole> role = wire::OperationOf(f);
  if (!response.ok()) {
    // No answer: the agent may or may not have run the call.
    if (f == F::kOpenSession || f == F::kCloseAllSessions) return;
    if (Session* s = FindLocked(request)) {
      s->query_sent = {};
      s->attributes_query_sent = false;
      if (role.has_value() || request.carried_inits_size() > 0) {
        for (auto& st : s->state) {
          if (st != OpState::kIdle) st = OpState::kUnknown;
        }
        for (const auto& init : request.carried_inits()) {
          if (auto r = wire::OperationOf(FunctionOf(init))) {
            s->state[Index(r->kind)] = OpState::kUnknown;
          }
        }
        if (role.has_value()) {
          for (OpKind k : KindsOf(*role)) s->state[Index(k)] = OpState::kUnknown;
        }
      }
      if (f == F::kCloseSession) EraseLocked(request.args(0).ulong());
    }
    return;
  }
  const v1::CallResponse& resp = *response;
  if (resp.epoch() > epoch_) {
    epoch_ = resp.epoch();
    accepted_.clear();
    found_attributes_.clear();
    DropAttributesLocked();
  }
  const uint64_t rv = resp.ck_rv();
  switch (f) {
    case F::kOpenSession:
      if (rv == CKR_OK && resp.results_size() > 0 && resp.results(0).has_ulong() &&
          request.args_size() > 0) {
        Session& s = sessions_[resp.results(0).ulong()];
        s = Session{};
        s.slot = request.args(0).ulong();
      }
      return;
    case F::kCloseSession:
      if (request.args_size() > 0) EraseLocked(request.args(0).ulong());
      return;
    case F::kCloseAllSessions:
      for (auto it = sessions_.begin(); it != sessions_.end();) {
        it = request.args_size() > 0 && it->second.slot == request.args(0).ulong() ? EraseLocked(it)
                                                                                   : std::next(it);
      }
      return;
    default:
      break;
  }
  if (Fixed(f)) {
    if (rv == CKR_OK && fixed_.size() < kMaxFixed) fixed_[FixedKey(request)] = resp;
    return;
  }
  if (f == F::kGetAttributeValue) {
    Session* s = FindLocked(request);
    const std::string key = AttributesKey(request);
    if (s == nullptr || !s->attributes_query_sent) return;
    s->attributes_query_sent = false;  // only a length query's answer is kept
    if (rv != CKR_OK || key.empty() || resp.epoch() != epoch_) return;
    if (s->attributes.has_value()) Zero(*s->attributes);
    s->attributes = resp;
    s->attributes_key = key;
    return;
  }
  if (f == F::kFindObjectsInit) {
    Session* s = FindLocked(request);
    if (s != nullptr && rv == CKR_OK && resp.results_size() > 0 && resp.results(0).has_ulongs()) {
      const auto& values = resp.results(0).ulongs().values();
      s->found.emplace(values.begin(), values.end());
      if (resp.epoch() != epoch_) return;
      if (found_attributes_.size() + resp.found_attributes_size() > kMaxFoundObjects) {
        found_attributes_.clear();
      }
      for (const v1::ObjectAttributes& o : resp.found_attributes()) {
        if (o.types_size() != o.answers().answers_size()) continue;
        auto& kept = found_attributes_[o.handle()];
        kept.clear();
        for (int i = 0; i < o.types_size(); ++i) kept[o.types(i)] = o.answers().answers(i);
      }
    }
    return;
  }
  if (!role.has_value()) return;
  if (role->part == Part::kInit) {
    LearnInitLocked(request, rv, resp.epoch());
    return;
  }
  // Carried Inits ran first; past the first refused one, nothing ran.
  const int carried = request.carried_inits_size();
  const int done = carried > 0 ? static_cast<int>(resp.carried_done()) : 0;
  for (int i = 0; i < carried; ++i) {
    const v1::CallRequest& init = request.carried_inits(i);
    if (i < done) {
      LearnInitLocked(init, CKR_OK, resp.epoch());
    } else if (i == done) {
      LearnInitLocked(init, rv, resp.epoch());
    } else if (Session* s = FindLocked(init)) {
      if (auto r = wire::OperationOf(FunctionOf(init))) s->state[Index(r->kind)] = OpState::kIdle;
    }
  }
  if (done < carried) return;
  const size_t rk = Index(role->kind);
  Session* qs = role->part == Part::kSingle ? FindLocked(request) : nullptr;
  if (qs != nullptr && qs->query_sent[rk]) {
    Session* s = qs;
    s->query_sent[rk] = false;
    if (rv == CKR_BUFFER_TOO_SMALL) {
      // The output is larger than asked for: the agent answered the length
      // and its operation goes on, which is what a length query gives.
      response->set_ck_rv(CKR_OK);
      s->state[rk] = OpState::kActive;
      return;
    }
    if (rv == CKR_OK && resp.results_size() > 0 && resp.results(0).has_output()) {
      DropOutput(*s);
      s->output = Session::Output{rk, request.function(), request.args(1).bytes(), resp};
      s->state[rk] = OpState::kActive;  // the caller's operation goes on
      return;
    }
  }
  LearnOperationLocked(request, *role, rv);
}

void LocalAnswers::LearnSent(const v1::CallRequest& init,
                             const absl::StatusOr<v1::CallResponse>& response) {
  const uint64_t rv = response.ok() ? response->ck_rv() : CKR_DEVICE_ERROR;
  if (rv == CKR_OK) {
    absl::StatusOr<v1::CallResponse> copy = response;
    Learn(init, copy);
    return;
  }
  absl::MutexLock lock(&mu_);
  if (init.instance_id() != instance_) return;
  Session* s = FindLocked(init);
  const std::optional<wire::OpRole> role = wire::OperationOf(FunctionOf(init));
  if (s == nullptr || !role.has_value()) return;
  s->state[Index(role->kind)] = OpState::kIdle;
  s->refused[Index(role->kind)] = rv;
}

void LocalAnswers::LearnInitLocked(const v1::CallRequest& init, uint64_t rv, uint64_t epoch) {
  Session* s = FindLocked(init);
  const std::optional<wire::OpRole> role = wire::OperationOf(FunctionOf(init));
  if (s == nullptr || !role.has_value()) return;
  const size_t k = Index(role->kind);
  switch (rv) {
    case CKR_OK: {
      s->state[k] = OpState::kActive;
      s->last_init[k] = init;
      s->last_init[k]->clear_instance_id();
      if (epoch != epoch_ || init.args_size() < 2 || !init.args(1).has_mechanism()) break;
      const v1::Mechanism& mech = init.args(1).mechanism();
      if (mech.params_case() != v1::Mechanism::PARAMS_NOT_SET && !defer_parameters_) break;
      if (accepted_.size() >= kMaxAccepted) accepted_.clear();
      accepted_.insert({s->slot, k, mech.type(), InitKeyHandle(init)});
      break;
    }
    case CKR_OPERATION_ACTIVE:
      s->state[k] = OpState::kActive;
      break;
    // The agent checks "already active" before these (agent/handlers_crypto.cc
    // RunInit): none leaves an operation active.
    case CKR_MECHANISM_INVALID:
    case CKR_MECHANISM_PARAM_INVALID:
    case CKR_KEY_HANDLE_INVALID:
    case CKR_KEY_TYPE_INCONSISTENT:
    case CKR_KEY_FUNCTION_NOT_PERMITTED:
      s->state[k] = OpState::kIdle;
      break;
    default:
      s->state[k] = OpState::kUnknown;
      break;
  }
}

void LocalAnswers::LearnOperationLocked(const v1::CallRequest& request, const wire::OpRole& role,
                                        uint64_t rv) {
  Session* s = FindLocked(request);
  if (s == nullptr) return;
  if (rv == CKR_BUFFER_TOO_SMALL) return;  // the operation goes on
  if (rv == CKR_OK) {
    if (role.part == Part::kUpdate || LengthQuery(request)) return;
    for (OpKind k : KindsOf(role)) s->state[Index(k)] = OpState::kIdle;
    return;
  }
  // An error ends this operation; the agent may end the session's others
  // with it (their member session is closed), so those become unknown.
  for (auto& st : s->state) {
    if (st != OpState::kIdle) st = OpState::kUnknown;
  }
  for (OpKind k : KindsOf(role)) s->state[Index(k)] = OpState::kIdle;
}

}  // namespace hsmux::module
