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
  LogInfo(absl::StrCat("group ", config.label, " (slot ", config.slot_id, "): ",
                       group->members_.size(), " members, ", group->mechanisms_.size(),
                       " mechanisms"));
  return group;
}

}  // namespace hsmux::agent
