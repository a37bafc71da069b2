#include "call_context.h"

#include <fnmatch.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "agent.h"
#include "log.h"
#include "wire/attribute_codec.h"
#include "wire/mechanism_codec.h"

namespace hsmux::agent {
namespace {

absl::Status BadArg(int i) {
  return wire::CkError(CKR_ARGUMENTS_BAD, "argument " + std::to_string(i) + " missing or mistyped");
}

}  // namespace

absl::StatusOr<uint64_t> CallContext::Ulong(int i) const {
  if (i >= request_.args_size() || request_.args(i).kind_case() != v1::Value::kUlong) {
    return BadArg(i);
  }
  return request_.args(i).ulong();
}

absl::StatusOr<const std::string*> CallContext::Bytes(int i) const {
  if (i >= request_.args_size() || request_.args(i).kind_case() != v1::Value::kBytes) {
    return BadArg(i);
  }
  return &request_.args(i).bytes();
}

absl::StatusOr<const v1::OutputCapacity*> CallContext::Capacity(int i) const {
  if (i >= request_.args_size() || !request_.args(i).has_capacity()) return BadArg(i);
  return &request_.args(i).capacity();
}

namespace {

// Counts attributes (nested ones too) and checks value sizes against the
// configured limits.
absl::Status CheckTemplateLimits(const v1::AttributeList& list, const AgentConfig& config,
                                 uint64_t* count, int depth) {
  for (const auto& a : list.attributes()) {
    if (++*count > config.max_template_attributes) {
      return wire::CkError(CKR_TEMPLATE_INCONSISTENT,
                           "template longer than max_template_attributes");
    }
    if (a.value_case() == v1::Attribute::kBytes && a.bytes().size() > config.max_attribute_bytes) {
      return wire::CkError(CKR_ATTRIBUTE_VALUE_INVALID,
                           "attribute value larger than max_attribute_bytes");
    }
    if (a.value_case() == v1::Attribute::kMechanisms &&
        static_cast<uint64_t>(a.mechanisms().values_size()) > config.max_template_attributes) {
      return wire::CkError(CKR_ATTRIBUTE_VALUE_INVALID, "mechanism list too long");
    }
    if (a.value_case() == v1::Attribute::kNested) {
      if (depth >= 4) return wire::CkError(CKR_TEMPLATE_INCONSISTENT, "templates nested too deep");
      HSMUX_RETURN_IF_ERROR(CheckTemplateLimits(a.nested(), config, count, depth + 1));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<const v1::AttributeList*> CallContext::Attributes(int i) const {
  if (i >= request_.args_size() || !request_.args(i).has_attributes()) return BadArg(i);
  uint64_t count = 0;
  absl::Status limits =
      CheckTemplateLimits(request_.args(i).attributes(), agent_.config(), &count, 0);
  if (!limits.ok()) {
    LogWarning(absl::StrCat("instance ", instance_->id, " (", instance_->identity,
                            "): refused: ", limits.message()));
    return limits;
  }
  return &request_.args(i).attributes();
}

absl::StatusOr<const v1::AttributeQueryList*> CallContext::Queries(int i) const {
  if (i >= request_.args_size() || !request_.args(i).has_queries()) return BadArg(i);
  if (static_cast<uint64_t>(request_.args(i).queries().queries_size()) >
      agent_.config().max_template_attributes) {
    LogWarning(absl::StrCat("instance ", instance_->id,
                            ": refused: template longer than "
                            "max_template_attributes"));
    return wire::CkError(CKR_TEMPLATE_INCONSISTENT, "template too long");
  }
  return &request_.args(i).queries();
}

absl::StatusOr<const v1::Mechanism*> CallContext::Mechanism(int i) const {
  if (i >= request_.args_size() || !request_.args(i).has_mechanism()) return BadArg(i);
  return &request_.args(i).mechanism();
}

absl::StatusOr<std::shared_ptr<ClientSession>> CallContext::Session() const {
  HSMUX_ASSIGN_OR_RETURN(uint64_t h, Ulong(0));
  absl::MutexLock lock(&instance_->mu);
  auto it = instance_->sessions.find(h);
  if (it == instance_->sessions.end()) {
    return wire::CkError(CKR_SESSION_HANDLE_INVALID, "no such session in this instance");
  }
  return it->second;
}

absl::StatusOr<Group*> CallContext::SlotGroup(uint64_t slot) const {
  Group* group = agent_.GroupForSlot(slot);
  bool allowed = false;
  for (const GroupAccess& g : instance_->client->groups) {
    if (g.slot_id == slot) allowed = true;
  }
  // A slot this identity may not use is absent, as if it did not exist.
  if (group == nullptr || !allowed) return wire::CkError(CKR_SLOT_ID_INVALID, "no such slot");
  return group;
}

const GroupAccess* CallContext::Access(uint64_t slot) const {
  for (const GroupAccess& g : instance_->client->groups) {
    if (g.slot_id == slot) return &g;
  }
  return nullptr;
}

bool CallContext::MechanismAllowed(uint64_t slot, CK_MECHANISM_TYPE type) const {
  const GroupAccess* access = Access(slot);
  if (access == nullptr || access->allowed_mechanisms.empty()) return access != nullptr;
  const std::string name = wire::MechanismName(type);
  for (const std::string& allowed : access->allowed_mechanisms) {
    uint64_t number = 0;
    if (allowed == name) return true;
    if (absl::SimpleHexAtoi(allowed, &number) && number == type) return true;
  }
  return false;
}

bool CallContext::ObjectAllowed(uint64_t slot, CK_OBJECT_CLASS cls, const std::string& label,
                                const std::string& cka_id) const {
  if (cls != CKO_SECRET_KEY && cls != CKO_PRIVATE_KEY && cls != CKO_PUBLIC_KEY) return true;
  const GroupAccess* access = Access(slot);
  if (access == nullptr) return false;
  if (access->allowed_keys.empty()) return true;
  static const char* kHex = "0123456789abcdef";
  std::string id_hex;
  for (unsigned char c : cka_id) {
    id_hex.push_back(kHex[c >> 4]);
    id_hex.push_back(kHex[c & 15]);
  }
  for (const std::string& pattern : access->allowed_keys) {
    if (pattern.rfind("id:", 0) == 0) {
      if (fnmatch(pattern.c_str() + 3, id_hex.c_str(), 0) == 0) return true;
    } else if (fnmatch(pattern.c_str(), label.c_str(), 0) == 0) {
      return true;
    }
  }
  return false;
}

CK_RV CallContext::CheckMechanism(const ClientSession& session, CK_MECHANISM_TYPE type) const {
  if (!session.group->mechanisms().count(type)) return CKR_MECHANISM_INVALID;
  return MechanismAllowed(session.slot_id, type) ? CKR_OK : CKR_MECHANISM_INVALID;
}

bool CallContext::LoggedIn(uint64_t slot) const {
  absl::MutexLock lock(&instance_->mu);
  return instance_->logged_in_slots.count(slot) > 0;
}

absl::StatusOr<ObjectRef> CallContext::Object(const ClientSession& session, uint64_t handle,
                                              CK_RV invalid_rv) {
  ObjectRef ref;
  {
    absl::MutexLock lock(&instance_->mu);
    auto it = instance_->objects.find(handle);
    if (it == instance_->objects.end()) return wire::CkError(invalid_rv, "no such object");
    ref = it->second;
  }
  if (ref.logical_id != 0) {
    auto obj = session.group->registry().Get(ref.logical_id);
    if (obj == nullptr) return wire::CkError(invalid_rv, "object destroyed");
    if (!ObjectAllowed(session.slot_id, obj->snapshot.object_class, obj->snapshot.label,
                       obj->snapshot.cka_id)) {
      return wire::CkError(invalid_rv, "object outside the identity's allow-list");
    }
    ref.is_private = obj->snapshot.is_private ? 1 : 0;
  } else if (!session.group->member(ref.member)->healthy.load()) {
    // A session object whose member failed: made again elsewhere from its
    // template if C_CreateObject made it; otherwise it is gone.
    if (ref.create_template == nullptr) return wire::CkError(invalid_rv, "session object lost");
    Group& group = *session.group;
    const size_t home = HomeMember(group);
    Member* m = group.member(home);
    if (!m->healthy.load()) return wire::CkError(CKR_DEVICE_ERROR, "no healthy member");
    auto tmpl = ref.create_template;
    auto made = std::make_shared<CK_OBJECT_HANDLE>(CK_INVALID_HANDLE);
    CK_RV rv;
    {
      absl::MutexLock hlock(&m->holder_mutex());
      const CK_SESSION_HANDLE holder = m->holder();
      rv = m->Invoke<CK_OBJECT_HANDLE>(
          absl::Milliseconds(group.config().call_timeout_ms), made,
          [tmpl, holder](CK_FUNCTION_LIST* fn, CK_OBJECT_HANDLE& out) {
            auto native = wire::NativeTemplate::Decode(*tmpl);
            if (!native.ok()) return wire::GetCkRv(native.status());
            return fn->C_CreateObject(holder, native->data(), native->size(), &out);
          },
          holder);
    }
    if (rv != CKR_OK) return wire::CkError(invalid_rv, "session object could not be made again");
    absl::MutexLock lock(&instance_->mu);
    auto it = instance_->objects.find(handle);
    if (it == instance_->objects.end()) return wire::CkError(invalid_rv, "no such object");
    instance_->object_index.erase({it->second.member, it->second.member_handle});
    it->second.member = home;
    it->second.member_handle = *made;
    instance_->object_index[{home, *made}] = handle;
    ref = it->second;
    LogInfo(absl::StrCat("instance ", instance_->id, ": session object made again on member ",
                         m->name()));
  }
  if (LoggedIn(session.slot_id)) return ref;
  // Before login, private objects are invisible (the agent itself is always
  // logged in to the member, so it must enforce this).
  if (ref.is_private < 0) {
    Member* m = session.group->member(ref.member);
    CK_BBOOL priv = CK_TRUE;
    CK_ATTRIBUTE a = {CKA_PRIVATE, &priv, sizeof(priv)};
    auto h = m->Acquire();
    if (!h.ok()) return h.status();
    CK_RV rv = m->fn()->C_GetAttributeValue(*h, ref.member_handle, &a, 1);
    m->Release(*h, false);
    if (rv != CKR_OK) return wire::CkError(invalid_rv, "object gone");
    ref.is_private = priv ? 1 : 0;
    absl::MutexLock lock(&instance_->mu);
    auto it = instance_->objects.find(handle);
    if (it != instance_->objects.end()) it->second.is_private = ref.is_private;
  }
  if (ref.is_private == 1) return wire::CkError(invalid_rv, "private object before login");
  return ref;
}

bool CallContext::ObjectLimitReached() const {
  absl::MutexLock lock(&instance_->mu);
  return instance_->objects.size() >= agent_.config().max_objects_per_instance;
}

uint64_t CallContext::MapObject(size_t member, CK_OBJECT_HANDLE member_handle,
                                uint64_t owner_session) {
  absl::MutexLock lock(&instance_->mu);
  auto key = std::make_pair(member, member_handle);
  auto it = instance_->object_index.find(key);
  if (it != instance_->object_index.end()) return it->second;
  uint64_t h;
  do {
    h = NewHandle();
  } while (instance_->objects.count(h));
  ObjectRef ref;
  ref.member = member;
  ref.member_handle = member_handle;
  ref.owner_session = owner_session;
  instance_->objects[h] = ref;
  instance_->object_index[key] = h;
  return h;
}

void CallContext::KeepTemplate(uint64_t handle, const v1::AttributeList& tmpl) {
  absl::MutexLock lock(&instance_->mu);
  auto it = instance_->objects.find(handle);
  if (it != instance_->objects.end()) {
    it->second.create_template = std::make_shared<const v1::AttributeList>(tmpl);
  }
}

uint64_t CallContext::MapLogical(uint64_t logical_id) {
  absl::MutexLock lock(&instance_->mu);
  auto it = instance_->logical_index.find(logical_id);
  if (it != instance_->logical_index.end()) return it->second;
  uint64_t h;
  do {
    h = NewHandle();
  } while (instance_->objects.count(h));
  ObjectRef ref;
  ref.logical_id = logical_id;
  instance_->objects[h] = ref;
  instance_->logical_index[logical_id] = h;
  return h;
}

void CallContext::UnmapObject(uint64_t handle) {
  absl::MutexLock lock(&instance_->mu);
  auto it = instance_->objects.find(handle);
  if (it == instance_->objects.end()) return;
  if (it->second.logical_id != 0) {
    instance_->logical_index.erase(it->second.logical_id);
  } else {
    instance_->object_index.erase({it->second.member, it->second.member_handle});
  }
  instance_->objects.erase(it);
}

absl::StatusOr<std::pair<size_t, CK_OBJECT_HANDLE>> CallContext::Place(Group& group,
                                                                       const ObjectRef& ref,
                                                                       CK_RV invalid_rv) {
  if (ref.logical_id == 0) return std::make_pair(ref.member, ref.member_handle);
  auto obj = group.registry().Get(ref.logical_id);
  if (obj == nullptr) return wire::CkError(invalid_rv, "object destroyed");
  auto member = group.Route(*obj);
  if (!member.has_value()) {
    return wire::CkError(CKR_DEVICE_ERROR, "no healthy member holds the object");
  }
  return std::make_pair(*member, obj->handles[*member]);
}

size_t CallContext::HomeMember(Group& group) {
  absl::MutexLock lock(&instance_->mu);
  const int home = instance_->home_member;
  if (home >= 0 && static_cast<size_t>(home) < group.member_count() &&
      group.member(home)->healthy.load()) {
    return static_cast<size_t>(home);
  }
  const size_t chosen = group.AnyMember();
  instance_->home_member = static_cast<int>(chosen);
  return chosen;
}

CK_OBJECT_HANDLE CallContext::HandleOn(Group& group, const ObjectRef& ref, size_t member) {
  if (ref.logical_id == 0) return ref.member == member ? ref.member_handle : CK_INVALID_HANDLE;
  auto obj = group.registry().Get(ref.logical_id);
  if (obj == nullptr || !obj->OnMember(member)) return CK_INVALID_HANDLE;
  return obj->handles[member];
}

}  // namespace hsmux::agent
