// A group: one virtual slot/token over its members. Fixed at start: slot and
// token identity from config, the mechanism list as the intersection of what
// every member supports and the wire can carry (DESIGN §2).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "config.h"
#include "member.h"
#include "wire/cryptoki.h"

namespace hsmux::agent {

class Group {
 public:
  static absl::StatusOr<std::unique_ptr<Group>> Form(
      const GroupConfig& config,
      std::map<std::string, std::shared_ptr<MemberLibrary>>& libraries);

  const GroupConfig& config() const { return config_; }
  const std::map<CK_MECHANISM_TYPE, CK_MECHANISM_INFO>& mechanisms() const { return mechanisms_; }
  // The advertised list, in the first member's order (clients such as
  // pkcs11-tool walk it in order).
  const std::vector<CK_MECHANISM_TYPE>& mechanism_order() const { return order_; }
  size_t member_count() const { return members_.size(); }
  Member* member(size_t i) { return members_[i].get(); }
  // The member that serves calls. In this release: the first one; routing
  // and failover come with the registry (DESIGN §4-5).
  size_t serving_member() const { return 0; }

 private:
  explicit Group(GroupConfig config) : config_(std::move(config)) {}
  GroupConfig config_;
  std::vector<std::unique_ptr<Member>> members_;
  std::map<CK_MECHANISM_TYPE, CK_MECHANISM_INFO> mechanisms_;
  std::vector<CK_MECHANISM_TYPE> order_;
};

}  // namespace hsmux::agent
