// Object and key management on the serving member. Objects are created on
// the member's holder session so session objects outlive pooled sessions;
// the agent enforces R/O sessions and private-object rules itself because it
// is always logged in to the member.
#include <cstring>
#include <optional>

#include "absl/strings/str_cat.h"
#include "agent.h"
#include "dispatch.h"
#include "log.h"
#include "wire/attribute_codec.h"
#include "wire/attribute_kinds.h"
#include "wire/mechanism_codec.h"

namespace hsmux::agent {
namespace {

std::optional<bool> WireBool(const v1::AttributeList& list, CK_ATTRIBUTE_TYPE type) {
  for (const auto& a : list.attributes()) {
    if (a.type() == type && a.value_case() == v1::Attribute::kBoolean) return a.boolean();
  }
  return std::nullopt;
}

void AddWireBool(v1::AttributeList& list, CK_ATTRIBUTE_TYPE type, bool value) {
  auto* a = list.add_attributes();
  a->set_type(type);
  a->set_boolean(value);
}

// Refuses, before anything is written, templates the session may not use.
CK_RV CheckNewObjectTemplate(CallContext& ctx, const ClientSession& session,
                             const v1::AttributeList& tmpl) {
  if (WireBool(tmpl, CKA_TOKEN).value_or(false) && !session.rw) return CKR_SESSION_READ_ONLY;
  if (WireBool(tmpl, CKA_PRIVATE).value_or(false) && !ctx.LoggedIn(session.slot_id)) {
    return CKR_USER_NOT_LOGGED_IN;
  }
  return CKR_OK;
}

// After a member made an object with defaults we could not see in the
// template: checks the same rules on what was made, undoes the write if they
// fail, and maps the new handle for the instance.
CK_RV AdoptNewObject(CallContext& ctx, const ClientSession& session, size_t member_index,
                     CK_OBJECT_HANDLE member_handle, uint64_t* out) {
  Member* m = session.group->member(member_index);
  CK_BBOOL token = CK_FALSE, priv = CK_FALSE;
  CK_ATTRIBUTE attrs[] = {{CKA_TOKEN, &token, sizeof(token)}, {CKA_PRIVATE, &priv, sizeof(priv)}};
  CK_RV rv;
  {
    absl::MutexLock lock(&m->holder_mutex());
    rv = m->fn()->C_GetAttributeValue(m->holder(), member_handle, attrs, 2);
  }
  CK_RV refuse = CKR_OK;
  if (rv != CKR_OK) {
    LogError(absl::StrCat("member ", m->name(), ": cannot read back a new object: ",
                          wire::CkRvName(rv)));
    refuse = CKR_DEVICE_ERROR;
  } else if (token && !session.rw) {
    refuse = CKR_SESSION_READ_ONLY;
  } else if (priv && !ctx.LoggedIn(session.slot_id)) {
    refuse = CKR_USER_NOT_LOGGED_IN;
  }
  if (refuse != CKR_OK) {
    absl::MutexLock lock(&m->holder_mutex());
    m->fn()->C_DestroyObject(m->holder(), member_handle);
    return refuse;
  }
  *out = ctx.MapObject(member_index, member_handle, token ? 0 : session.handle);
  return CKR_OK;
}

// A member's CKR_OBJECT_HANDLE_INVALID for a key argument is, to the caller,
// the key-specific code.
CK_RV KeyRv(CK_RV rv, CK_RV key_rv) { return rv == CKR_OBJECT_HANDLE_INVALID ? key_rv : rv; }

CK_RV CheckMechanism(const Group& group, uint64_t type) {
  return group.mechanisms().count(type) ? CKR_OK : CKR_MECHANISM_INVALID;
}

}  // namespace

CK_RV CreateObject(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(const v1::AttributeList* tmpl, ctx.Attributes(1));
  if (CK_RV rv = CheckNewObjectTemplate(ctx, *session, *tmpl); rv != CKR_OK) return rv;
  ASSIGN_OR_RV(wire::NativeTemplate native, wire::NativeTemplate::Decode(*tmpl));
  const size_t mi = session->group->serving_member();
  Member* m = session->group->member(mi);
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  CK_RV rv;
  {
    absl::MutexLock lock(&m->holder_mutex());
    rv = m->fn()->C_CreateObject(m->holder(), native.data(), native.size(), &h);
  }
  if (rv != CKR_OK) return rv;
  uint64_t out = 0;
  rv = AdoptNewObject(ctx, *session, mi, h, &out);
  if (rv == CKR_OK) ctx.AddUlong(out);
  return rv;
}

CK_RV CopyObject(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(uint64_t handle, ctx.Ulong(1));
  ASSIGN_OR_RV(const v1::AttributeList* tmpl, ctx.Attributes(2));
  ASSIGN_OR_RV(ObjectRef ref, ctx.Object(*session, handle, CKR_OBJECT_HANDLE_INVALID));
  if (CK_RV rv = CheckNewObjectTemplate(ctx, *session, *tmpl); rv != CKR_OK) return rv;
  ASSIGN_OR_RV(wire::NativeTemplate native, wire::NativeTemplate::Decode(*tmpl));
  Member* m = session->group->member(ref.member);
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  CK_RV rv;
  {
    absl::MutexLock lock(&m->holder_mutex());
    rv = m->fn()->C_CopyObject(m->holder(), ref.member_handle, native.data(), native.size(), &h);
  }
  if (rv != CKR_OK) return rv;
  uint64_t out = 0;
  rv = AdoptNewObject(ctx, *session, ref.member, h, &out);
  if (rv == CKR_OK) ctx.AddUlong(out);
  return rv;
}

CK_RV DestroyObject(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(uint64_t handle, ctx.Ulong(1));
  ASSIGN_OR_RV(ObjectRef ref, ctx.Object(*session, handle, CKR_OBJECT_HANDLE_INVALID));
  if (ref.owner_session == 0 && !session->rw) return CKR_SESSION_READ_ONLY;
  Member* m = session->group->member(ref.member);
  CK_RV rv;
  {
    absl::MutexLock lock(&m->holder_mutex());
    rv = m->fn()->C_DestroyObject(m->holder(), ref.member_handle);
  }
  if (rv == CKR_OK || rv == CKR_OBJECT_HANDLE_INVALID) ctx.UnmapObject(handle);
  if (rv == CKR_OK) {
    LogInfo(absl::StrCat("instance ", ctx.instance().id, ": destroyed object on ", m->name()));
  }
  return rv;
}

CK_RV GetObjectSize(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(uint64_t handle, ctx.Ulong(1));
  ASSIGN_OR_RV(ObjectRef ref, ctx.Object(*session, handle, CKR_OBJECT_HANDLE_INVALID));
  Member* m = session->group->member(ref.member);
  ASSIGN_OR_RV(CK_SESSION_HANDLE h, m->Acquire());
  PooledSession ps(m, h);
  CK_ULONG size = 0;
  CK_RV rv = m->fn()->C_GetObjectSize(h, ref.member_handle, &size);
  if (rv == CKR_OK) ctx.AddUlong(size);
  return rv;
}

namespace {

// Reads one attribute's value from a member into wire form, following one
// level of nested templates.
CK_RV ReadValue(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj,
                CK_ATTRIBUTE_TYPE type, CK_ULONG len, v1::Attribute* out) {
  CK_ATTRIBUTE a = {type, nullptr, len};
  std::string buf;
  std::vector<CK_ATTRIBUTE> inner;
  std::vector<std::string> inner_bufs;
  if (wire::KindOf(type) == wire::AttributeKind::kTemplate) {
    inner.resize(len / sizeof(CK_ATTRIBUTE));
    for (auto& i : inner) i = {0, nullptr, 0};
    a.pValue = inner.data();
    CK_RV rv = fn->C_GetAttributeValue(h, obj, &a, 1);  // learn inner types and lengths
    if (rv != CKR_OK) return rv;
    inner_bufs.resize(inner.size());
    for (size_t i = 0; i < inner.size(); ++i) {
      if (inner[i].ulValueLen == CK_UNAVAILABLE_INFORMATION) return CKR_GENERAL_ERROR;
      inner_bufs[i].resize(inner[i].ulValueLen);
      inner[i].pValue = inner_bufs[i].data();
    }
  } else {
    buf.resize(len);
    a.pValue = buf.data();
  }
  CK_RV rv = fn->C_GetAttributeValue(h, obj, &a, 1);
  if (rv != CKR_OK) return rv;
  return wire::GetCkRv(wire::EncodeNativeValue(a, out));
}

}  // namespace

CK_RV GetAttributeValue(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(uint64_t handle, ctx.Ulong(1));
  ASSIGN_OR_RV(const v1::AttributeQueryList* queries, ctx.Queries(2));
  ASSIGN_OR_RV(ObjectRef ref, ctx.Object(*session, handle, CKR_OBJECT_HANDLE_INVALID));
  Member* m = session->group->member(ref.member);
  ASSIGN_OR_RV(CK_SESSION_HANDLE h, m->Acquire());
  PooledSession ps(m, h);
  const int n = queries->queries_size();
  // Pass 1: lengths and availability of every attribute.
  std::vector<CK_ATTRIBUTE> probe(n);
  for (int i = 0; i < n; ++i) probe[i] = {queries->queries(i).type(), nullptr, 0};
  CK_RV rv = m->fn()->C_GetAttributeValue(h, ref.member_handle, probe.data(), n);
  if (rv != CKR_OK && rv != CKR_ATTRIBUTE_SENSITIVE && rv != CKR_ATTRIBUTE_TYPE_INVALID) {
    return rv;
  }
  auto* answers = ctx.AddResult()->mutable_answers();
  for (int i = 0; i < n; ++i) {
    const v1::AttributeQuery& q = queries->queries(i);
    v1::AttributeAnswer* ans = answers->add_answers();
    if (probe[i].ulValueLen == CK_UNAVAILABLE_INFORMATION) {
      // Which of the two reasons: ask for this attribute alone.
      CK_ATTRIBUTE one = {q.type(), nullptr, 0};
      CK_RV why = m->fn()->C_GetAttributeValue(h, ref.member_handle, &one, 1);
      ans->set_status(why == CKR_ATTRIBUTE_SENSITIVE ? v1::AttributeAnswer::SENSITIVE
                                                     : v1::AttributeAnswer::TYPE_INVALID);
      continue;
    }
    const wire::AttributeKind kind = wire::KindOf(q.type());
    if (kind == wire::AttributeKind::kTemplate) {
      ans->set_length(probe[i].ulValueLen / sizeof(CK_ATTRIBUTE));
    } else if (kind == wire::AttributeKind::kMechanisms) {
      ans->set_length(probe[i].ulValueLen / sizeof(CK_MECHANISM_TYPE));
    } else {
      ans->set_length(probe[i].ulValueLen);
    }
    if (!q.want_value()) continue;
    CK_RV vrv = ReadValue(m->fn(), h, ref.member_handle, q.type(), probe[i].ulValueLen,
                          ans->mutable_value());
    if (vrv == CKR_ATTRIBUTE_SENSITIVE) {
      ans->set_status(v1::AttributeAnswer::SENSITIVE);
      ans->clear_value();
    } else if (vrv != CKR_OK) {
      return vrv;
    }
  }
  return CKR_OK;
}

CK_RV SetAttributeValue(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(uint64_t handle, ctx.Ulong(1));
  ASSIGN_OR_RV(const v1::AttributeList* tmpl, ctx.Attributes(2));
  ASSIGN_OR_RV(ObjectRef ref, ctx.Object(*session, handle, CKR_OBJECT_HANDLE_INVALID));
  if (ref.owner_session == 0 && !session->rw) return CKR_SESSION_READ_ONLY;
  ASSIGN_OR_RV(wire::NativeTemplate native, wire::NativeTemplate::Decode(*tmpl));
  Member* m = session->group->member(ref.member);
  absl::MutexLock lock(&m->holder_mutex());
  return m->fn()->C_SetAttributeValue(m->holder(), ref.member_handle, native.data(),
                                      native.size());
}

namespace {

// Runs one complete search on a member session.
CK_RV SearchMember(Member* m, const v1::AttributeList& tmpl, std::vector<CK_OBJECT_HANDLE>* out) {
  ASSIGN_OR_RV(wire::NativeTemplate native, wire::NativeTemplate::Decode(tmpl));
  ASSIGN_OR_RV(CK_SESSION_HANDLE h, m->Acquire());
  PooledSession ps(m, h);
  CK_RV rv = m->fn()->C_FindObjectsInit(h, native.data(), native.size());
  if (rv != CKR_OK) return rv;
  CK_OBJECT_HANDLE batch[256];
  CK_ULONG got = 0;
  do {
    rv = m->fn()->C_FindObjects(h, batch, 256, &got);
    if (rv != CKR_OK) {
      ps.MarkDirty();
      return rv;
    }
    out->insert(out->end(), batch, batch + got);
  } while (got == 256);
  rv = m->fn()->C_FindObjectsFinal(h);
  if (rv != CKR_OK) ps.MarkDirty();
  return rv;
}

}  // namespace

CK_RV FindObjectsInit(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(const v1::AttributeList* given, ctx.Attributes(1));
  absl::MutexLock slock(&session->mu);
  if (session->find_active) return CKR_OPERATION_ACTIVE;
  v1::AttributeList tmpl = *given;
  // Validate the caller's template once, whatever we add to it.
  ASSIGN_OR_RV(wire::NativeTemplate check, wire::NativeTemplate::Decode(tmpl));
  (void)check;
  std::vector<uint64_t> results;
  bool none = false;
  if (!ctx.LoggedIn(session->slot_id)) {
    auto priv = WireBool(tmpl, CKA_PRIVATE);
    if (priv.value_or(false)) none = true;
    if (!priv.has_value()) AddWireBool(tmpl, CKA_PRIVATE, false);
  }
  if (!none) {
    const size_t mi = session->group->serving_member();
    Member* m = session->group->member(mi);
    const auto token = WireBool(tmpl, CKA_TOKEN);
    if (!token.has_value() || *token) {
      v1::AttributeList t = tmpl;
      if (!token.has_value()) AddWireBool(t, CKA_TOKEN, true);
      std::vector<CK_OBJECT_HANDLE> found;
      if (CK_RV rv = SearchMember(m, t, &found); rv != CKR_OK) return rv;
      for (CK_OBJECT_HANDLE h : found) results.push_back(ctx.MapObject(mi, h, 0));
    }
    if (!token.has_value() || !*token) {
      // Session objects: the member shows the agent's, of every client;
      // only this instance's own are visible to it.
      v1::AttributeList t = tmpl;
      if (!token.has_value()) AddWireBool(t, CKA_TOKEN, false);
      std::vector<CK_OBJECT_HANDLE> found;
      if (CK_RV rv = SearchMember(m, t, &found); rv != CKR_OK) return rv;
      absl::MutexLock lock(&ctx.instance().mu);
      for (CK_OBJECT_HANDLE h : found) {
        auto it = ctx.instance().object_index.find({mi, h});
        if (it == ctx.instance().object_index.end()) continue;
        if (ctx.instance().objects[it->second].owner_session == 0) continue;
        results.push_back(it->second);
      }
    }
  }
  session->find_active = true;
  session->find_results = std::move(results);
  session->find_pos = 0;
  return CKR_OK;
}

CK_RV FindObjects(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(uint64_t max, ctx.Ulong(1));
  absl::MutexLock slock(&session->mu);
  if (!session->find_active) return CKR_OPERATION_NOT_INITIALIZED;
  auto* list = ctx.AddResult()->mutable_ulongs();
  while (session->find_pos < session->find_results.size() &&
         static_cast<uint64_t>(list->values_size()) < max) {
    list->add_values(session->find_results[session->find_pos++]);
  }
  return CKR_OK;
}

CK_RV FindObjectsFinal(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  absl::MutexLock slock(&session->mu);
  if (!session->find_active) return CKR_OPERATION_NOT_INITIALIZED;
  session->find_active = false;
  session->find_results.clear();
  session->find_pos = 0;
  return CKR_OK;
}

CK_RV GenerateKey(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(const v1::Mechanism* mech, ctx.Mechanism(1));
  ASSIGN_OR_RV(const v1::AttributeList* tmpl, ctx.Attributes(2));
  if (CK_RV rv = CheckMechanism(*session->group, mech->type()); rv != CKR_OK) return rv;
  if (CK_RV rv = CheckNewObjectTemplate(ctx, *session, *tmpl); rv != CKR_OK) return rv;
  ASSIGN_OR_RV(wire::NativeMechanism nm, wire::NativeMechanism::Decode(*mech));
  ASSIGN_OR_RV(wire::NativeTemplate native, wire::NativeTemplate::Decode(*tmpl));
  const size_t mi = session->group->serving_member();
  Member* m = session->group->member(mi);
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  CK_RV rv;
  {
    absl::MutexLock lock(&m->holder_mutex());
    rv = m->fn()->C_GenerateKey(m->holder(), nm.get(), native.data(), native.size(), &h);
  }
  if (rv != CKR_OK) return rv;
  uint64_t out = 0;
  rv = AdoptNewObject(ctx, *session, mi, h, &out);
  if (rv == CKR_OK) {
    ctx.AddUlong(out);
    LogInfo(absl::StrCat("instance ", ctx.instance().id, ": generated key with ",
                         wire::MechanismName(mech->type()), " on ", m->name()));
  }
  return rv;
}

CK_RV GenerateKeyPair(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(const v1::Mechanism* mech, ctx.Mechanism(1));
  ASSIGN_OR_RV(const v1::AttributeList* pub_tmpl, ctx.Attributes(2));
  ASSIGN_OR_RV(const v1::AttributeList* priv_tmpl, ctx.Attributes(3));
  if (CK_RV rv = CheckMechanism(*session->group, mech->type()); rv != CKR_OK) return rv;
  if (CK_RV rv = CheckNewObjectTemplate(ctx, *session, *pub_tmpl); rv != CKR_OK) return rv;
  if (CK_RV rv = CheckNewObjectTemplate(ctx, *session, *priv_tmpl); rv != CKR_OK) return rv;
  ASSIGN_OR_RV(wire::NativeMechanism nm, wire::NativeMechanism::Decode(*mech));
  ASSIGN_OR_RV(wire::NativeTemplate pub, wire::NativeTemplate::Decode(*pub_tmpl));
  ASSIGN_OR_RV(wire::NativeTemplate priv, wire::NativeTemplate::Decode(*priv_tmpl));
  const size_t mi = session->group->serving_member();
  Member* m = session->group->member(mi);
  CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE, hpriv = CK_INVALID_HANDLE;
  CK_RV rv;
  {
    absl::MutexLock lock(&m->holder_mutex());
    rv = m->fn()->C_GenerateKeyPair(m->holder(), nm.get(), pub.data(), pub.size(), priv.data(),
                                    priv.size(), &hpub, &hpriv);
  }
  if (rv != CKR_OK) return rv;
  uint64_t out_pub = 0, out_priv = 0;
  rv = AdoptNewObject(ctx, *session, mi, hpub, &out_pub);
  if (rv != CKR_OK) {
    absl::MutexLock lock(&m->holder_mutex());
    m->fn()->C_DestroyObject(m->holder(), hpriv);
    return rv;
  }
  rv = AdoptNewObject(ctx, *session, mi, hpriv, &out_priv);
  if (rv != CKR_OK) {
    ctx.UnmapObject(out_pub);
    absl::MutexLock lock(&m->holder_mutex());
    m->fn()->C_DestroyObject(m->holder(), hpub);
    return rv;
  }
  ctx.AddUlong(out_pub);
  ctx.AddUlong(out_priv);
  LogInfo(absl::StrCat("instance ", ctx.instance().id, ": generated key pair with ",
                       wire::MechanismName(mech->type()), " on ", m->name()));
  return CKR_OK;
}

CK_RV WrapKey(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(const v1::Mechanism* mech, ctx.Mechanism(1));
  ASSIGN_OR_RV(uint64_t wrapping, ctx.Ulong(2));
  ASSIGN_OR_RV(uint64_t key, ctx.Ulong(3));
  ASSIGN_OR_RV(const v1::OutputCapacity* cap, ctx.Capacity(4));
  if (CK_RV rv = CheckMechanism(*session->group, mech->type()); rv != CKR_OK) return rv;
  ASSIGN_OR_RV(ObjectRef wref, ctx.Object(*session, wrapping, CKR_WRAPPING_KEY_HANDLE_INVALID));
  ASSIGN_OR_RV(ObjectRef kref, ctx.Object(*session, key, CKR_KEY_HANDLE_INVALID));
  ASSIGN_OR_RV(wire::NativeMechanism nm, wire::NativeMechanism::Decode(*mech));
  Member* m = session->group->member(wref.member);
  ASSIGN_OR_RV(CK_SESSION_HANDLE h, m->Acquire());
  PooledSession ps(m, h);
  OutputBuffer out(*cap);
  CK_RV rv = m->fn()->C_WrapKey(h, nm.get(), wref.member_handle, kref.member_handle, out.ptr(),
                                out.len());
  if (rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL) ps.MarkDirty();
  if (rv == CKR_OBJECT_HANDLE_INVALID) rv = CKR_KEY_HANDLE_INVALID;
  if (rv == CKR_OK || rv == CKR_BUFFER_TOO_SMALL) out.Answer(rv, ctx.AddResult());
  return rv;
}

CK_RV UnwrapKey(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(const v1::Mechanism* mech, ctx.Mechanism(1));
  ASSIGN_OR_RV(uint64_t unwrapping, ctx.Ulong(2));
  ASSIGN_OR_RV(const std::string* wrapped, ctx.Bytes(3));
  ASSIGN_OR_RV(const v1::AttributeList* tmpl, ctx.Attributes(4));
  if (CK_RV rv = CheckMechanism(*session->group, mech->type()); rv != CKR_OK) return rv;
  ASSIGN_OR_RV(ObjectRef uref,
               ctx.Object(*session, unwrapping, CKR_UNWRAPPING_KEY_HANDLE_INVALID));
  if (CK_RV rv = CheckNewObjectTemplate(ctx, *session, *tmpl); rv != CKR_OK) return rv;
  ASSIGN_OR_RV(wire::NativeMechanism nm, wire::NativeMechanism::Decode(*mech));
  ASSIGN_OR_RV(wire::NativeTemplate native, wire::NativeTemplate::Decode(*tmpl));
  Member* m = session->group->member(uref.member);
  std::string blob = *wrapped;
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  CK_RV rv;
  {
    absl::MutexLock lock(&m->holder_mutex());
    rv = m->fn()->C_UnwrapKey(m->holder(), nm.get(), uref.member_handle,
                              reinterpret_cast<CK_BYTE_PTR>(blob.data()), blob.size(),
                              native.data(), native.size(), &h);
  }
  if (rv != CKR_OK) return KeyRv(rv, CKR_UNWRAPPING_KEY_HANDLE_INVALID);
  uint64_t out = 0;
  rv = AdoptNewObject(ctx, *session, uref.member, h, &out);
  if (rv == CKR_OK) ctx.AddUlong(out);
  return rv;
}

CK_RV DeriveKey(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(const v1::Mechanism* mech, ctx.Mechanism(1));
  ASSIGN_OR_RV(uint64_t base, ctx.Ulong(2));
  ASSIGN_OR_RV(const v1::AttributeList* tmpl, ctx.Attributes(3));
  if (CK_RV rv = CheckMechanism(*session->group, mech->type()); rv != CKR_OK) return rv;
  ASSIGN_OR_RV(ObjectRef bref, ctx.Object(*session, base, CKR_KEY_HANDLE_INVALID));
  if (CK_RV rv = CheckNewObjectTemplate(ctx, *session, *tmpl); rv != CKR_OK) return rv;
  ASSIGN_OR_RV(wire::NativeMechanism nm, wire::NativeMechanism::Decode(*mech));
  ASSIGN_OR_RV(wire::NativeTemplate native, wire::NativeTemplate::Decode(*tmpl));
  Member* m = session->group->member(bref.member);
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  CK_RV rv;
  {
    absl::MutexLock lock(&m->holder_mutex());
    rv = m->fn()->C_DeriveKey(m->holder(), nm.get(), bref.member_handle, native.data(),
                              native.size(), &h);
  }
  if (rv != CKR_OK) return KeyRv(rv, CKR_KEY_HANDLE_INVALID);
  uint64_t out = 0;
  rv = AdoptNewObject(ctx, *session, bref.member, h, &out);
  if (rv == CKR_OK) ctx.AddUlong(out);
  return rv;
}

}  // namespace hsmux::agent
