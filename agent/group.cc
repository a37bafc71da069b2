#include "group.h"

#include <algorithm>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "audit.h"
#include "log.h"
#include "recent_errors.h"
#include "view_epoch.h"
#include "wire/errors.h"
#include "wire/mechanism_codec.h"

namespace hsmux::agent {

absl::StatusOr<std::unique_ptr<Group>> Group::Form(
    const GroupConfig& config, std::map<std::string, std::shared_ptr<MemberLibrary>>& libraries) {
  std::unique_ptr<Group> group(new Group(config));
  bool first = true;
  for (const MemberConfig& mc : config.members) {
    HSMUX_ASSIGN_OR_RETURN(auto library, MemberLibrary::Load(mc.library, libraries));
    auto member = std::make_unique<Member>(mc, library);
    member->ConfigurePool(config.pool_min_sessions, config.pool_max_sessions, config.pool_wait_ms,
                          config.call_timeout_ms);
    absl::Status connected = member->Connect(absl::Milliseconds(config.probe_timeout_ms * 5));
    if (!connected.ok()) {
      // The group serves without it; the health monitor brings it in when
      // it answers (after catching it up).
      member->set_down_reason(std::string(connected.message()));
      LogWarning(absl::StrCat("member ", mc.name, " is down at start: ", connected.message()));
      RecordError("member_out", config.label, mc.name,
                  absl::StrCat("down at start: ", connected.message()));
      group->members_.push_back(std::move(member));
      continue;
    }
    HSMUX_ASSIGN_OR_RETURN(auto mechs, member->Mechanisms());
    if (first) {
      for (const auto& [type, info] : mechs) {
        group->mechanisms_[type] = info;
        group->order_.push_back(type);
      }
      first = false;
    } else {
      // Intersection: largest minimum key size, smallest maximum, common flags.
      for (auto it = group->mechanisms_.begin(); it != group->mechanisms_.end();) {
        auto other = std::find_if(mechs.begin(), mechs.end(),
                                  [&](const auto& m) { return m.first == it->first; });
        if (other == mechs.end()) {
          LogWarning(absl::StrCat("group ", config.label, ": ", wire::MechanismName(it->first),
                                  " left out: member ", mc.name, " lacks it"));
          it = group->mechanisms_.erase(it);
          continue;
        }
        it->second.ulMinKeySize = std::max(it->second.ulMinKeySize, other->second.ulMinKeySize);
        it->second.ulMaxKeySize = std::min(it->second.ulMaxKeySize, other->second.ulMaxKeySize);
        it->second.flags &= other->second.flags;
        ++it;
      }
    }
    member->healthy.store(true);
    group->members_.push_back(std::move(member));
  }
  if (first) {
    return wire::CkError(CKR_DEVICE_ERROR,
                         absl::StrCat("group ", config.label, ": no member answers at start"));
  }
  for (auto it = group->mechanisms_.begin(); it != group->mechanisms_.end();) {
    if (!wire::CanCarryMechanism(it->first)) {
      LogWarning(absl::StrCat("group ", config.label, ": ", wire::MechanismName(it->first),
                              " left out: the wire has no codec for its parameters"));
      it = group->mechanisms_.erase(it);
    } else {
      ++it;
    }
  }
  std::vector<CK_MECHANISM_TYPE> kept;
  for (CK_MECHANISM_TYPE t : group->order_) {
    if (group->mechanisms_.count(t)) kept.push_back(t);
  }
  group->order_ = std::move(kept);
  group->registry_ = std::make_unique<Registry>(group->members_.size());
  group->writer_ = std::make_unique<Writer>(*group, *group->registry_);
  LogInfo(absl::StrCat("group ", config.label, " (slot ", config.slot_id,
                       "): ", group->members_.size(), " members, ", group->mechanisms_.size(),
                       " mechanisms"));
  return group;
}

std::optional<size_t> Group::RouteWhere(const std::function<bool(size_t)>& filter) {
  const size_t n = members_.size();
  const size_t start = rotate_.fetch_add(1) % n;
  std::optional<size_t> best;
  double best_load = 0;
  for (size_t k = 0; k < n; ++k) {
    const size_t i = (start + k) % n;
    Member* m = members_[i].get();
    if (!m->healthy.load() || !filter(i)) continue;
    const double load = static_cast<double>(m->inflight.load()) / std::max<uint32_t>(m->weight, 1);
    if (!best.has_value() || load < best_load) {
      best = i;
      best_load = load;
    }
  }
  return best;
}

std::optional<size_t> Group::Route(const LogicalObject& object) {
  return RouteWhere([&](size_t i) { return object.OnMember(i); });
}

size_t Group::AnyMember() {
  auto any = RouteWhere([](size_t) { return true; });
  return any.value_or(0);
}

CK_RV Group::RunOnMember(const std::function<bool(size_t)>& filter,
                         std::function<CK_RV(size_t, CK_FUNCTION_LIST*, CK_SESSION_HANDLE)> call,
                         const std::string& what, size_t* used) {
  std::set<size_t> excluded;
  for (size_t attempt = 0; attempt < members_.size(); ++attempt) {
    auto member = RouteWhere([&](size_t i) { return !excluded.count(i) && filter(i); });
    if (!member.has_value()) break;
    const size_t i = *member;
    Member* m = members_[i].get();
    auto session = m->Acquire();
    CK_RV rv;
    if (!session.ok()) {
      rv = CKR_DEVICE_ERROR;
    } else {
      InFlight f(m);
      auto state = std::make_shared<int>(0);
      const CK_SESSION_HANDLE h = *session;
      rv = m->Invoke<int>(
          absl::Milliseconds(config_.call_timeout_ms), state,
          [call, i, h](CK_FUNCTION_LIST* fn, int&) { return call(i, fn, h); }, h);
      if (rv == CKR_GENERAL_ERROR && !Probe(i)) rv = CKR_DEVICE_ERROR;
      m->Release(h, rv != CKR_OK);
    }
    if (!IsDeviceFailure(rv)) {
      if (used != nullptr) *used = i;
      return rv;
    }
    if (rv == kMemberTimedOut) {
      // The worker still runs with `call`'s state: a second attempt would
      // share it. Report the member and answer; the next call goes elsewhere.
      Suspect(i, rv, what);
      m->failovers.fetch_add(1);
      return CKR_DEVICE_ERROR;
    }
    // Probed now, so that a caller whose object lives only there (a session
    // object) sees the member out and can make the object again elsewhere.
    LogWarning(
        absl::StrCat("member ", m->name(), ": ", what, " answered ",
                     rv == kMemberTimedOut ? std::string("nothing in time") : wire::CkRvName(rv)));
    RecordError("member_call", config_.label, m->name(),
                absl::StrCat(what, " answered ", wire::CkRvName(rv), "; moved off the member"));
    Probe(i);
    excluded.insert(i);
    m->failovers.fetch_add(1);
    LogWarning(absl::StrCat(what, " moves off member ", m->name()));
  }
  return CKR_DEVICE_ERROR;
}

void Group::Suspect(size_t member, CK_RV rv, const std::string& what) {
  const std::string answer =
      rv == kMemberTimedOut ? std::string("nothing in time") : wire::CkRvName(rv);
  LogWarning(absl::StrCat("member ", members_[member]->name(), ": ", what, " answered ", answer,
                          "; probing it"));
  RecordError("member_call", config_.label, members_[member]->name(),
              absl::StrCat(what, " answered ", answer, "; probing it"));
  absl::MutexLock lock(&monitor_mu_);
  suspects_.insert(member);
}

namespace {
struct ProbeState {
  CK_SLOT_ID slot;
  CK_SESSION_HANDLE holder;
  CK_RV rv = CKR_OK;
  std::string why;
};
}  // namespace

bool Group::Probe(size_t i) {
  Member* m = members_[i].get();
  if (!m->healthy.load()) return false;
  auto st = std::make_shared<ProbeState>();
  st->slot = m->slot();
  st->holder = m->holder();
  CK_RV rv = m->Invoke<ProbeState>(
      absl::Milliseconds(config_.probe_timeout_ms), st,
      [](CK_FUNCTION_LIST* fn, ProbeState& p) {
        CK_TOKEN_INFO token;
        std::memset(&token, 0, sizeof(token));
        CK_RV r = fn->C_GetTokenInfo(p.slot, &token);
        if (r != CKR_OK) return r;
        CK_SESSION_INFO info;
        std::memset(&info, 0, sizeof(info));
        r = fn->C_GetSessionInfo(p.holder, &info);
        if (r != CKR_OK) return r;
        // The agent's login must still hold.
        return info.state == CKS_RW_USER_FUNCTIONS ? CKR_OK : CKR_USER_NOT_LOGGED_IN;
      },
      st->holder);
  if (rv == CKR_OK) return true;
  MarkDown(i, rv == kMemberTimedOut ? "probe got no answer in time"
                                    : "probe answered " + wire::CkRvName(rv));
  return false;
}

void Group::MissedWrite(size_t i, const std::string& what) {
  if (!members_[i]->healthy.load()) return;
  MarkDown(i, absl::StrCat("missed ", what, "; catch-up aligns it"));
}

void Group::MarkDown(size_t i, const std::string& why) {
  AdvanceViewEpoch();  // session keys on it are gone (view_epoch.h)
  Member* m = members_[i].get();
  if (!m->healthy.exchange(false)) return;
  m->set_down_reason(why);
  m->Disconnect();
  LogError(absl::StrCat("group ", config_.label, ": member ", m->name(), " taken out: ", why));
  // An operator's drain is no error.
  if (!m->drained.load()) RecordError("member_out", config_.label, m->name(), "taken out: " + why);
}

void Group::Recover(size_t i) {
  Member* m = members_[i].get();
  if (m->healthy.load() || m->drained.load()) return;
  // Calls that overran their deadline before the member was taken out may
  // still complete in it once it answers again; a write's unwrap then leaves
  // a pending-labelled object that catch-up's scan, if it ran first, would
  // miss. Catch up once they are done (waiting at most keygen_timeout_ms: a
  // call stuck for good must not keep the member out).
  if (m->executor().busy() > 0) {
    const int64_t now = absl::ToUnixMillis(absl::Now());
    int64_t since = m->busy_since_ms.load();
    if (since == 0) {
      since = now;
      m->busy_since_ms.store(now);
    }
    if (now - since < static_cast<int64_t>(config_.keygen_timeout_ms)) {
      m->set_down_reason("calls from before it was taken out still running");
      return;
    }
  }
  m->busy_since_ms.store(0);
  absl::Status st = m->Connect(absl::Milliseconds(config_.probe_timeout_ms));
  if (!st.ok()) {
    m->set_down_reason(std::string(st.message()));
    return;
  }
  // A member must still support every advertised mechanism.
  auto mechs = m->Mechanisms();
  if (mechs.ok()) {
    for (const auto& [type, info] : mechanisms_) {
      bool has = false;
      for (const auto& mm : *mechs) has |= mm.first == type;
      if (!has) {
        const std::string why = absl::StrCat("lacks ", wire::MechanismName(type));
        m->set_down_reason(why);
        LogError(absl::StrCat("member ", m->name(), " not readmitted: ", why));
        RecordError("member_readmit", config_.label, m->name(), "not readmitted: " + why);
        m->Disconnect();
        return;
      }
    }
  }
  st = writer_->CatchUp(i);
  if (!st.ok()) {
    m->set_down_reason(absl::StrCat("catch-up: ", st.message()));
    LogError(absl::StrCat("member ", m->name(), " not readmitted: ", st.message()));
    // Not st.message(): it may name the object being caught up.
    RecordError("member_readmit", config_.label, m->name(),
                "not readmitted: catch-up failed with " + wire::CkRvName(wire::GetCkRv(st)));
    m->Disconnect();
    return;
  }
  LogInfo(absl::StrCat("group ", config_.label, ": member ", m->name(), " readmitted"));
}

absl::Status Group::Drain(const std::string& name) {
  for (size_t i = 0; i < members_.size(); ++i) {
    if (members_[i]->name() != name) continue;
    members_[i]->drained.store(true);
    MarkDown(i, "drained by an operator");
    LogInfo(absl::StrCat("audit: admin drained member ", name));
    Audit("admin_drain", "admin", {{"group", config_.label}, {"member", name}});
    return absl::OkStatus();
  }
  return absl::NotFoundError(absl::StrCat("no member ", name, " in group ", config_.label));
}

absl::Status Group::Readmit(const std::string& name) {
  for (size_t i = 0; i < members_.size(); ++i) {
    if (members_[i]->name() != name) continue;
    members_[i]->drained.store(false);
    LogInfo(absl::StrCat("audit: admin readmitted member ", name));
    Audit("admin_readmit", "admin", {{"group", config_.label}, {"member", name}});
    Recover(i);
    if (!members_[i]->healthy.load()) {
      return absl::UnavailableError(
          absl::StrCat("member ", name, " not readmitted: ", members_[i]->down_reason()));
    }
    return absl::OkStatus();
  }
  return absl::NotFoundError(absl::StrCat("no member ", name, " in group ", config_.label));
}

void Group::StartMonitor() {
  std::thread([this] { MonitorLoop(); }).detach();
}

void Group::MonitorLoop() {
  absl::Time next = absl::Now();
  while (true) {
    std::set<size_t> suspects;
    {
      absl::MutexLock lock(&monitor_mu_);
      auto ready = [this] { return !suspects_.empty(); };
      monitor_mu_.AwaitWithDeadline(absl::Condition(&ready), next);
      suspects.swap(suspects_);
    }
    const bool periodic = absl::Now() >= next;
    for (size_t i = 0; i < members_.size(); ++i) {
      if (!periodic && !suspects.count(i)) continue;
      if (members_[i]->healthy.load()) {
        Probe(i);
      } else if (periodic) {
        Recover(i);
      }
    }
    if (periodic) next = absl::Now() + absl::Milliseconds(config_.probe_interval_ms);
  }
}

}  // namespace hsmux::agent
