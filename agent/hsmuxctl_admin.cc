#include "hsmuxctl_admin.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <ctime>
#include <iostream>
#include <string>

#include "absl/strings/numbers.h"
#include "config.h"
#include "hsmux/v1/admin.grpc.pb.h"

namespace hsmux::agent {
namespace {

struct AdminOptions {
  std::string socket;
  std::string config = "/etc/hsmux/hsmuxd.yaml";
  bool has_slot = false;
  uint64_t slot = 0;
  std::string identity;
  std::string member;
};

bool Parse(const std::vector<std::string_view>& args, AdminOptions* o) {
  for (size_t i = 0; i < args.size(); ++i) {
    std::string_view a = args[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= args.size()) return false;
      *out = std::string(args[++i]);
      return true;
    };
    std::string v;
    if (a == "--socket") {
      if (!value(&o->socket)) return false;
    } else if (a == "--config") {
      if (!value(&o->config)) return false;
    } else if (a == "--member") {
      if (!value(&o->member)) return false;
    } else if (a == "--identity") {
      if (!value(&o->identity)) return false;
    } else if (a == "--slot") {
      if (!value(&v) || !absl::SimpleAtoi(v, &o->slot)) return false;
      o->has_slot = true;
    } else {
      std::cerr << "hsmuxctl: unknown option '" << a << "'\n";
      return false;
    }
  }
  return true;
}

std::unique_ptr<v1::Admin::Stub> Connect(AdminOptions& o) {
  if (o.socket.empty()) {
    auto config = LoadAgentConfig(o.config);
    if (!config.ok()) {
      std::cerr << "hsmuxctl: " << config.status().message() << "\n";
      return nullptr;
    }
    o.socket = AdminSocketPath(config->state_dir);
  }
  auto channel = grpc::CreateChannel("unix:" + o.socket, grpc::InsecureChannelCredentials());
  return v1::Admin::NewStub(channel);
}

// "2026-01-31T12:00:00Z" (UTC).
std::string UtcTime(int64_t unix_ms) {
  const std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm_utc{};
  gmtime_r(&t, &tm_utc);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm_utc);
  return buf;
}

// One line per recent error, oldest first:
//   "  2026-01-31T12:00:00Z member_out hsmux-demo/a: taken out: ... (3 times)"
void PrintRecentErrors(const v1::StatusResponse& resp) {
  if (resp.recent_errors().empty()) {
    std::cout << "recent errors: none\n";
    return;
  }
  std::cout << "recent errors (oldest first):\n";
  for (const auto& e : resp.recent_errors()) {
    std::cout << "  " << UtcTime(e.time_unix_ms()) << " " << e.kind();
    if (!e.group().empty() || !e.member().empty()) {
      std::cout << " " << e.group() << (e.member().empty() ? "" : "/") << e.member();
    }
    std::cout << ": " << e.message();
    if (e.count() > 1) std::cout << " (" << e.count() << " times)";
    std::cout << "\n";
  }
}

void Deadline(grpc::ClientContext* ctx, int seconds) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
}

int Status(AdminOptions& o) {
  auto stub = Connect(o);
  if (stub == nullptr) return 1;
  grpc::ClientContext ctx;
  Deadline(&ctx, 10);
  v1::StatusResponse resp;
  grpc::Status st = stub->Status(&ctx, v1::StatusRequest(), &resp);
  if (!st.ok()) {
    std::cerr << "hsmuxctl status: agent at " << o.socket << ": " << st.error_message() << "\n";
    return 1;
  }
  std::cout << "instances: " << resp.instances() << ", client sessions: " << resp.sessions()
            << ", call streams: " << resp.open_streams() << " (max " << resp.max_streams() << ")\n";
  for (const auto& g : resp.groups()) {
    std::cout << "group " << g.label() << " (slot " << g.slot_id() << ", replication "
              << g.replication() << "): " << g.objects() << " objects, " << g.merged()
              << " on several members, " << g.unproven() << " unproven, " << g.ambiguous()
              << " ambiguous\n";
    for (const auto& m : g.members()) {
      std::cout << "  member " << m.name() << ": "
                << (m.healthy() ? "healthy" : (m.drained() ? "DRAINED" : "OUT")) << ", calls "
                << m.calls() << ", in flight " << m.inflight() << ", sessions " << m.open_sessions()
                << ", failovers " << m.failovers() << ", replays " << m.replays()
                << ", replication key " << (m.has_replication_key() ? "yes" : "no");
      if (!m.healthy()) std::cout << " (" << m.down_reason() << ")";
      std::cout << "\n";
    }
    for (const auto& n : g.notes()) std::cout << "  note: " << n << "\n";
  }
  PrintRecentErrors(resp);
  return 0;
}

