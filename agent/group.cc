#include "group.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "log.h"
#include "wire/errors.h"
#include "wire/mechanism_codec.h"

namespace hsmux::agent {

absl::StatusOr<std::unique_ptr<Group>> Group::Form(
    const GroupConfig& config, std::map<std::string, std::shared_ptr<MemberLibrary>>& libraries) {
  std::unique_ptr<Group> group(new Group(config));
  bool first = true;
  for (const MemberConfig& mc : config.members) {
    HSMUX_ASSIGN_OR_RETURN(auto library, MemberLibrary::Load(mc.library, libraries));
    HSMUX_ASSIGN_OR_RETURN(auto member, Member::Open(mc, library));
    member->ConfigurePool(config.pool_min_sessions, config.pool_max_sessions,
                          config.pool_wait_ms);
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
          LogWarning(absl::StrCat("group ", config.label, ": ",
                                  wire::MechanismName(it->first), " left out: member ", mc.name,
                                  " lacks it"));
          it = group->mechanisms_.erase(it);
          continue;
        }
        it->second.ulMinKeySize = std::max(it->second.ulMinKeySize, other->second.ulMinKeySize);
        it->second.ulMaxKeySize = std::min(it->second.ulMaxKeySize, other->second.ulMaxKeySize);
        it->second.flags &= other->second.flags;
        ++it;
      }
    }
    group->members_.push_back(std::move(member));
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
  LogInfo(absl::StrCat("group ", config.label, " (slot ", config.slot_id, "): ",
                       group->members_.size(), " members, ", group->mechanisms_.size(),
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

}  // namespace hsmux::agent
