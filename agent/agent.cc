#include "agent.h"

#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "dispatch.h"
#include "log.h"
#include "recent_errors.h"
#include "view_epoch.h"
#include "wire/errors.h"
#include "wire/function_table.h"
#include "wire/operations.h"

namespace hsmux::agent {

uint64_t NewHandle() {
  static absl::Mutex mu(absl::kConstInit);
  static std::mt19937_64* rng = new std::mt19937_64(std::random_device{}());
  absl::MutexLock lock(&mu);
  return ((*rng)() % ((1ULL << 31) - 1)) + 1;
}

std::string PeerIdentity::Describe() const {
  std::string s = "CN=" + common_name;
  if (!sans.empty()) absl::StrAppend(&s, " SAN=", absl::StrJoin(sans, ","));
  return s;
}

absl::StatusOr<std::unique_ptr<Agent>> Agent::Start(AgentConfig config) {
  std::unique_ptr<Agent> agent(new Agent(std::move(config)));
  HSMUX_ASSIGN_OR_RETURN(agent->store_,
                         OpenSqliteStateStore(agent->config_.state_dir + "/hsmux-state.db"));
  agent->pins_ = std::make_unique<ClientPins>(*agent->store_, agent->config_.max_pin_failures);
  for (const GroupConfig& gc : agent->config_.groups) {
    HSMUX_ASSIGN_OR_RETURN(auto group, Group::Form(gc, agent->libraries_));
    group->writer().set_store(agent->store_.get());
    std::vector<std::string> names;
    for (const MemberConfig& mc : gc.members) names.push_back(mc.name);
    group->registry().set_store(agent->store_.get(), gc.slot_id, std::move(names));
    HSMUX_ASSIGN_OR_RETURN(DiscoveryReport report, group->registry().Discover(*group));
    // Writes a crash left unacknowledged are undone before anyone is served.
    group->writer().RollBackPending();
    LogInfo(absl::StrCat("group ", gc.label, ": registry has ", report.objects, " objects (",
                         report.merged, " on several members, ", report.unproven, " unproven, ",
                         report.ambiguous, " ambiguous)"));
    for (const std::string& note : report.notes)
      LogWarning(absl::StrCat("group ", gc.label, ": ", note));
    group->StartMonitor();
    agent->groups_[gc.slot_id] = std::move(group);
  }
  return agent;
}

const ClientConfig* Agent::Authorize(const PeerIdentity& peer) const {
  for (const ClientConfig& c : config_.clients) {
    if (!c.common_name.empty() && c.common_name == peer.common_name) return &c;
    if (!c.san.empty()) {
      for (const std::string& san : peer.sans) {
        if (san == c.san) return &c;
      }
    }
  }
  return nullptr;
}

std::shared_ptr<Instance> Agent::OpenInstance(const ClientConfig* client,
                                              const std::string& identity) {
  auto inst = std::make_shared<Instance>();
  inst->client = client;
  inst->identity = identity;
  {
    absl::MutexLock ilock(&inst->mu);
    inst->expires = absl::Now() + absl::Seconds(config_.lease_seconds);
  }
  absl::MutexLock lock(&mu_);
  do {
    // Instance IDs are 63-bit random: not guessable by another client.
    static absl::Mutex rng_mu(absl::kConstInit);
    static std::mt19937_64* rng = new std::mt19937_64(std::random_device{}());
    absl::MutexLock rlock(&rng_mu);
    inst->id = ((*rng)() >> 1) | 1;
  } while (instances_.count(inst->id));
  instances_[inst->id] = inst;
  LogInfo(absl::StrCat("instance ", inst->id, " opened by ", identity));
  return inst;
}

std::shared_ptr<Instance> Agent::FindInstance(uint64_t id, const std::string& identity) {
  absl::MutexLock lock(&mu_);
  auto it = instances_.find(id);
  if (it == instances_.end() || it->second->identity != identity) return nullptr;
  return it->second;
}

bool Agent::RenewLease(uint64_t id, const std::string& identity) {
  auto inst = FindInstance(id, identity);
  if (inst == nullptr) return false;
  RenewLease(*inst);
  return true;
}

void Agent::RenewLease(Instance& instance) {
  absl::MutexLock lock(&instance.mu);
  instance.expires = absl::Now() + absl::Seconds(config_.lease_seconds);
}

void Agent::CloseInstance(uint64_t id, const std::string& identity) {
  std::shared_ptr<Instance> inst;
  {
    absl::MutexLock lock(&mu_);
    auto it = instances_.find(id);
    if (it == instances_.end() || it->second->identity != identity) return;
    inst = it->second;
    instances_.erase(it);
  }
  DropInstance(inst, "finalized");
}

void Agent::ReapExpired() {
  std::vector<std::shared_ptr<Instance>> expired;
  const absl::Time now = absl::Now();
  {
    absl::MutexLock lock(&mu_);
    for (auto it = instances_.begin(); it != instances_.end();) {
      bool dead;
      {
        absl::MutexLock ilock(&it->second->mu);
        dead = it->second->expires < now;
      }
      if (dead) {
        expired.push_back(it->second);
        it = instances_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& inst : expired) DropInstance(inst, "lease expired");
}

void Agent::DropInstance(const std::shared_ptr<Instance>& instance, const char* why) {
  std::vector<std::shared_ptr<ClientSession>> sessions;
  {
    absl::MutexLock lock(&instance->mu);
    for (auto& [h, s] : instance->sessions) sessions.push_back(s);
  }
  for (auto& s : sessions) CloseClientSession(*instance, s);
  LogInfo(absl::StrCat("instance ", instance->id, " (", instance->identity, ") closed: ", why, ", ",
                       sessions.size(), " sessions"));
}

bool Agent::TakeStreamPlace() {
  uint32_t open = open_streams_.load();
  do {
    if (open >= config_.max_streams) return false;
  } while (!open_streams_.compare_exchange_weak(open, open + 1));
  return true;
}

void Agent::GiveStreamPlace() { open_streams_.fetch_sub(1); }

std::pair<uint64_t, uint64_t> Agent::Counts() {
  absl::MutexLock lock(&mu_);
  uint64_t sessions = 0;
  for (auto& [id, inst] : instances_) {
    absl::MutexLock ilock(&inst->mu);
    sessions += inst->sessions.size();
  }
  return {instances_.size(), sessions};
}

absl::Status Agent::CreateReplicationKey(uint64_t slot) {
  Group* group = GroupForSlot(slot);
  if (group == nullptr) return absl::NotFoundError(absl::StrCat("no group on slot ", slot));
  return group->writer().CreateReplicationKey();
}

Group* Agent::GroupForSlot(uint64_t slot) {
  auto it = groups_.find(slot);
  return it == groups_.end() ? nullptr : it->second.get();
}

void Agent::CloseClientSession(Instance& instance, const std::shared_ptr<ClientSession>& session) {
  absl::MutexLock slock(&session->mu);
  Group* group = session->group;
  if (session->op_member >= 0) {
    group->member(session->op_member)->Release(session->op_session, /*dirty=*/true);
    session->op_member = -1;
  }
  session->active = {};
  session->pending = {};
  std::vector<ObjectRef> owned;
  {
    absl::MutexLock lock(&instance.mu);
    for (auto it = instance.objects.begin(); it != instance.objects.end();) {
      if (it->second.owner_session == session->handle) {
        owned.push_back(it->second);
        instance.object_index.erase({it->second.member, it->second.member_handle});
        it = instance.objects.erase(it);
      } else {
        ++it;
      }
    }
    instance.sessions.erase(session->handle);
    bool any_on_slot = false;
    for (auto& [h, s] : instance.sessions) {
      if (s->slot_id == session->slot_id) any_on_slot = true;
    }
    // Closing the last session of a slot logs the instance out of it.
    if (!any_on_slot && instance.logged_in_slots.erase(session->slot_id) > 0) {
      AdvanceViewEpoch();
    }
  }
  if (!owned.empty()) AdvanceViewEpoch();
  for (const ObjectRef& ref : owned) {
    Member* m = group->member(ref.member);
    absl::MutexLock hlock(&m->holder_mutex());
    m->fn()->C_DestroyObject(m->holder(), ref.member_handle);
  }
}

namespace {

// Functions that can change what a C_*Init answers for some instance: the
// epoch moves before (so an answer computed during the change is not kept
// past it) and after them.
bool ChangesView(wire::F f) {
  using wire::F;
  switch (f) {
    case F::kCreateObject:
    case F::kCopyObject:
    case F::kDestroyObject:
    case F::kSetAttributeValue:
    case F::kGenerateKey:
    case F::kGenerateKeyPair:
    case F::kUnwrapKey:
    case F::kDeriveKey:
    case F::kLogin:
    case F::kLogout:
    case F::kCloseAllSessions:
      return true;
    default:
      return false;
  }
}

}  // namespace

CK_RV Agent::RunCarriedInits(const std::shared_ptr<Instance>& instance,
                             const v1::CallRequest& request, v1::CallResponse& response) {
  const int n = request.carried_inits_size();
  if (n == 0) return CKR_OK;
  // The module carries at most a dual function's two Inits, each for the
  // session this call is on; anything else is a malformed request.
  const bool session_call = request.args_size() > 0 && request.args(0).has_ulong();
  for (int i = 0; i < n; ++i) {
    const v1::CallRequest& init = request.carried_inits(i);
    const auto role = wire::OperationOf(static_cast<wire::F>(init.function()));
    if (n > 2 || !session_call || !role.has_value() || role->part != wire::Part::kInit ||
        init.carried_inits_size() != 0 || init.args_size() == 0 || !init.args(0).has_ulong() ||
        init.args(0).ulong() != request.args(0).ulong()) {
      LogWarning(absl::StrCat("instance ", instance->id, ": ",
                              wire::FunctionName(request.function()),
                              " refused: malformed carried Init"));
      return CKR_ARGUMENTS_BAD;
    }
    v1::CallResponse scratch;
    CallContext ctx(*this, instance, init, scratch);
    const CK_RV rv = Dispatch(ctx);
    if (rv != CKR_OK) {
      LogInfo(absl::StrCat("instance ", instance->id, ": carried ",
                           wire::FunctionName(init.function()), " -> ", wire::CkRvName(rv),
                           " (reported on ", wire::FunctionName(request.function()), ")"));
      response.set_carried_done(static_cast<uint32_t>(i));
      return rv;
    }
  }
  response.set_carried_done(static_cast<uint32_t>(n));
  return CKR_OK;
}

void Agent::Call(const std::shared_ptr<Instance>& instance, const v1::CallRequest& request,
                 v1::CallResponse& response) {
  response.set_call_id(request.call_id());
  const bool changes_view = ChangesView(static_cast<wire::F>(request.function()));
  if (changes_view) AdvanceViewEpoch();
  CK_RV rv = RunCarriedInits(instance, request, response);
  if (rv == CKR_OK) {
    CallContext ctx(*this, instance, request, response);
    rv = Dispatch(ctx);
  }
  if (changes_view) AdvanceViewEpoch();
  response.set_epoch(ViewEpoch());
  // Results travel only with CKR_OK, and with CKR_BUFFER_TOO_SMALL (which
  // carries the needed length).
  if (rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL) response.clear_results();
  response.set_ck_rv(rv);
  if (count_call_) count_call_(ClientKey(*instance->client), rv);
  if (rv == CKR_DEVICE_ERROR) {
    RecordError("call", "", "",
                absl::StrCat(wire::FunctionName(request.function()),
                             " answered CKR_DEVICE_ERROR to ", ClientKey(*instance->client)));
  }
}

bool Agent::AnyMemberHealthy() {
  for (const auto& [slot, group] : groups_) {
    for (size_t i = 0; i < group->member_count(); ++i) {
      if (group->member(i)->healthy.load()) return true;
    }
  }
  return false;
}

}  // namespace hsmux::agent
