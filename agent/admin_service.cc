#include "admin_service.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "log.h"
#include "recent_errors.h"

namespace hsmux::agent {

grpc::Status AdminService::Status(grpc::ServerContext*, const v1::StatusRequest*,
                                  v1::StatusResponse* resp) {
  for (const auto& [slot, group] : agent_.groups()) {
    v1::GroupStatus* g = resp->add_groups();
    g->set_slot_id(slot);
    g->set_label(group->config().label);
    g->set_replication(group->config().replication);
    const std::vector<CK_OBJECT_HANDLE> rk = group->registry().replication_keys();
    for (size_t i = 0; i < group->member_count(); ++i) {
      Member* m = group->member(i);
      v1::MemberStatus* ms = g->add_members();
      ms->set_name(m->name());
      ms->set_healthy(m->healthy.load());
      ms->set_calls(m->calls.load());
      ms->set_inflight(m->inflight.load());
      ms->set_has_replication_key(i < rk.size() && rk[i] != CK_INVALID_HANDLE);
      ms->set_drained(m->drained.load());
      ms->set_down_reason(m->healthy.load() ? "" : m->down_reason());
      ms->set_failovers(m->failovers.load());
      ms->set_replays(m->replays.load());
      ms->set_open_sessions(m->healthy.load() ? m->open_sessions() : 0);
    }
    const DiscoveryReport& report = group->registry().last_report();
    g->set_objects(group->registry().All().size());
    g->set_merged(report.merged);
    g->set_unproven(report.unproven);
    g->set_ambiguous(report.ambiguous);
    for (const std::string& note : report.notes) g->add_notes(note);
  }
  auto [instances, sessions] = agent_.Counts();
  resp->set_instances(instances);
  resp->set_sessions(sessions);
  resp->set_open_streams(agent_.open_streams());
  resp->set_max_streams(agent_.config().max_streams);
  for (const RecentError& e : RecentErrors()) {
    v1::RecentError* out = resp->add_recent_errors();
    out->set_time_unix_ms(absl::ToUnixMillis(e.when));
    out->set_kind(e.kind);
    out->set_group(e.group);
    out->set_member(e.member);
    out->set_message(e.message);
    out->set_count(e.count);
  }
  return grpc::Status::OK;
}

grpc::Status AdminService::CreateReplicationKey(grpc::ServerContext*,
                                                const v1::CreateReplicationKeyRequest* req,
                                                v1::CreateReplicationKeyResponse*) {
  absl::Status st = agent_.CreateReplicationKey(req->slot_id());
  LogInfo(absl::StrCat("admin: create replication key for slot ", req->slot_id(), ": ",
                       st.ok() ? "done" : std::string(st.message())));
  if (st.ok()) return grpc::Status::OK;
  const grpc::StatusCode code = absl::IsAlreadyExists(st) ? grpc::StatusCode::ALREADY_EXISTS
                                : absl::IsNotFound(st)    ? grpc::StatusCode::NOT_FOUND
                                                          : grpc::StatusCode::INTERNAL;
  return grpc::Status(code, std::string(st.message()));
}

grpc::Status AdminService::Unlock(grpc::ServerContext*, const v1::UnlockRequest* req,
                                  v1::UnlockResponse*) {
  absl::Status st = agent_.pins().Unlock(req->identity(), req->slot_id());
  if (st.ok()) return grpc::Status::OK;
  return grpc::Status(
      absl::IsNotFound(st) ? grpc::StatusCode::NOT_FOUND : grpc::StatusCode::INTERNAL,
      std::string(st.message()));
}

namespace {

grpc::Status ToGrpc(const absl::Status& st) {
  if (st.ok()) return grpc::Status::OK;
  const grpc::StatusCode code = absl::IsNotFound(st)      ? grpc::StatusCode::NOT_FOUND
                                : absl::IsUnavailable(st) ? grpc::StatusCode::UNAVAILABLE
                                                          : grpc::StatusCode::INTERNAL;
  return grpc::Status(code, std::string(st.message()));
}

}  // namespace

grpc::Status AdminService::Drain(grpc::ServerContext*, const v1::MemberRequest* req,
                                 v1::MemberResponse*) {
  Group* group = agent_.GroupForSlot(req->slot_id());
  if (group == nullptr) return grpc::Status(grpc::StatusCode::NOT_FOUND, "no such slot");
  return ToGrpc(group->Drain(req->member()));
}

grpc::Status AdminService::Readmit(grpc::ServerContext*, const v1::MemberRequest* req,
                                   v1::MemberResponse*) {
  Group* group = agent_.GroupForSlot(req->slot_id());
  if (group == nullptr) return grpc::Status(grpc::StatusCode::NOT_FOUND, "no such slot");
  return ToGrpc(group->Readmit(req->member()));
}

}  // namespace hsmux::agent
