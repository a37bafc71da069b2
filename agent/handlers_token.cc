// Slots, tokens, mechanisms, sessions and login: the virtual token's face.
#include <cstring>

#include "absl/strings/str_cat.h"
#include "agent.h"
#include "dispatch.h"
#include "audit.h"
#include "log.h"
#include "client_pins.h"

namespace hsmux::agent {
namespace {

constexpr CK_ULONG kMinPinLen = ClientPins::kMinLen;
constexpr CK_ULONG kMaxPinLen = ClientPins::kMaxLen;

void SessionCounts(Instance& inst, uint64_t slot, uint64_t* all, uint64_t* rw) {
  absl::MutexLock lock(&inst.mu);
  *all = 0;
  *rw = 0;
  for (auto& [h, s] : inst.sessions) {
    if (s->slot_id != slot) continue;
    ++*all;
    if (s->rw) ++*rw;
  }
}

}  // namespace

CK_RV GetSlotInfo(CallContext& ctx) {
  ASSIGN_OR_RV(uint64_t slot, ctx.Ulong(0));
  ASSIGN_OR_RV(Group * group, ctx.SlotGroup(slot));
  v1::SlotInfo* info = ctx.AddResult()->mutable_slot_info();
  info->set_description(group->config().slot_description);
  info->set_manufacturer(group->config().manufacturer);
  // Removable: the token may be unreachable for a while, never gone.
  info->set_flags(CKF_TOKEN_PRESENT | CKF_REMOVABLE_DEVICE | CKF_HW_SLOT);
  info->mutable_hardware()->set_major(0);
  info->mutable_hardware()->set_minor(1);
  info->mutable_firmware()->set_major(0);
  info->mutable_firmware()->set_minor(1);
  return CKR_OK;
}

CK_RV GetTokenInfo(CallContext& ctx) {
  ASSIGN_OR_RV(uint64_t slot, ctx.Ulong(0));
  ASSIGN_OR_RV(Group * group, ctx.SlotGroup(slot));
  const GroupConfig& gc = group->config();
  v1::TokenInfo* info = ctx.AddResult()->mutable_token_info();
  info->set_label(gc.label);
  info->set_manufacturer(gc.manufacturer);
  info->set_model(gc.model);
  info->set_serial(gc.serial);
  info->set_flags(CKF_RNG | CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED |
                  CKF_TOKEN_INITIALIZED | ctx.agent().pins().Flags(*ctx.instance().client, slot));
  uint64_t all = 0, rw = 0;
  SessionCounts(ctx.instance(), slot, &all, &rw);
  // Session counts are this client's view; the members' are not its business.
  info->set_max_session_count(ctx.agent().config().max_sessions_per_instance);
  info->set_session_count(all);
  info->set_max_rw_session_count(ctx.agent().config().max_sessions_per_instance);
  info->set_rw_session_count(rw);
  info->set_max_pin_len(kMaxPinLen);
  info->set_min_pin_len(kMinPinLen);
  info->set_total_public_memory(CK_UNAVAILABLE_INFORMATION);
  info->set_free_public_memory(CK_UNAVAILABLE_INFORMATION);
  info->set_total_private_memory(CK_UNAVAILABLE_INFORMATION);
  info->set_free_private_memory(CK_UNAVAILABLE_INFORMATION);
  info->mutable_hardware()->set_major(0);
  info->mutable_hardware()->set_minor(1);
  info->mutable_firmware()->set_major(0);
  info->mutable_firmware()->set_minor(1);
  return CKR_OK;
}

CK_RV GetMechanismList(CallContext& ctx) {
  ASSIGN_OR_RV(uint64_t slot, ctx.Ulong(0));
  ASSIGN_OR_RV(Group * group, ctx.SlotGroup(slot));
  auto* list = ctx.AddResult()->mutable_ulongs();
  for (CK_MECHANISM_TYPE type : group->mechanism_order()) {
    if (ctx.MechanismAllowed(slot, type)) list->add_values(type);
  }
  return CKR_OK;
}

CK_RV GetMechanismInfo(CallContext& ctx) {
  ASSIGN_OR_RV(uint64_t slot, ctx.Ulong(0));
  ASSIGN_OR_RV(uint64_t type, ctx.Ulong(1));
  ASSIGN_OR_RV(Group * group, ctx.SlotGroup(slot));
  auto it = group->mechanisms().find(type);
  if (it == group->mechanisms().end() || !ctx.MechanismAllowed(slot, type)) {
    return CKR_MECHANISM_INVALID;
  }
  auto* info = ctx.AddResult()->mutable_mechanism_info();
  info->set_min_key_size(it->second.ulMinKeySize);
  info->set_max_key_size(it->second.ulMaxKeySize);
  info->set_flags(it->second.flags);
  return CKR_OK;
}

CK_RV OpenSession(CallContext& ctx) {
  ASSIGN_OR_RV(uint64_t slot, ctx.Ulong(0));
  ASSIGN_OR_RV(uint64_t flags, ctx.Ulong(1));
  ASSIGN_OR_RV(Group * group, ctx.SlotGroup(slot));
  if (!(flags & CKF_SERIAL_SESSION)) return CKR_SESSION_PARALLEL_NOT_SUPPORTED;
  Instance& inst = ctx.instance();
  auto session = std::make_shared<ClientSession>();
  session->slot_id = slot;
  session->rw = (flags & CKF_RW_SESSION) != 0;
  session->group = group;
  absl::MutexLock lock(&inst.mu);
  if (inst.sessions.size() >= ctx.agent().config().max_sessions_per_instance) {
    LogWarning(absl::StrCat("instance ", inst.id, ": session limit reached"));
    return CKR_SESSION_COUNT;
  }
  do {
    session->handle = NewHandle();
  } while (inst.sessions.count(session->handle));
  inst.sessions[session->handle] = session;
  ctx.AddUlong(session->handle);
  return CKR_OK;
}

CK_RV CloseSession(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ctx.agent().CloseClientSession(ctx.instance(), session);
  return CKR_OK;
}

CK_RV CloseAllSessions(CallContext& ctx) {
  ASSIGN_OR_RV(uint64_t slot, ctx.Ulong(0));
  ASSIGN_OR_RV(Group * group, ctx.SlotGroup(slot));
  (void)group;
  std::vector<std::shared_ptr<ClientSession>> sessions;
  {
    absl::MutexLock lock(&ctx.instance().mu);
    for (auto& [h, s] : ctx.instance().sessions) {
      if (s->slot_id == slot) sessions.push_back(s);
    }
  }
  for (auto& s : sessions) ctx.agent().CloseClientSession(ctx.instance(), s);
  return CKR_OK;
}

CK_RV GetSessionInfo(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  const bool user = ctx.LoggedIn(session->slot_id);
  v1::SessionInfo* info = ctx.AddResult()->mutable_session_info();
  info->set_slot_id(session->slot_id);
  if (session->rw) {
    info->set_state(user ? CKS_RW_USER_FUNCTIONS : CKS_RW_PUBLIC_SESSION);
  } else {
    info->set_state(user ? CKS_RO_USER_FUNCTIONS : CKS_RO_PUBLIC_SESSION);
  }
  info->set_flags(CKF_SERIAL_SESSION | (session->rw ? CKF_RW_SESSION : 0));
  info->set_device_error(0);
  return CKR_OK;
}

CK_RV Login(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(uint64_t user_type, ctx.Ulong(1));
  ASSIGN_OR_RV(const std::string* pin, ctx.Bytes(2));
  Instance& inst = ctx.instance();
  // Token administration (SO) is not offered to clients (DESIGN §2).
  if (user_type != CKU_USER && user_type != CKU_CONTEXT_SPECIFIC) return CKR_USER_TYPE_INVALID;
  const GroupAccess* access = nullptr;
  for (const GroupAccess& g : inst.client->groups) {
    if (g.slot_id == session->slot_id) access = &g;
  }
  if (access == nullptr) return CKR_SESSION_HANDLE_INVALID;
  if (user_type == CKU_USER && ctx.LoggedIn(session->slot_id)) return CKR_USER_ALREADY_LOGGED_IN;
  if (user_type == CKU_CONTEXT_SPECIFIC) {
    absl::MutexLock slock(&session->mu);
    if (!session->AnyActive()) return CKR_OPERATION_NOT_INITIALIZED;
  }
  if (CK_RV rv = ctx.agent().pins().Check(*inst.client, *access, *pin); rv != CKR_OK) return rv;
  if (user_type == CKU_CONTEXT_SPECIFIC) {
    // Re-authentication for a key that requires it: the member's own PIN
    // goes to the member, on the session that holds the operation.
    absl::MutexLock slock(&session->mu);
    if (!session->AnyActive()) return CKR_OPERATION_NOT_INITIALIZED;
    if (CK_RV rv = MaterializeOperations(ctx, *session); rv != CKR_OK) return rv;
    Member* m = session->group->member(session->op_member);
    const MemberConfig& mc = session->group->config().members[session->op_member];
    std::string member_pin = mc.pin;
    CK_RV rv = m->fn()->C_Login(session->op_session, CKU_CONTEXT_SPECIFIC,
                                reinterpret_cast<CK_UTF8CHAR_PTR>(member_pin.data()),
                                member_pin.size());
    std::fill(member_pin.begin(), member_pin.end(), '\0');
    return rv;
  }
  absl::MutexLock lock(&inst.mu);
  inst.logged_in_slots.insert(session->slot_id);
  LogInfo(absl::StrCat("audit: login: ", inst.identity, " on slot ", session->slot_id));
  Audit("login", ClientKey(*inst.client), {{"slot", std::to_string(session->slot_id)}});
  return CKR_OK;
}

CK_RV SetPIN(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(const std::string* old_pin, ctx.Bytes(1));
  ASSIGN_OR_RV(const std::string* new_pin, ctx.Bytes(2));
  // The spec: C_SetPIN works in R/W sessions only; it changes the PIN of the
  // user (clients are never SO here).
  if (!session->rw) return CKR_SESSION_READ_ONLY;
  Instance& inst = ctx.instance();
  const GroupAccess* access = nullptr;
  for (const GroupAccess& g : inst.client->groups) {
    if (g.slot_id == session->slot_id) access = &g;
  }
  if (access == nullptr) return CKR_SESSION_HANDLE_INVALID;
  return ctx.agent().pins().Change(*inst.client, *access, *old_pin, *new_pin);
}

CK_RV Logout(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  Instance& inst = ctx.instance();
  absl::MutexLock lock(&inst.mu);
  if (!inst.logged_in_slots.erase(session->slot_id)) return CKR_USER_NOT_LOGGED_IN;
  // Handles of private objects become unusable: forget what we read.
  for (auto& [h, ref] : inst.objects) ref.is_private = -1;
  return CKR_OK;
}

}  // namespace hsmux::agent