int CreateReplicationKey(AdminOptions& o) {
  auto stub = Connect(o);
  if (stub == nullptr) return 1;
  std::vector<uint64_t> slots;
  if (o.has_slot) {
    slots.push_back(o.slot);
  } else {
    grpc::ClientContext ctx;
    Deadline(&ctx, 10);
    v1::StatusResponse resp;
    grpc::Status st = stub->Status(&ctx, v1::StatusRequest(), &resp);
    if (!st.ok()) {
      std::cerr << "hsmuxctl: agent at " << o.socket << ": " << st.error_message() << "\n";
      return 1;
    }
    for (const auto& g : resp.groups()) slots.push_back(g.slot_id());
  }
  int rc = 0;
  for (uint64_t slot : slots) {
    grpc::ClientContext ctx;
    Deadline(&ctx, 60);
    v1::CreateReplicationKeyRequest req;
    req.set_slot_id(slot);
    v1::CreateReplicationKeyResponse resp;
    grpc::Status st = stub->CreateReplicationKey(&ctx, req, &resp);
    if (st.ok()) {
      std::cout << "slot " << slot << ": replication key created on every member\n";
    } else {
      std::cerr << "hsmuxctl create-replication-key: slot " << slot << ": " << st.error_message()
                << "\n";
      rc = 1;
    }
  }
  return rc;
}

int Unlock(AdminOptions& o) {
  if (o.identity.empty() || !o.has_slot) {
    std::cerr << "usage: hsmuxctl unlock --identity cn:NAME|san:NAME --slot N\n";
    return 2;
  }
  // A bare name means a certificate common name.
  if (o.identity.rfind("cn:", 0) != 0 && o.identity.rfind("san:", 0) != 0) {
    o.identity = "cn:" + o.identity;
  }
  auto stub = Connect(o);
  if (stub == nullptr) return 1;
  grpc::ClientContext ctx;
  Deadline(&ctx, 10);
  v1::UnlockRequest req;
  req.set_identity(o.identity);
  req.set_slot_id(o.slot);
  v1::UnlockResponse resp;
  grpc::Status st = stub->Unlock(&ctx, req, &resp);
  if (!st.ok()) {
    std::cerr << "hsmuxctl unlock: " << st.error_message() << "\n";
    return 1;
  }
  std::cout << o.identity << " unlocked on slot " << o.slot << "\n";
  return 0;
}

int MemberAction(std::string_view command, AdminOptions& o) {
  if (o.member.empty() || !o.has_slot) {
    std::cerr << "usage: hsmuxctl " << command << " --slot N --member NAME\n";
    return 2;
  }
  auto stub = Connect(o);
  if (stub == nullptr) return 1;
  grpc::ClientContext ctx;
  Deadline(&ctx, 120);
  v1::MemberRequest req;
  req.set_slot_id(o.slot);
  req.set_member(o.member);
  v1::MemberResponse resp;
  grpc::Status st =
      command == "drain" ? stub->Drain(&ctx, req, &resp) : stub->Readmit(&ctx, req, &resp);
  if (!st.ok()) {
    std::cerr << "hsmuxctl " << command << ": " << st.error_message() << "\n";
    return 1;
  }
  std::cout << "member " << o.member << (command == "drain" ? " drained" : " readmitted") << "\n";
  return 0;
}

}  // namespace

int AdminCommand(std::string_view command, const std::vector<std::string_view>& args) {
  AdminOptions o;
  if (!Parse(args, &o)) {
    std::cerr << "usage: hsmuxctl " << command << " [--socket PATH | --config FILE] [--slot N]\n";
    return 2;
  }
  if (command == "status") return Status(o);
  if (command == "unlock") return Unlock(o);
  if (command == "drain" || command == "readmit") return MemberAction(command, o);
  return CreateReplicationKey(o);
}

}  // namespace hsmux::agent
