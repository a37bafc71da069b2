// hsmuxctl commands that talk to a running agent over its admin socket.
#pragma once

#include <string_view>
#include <vector>

namespace hsmux::agent {

// `status` and `create-replication-key`; options:
//   --socket PATH   the admin socket (default: <state_dir>/admin.sock of --config)
//   --config FILE   the agent config (default /etc/hsmux/hsmuxd.yaml)
//   --slot N        the group (create-replication-key; default: every group)
int AdminCommand(std::string_view command, const std::vector<std::string_view>& args);

}  // namespace hsmux::agent
