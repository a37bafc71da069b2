// Object and key management. Token objects live in the group's registry and
// are written to every member through the Writer (DESIGN §3); session
// objects live on one member, in its holder session, so they outlive pooled
// sessions. The agent enforces R/O sessions and private-object rules itself
// because it is always logged in to the members.
#include <cstring>
#include <functional>
#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "agent.h"
#include "dispatch.h"
#include "audit.h"
#include "log.h"
#include "wire/attribute_codec.h"
#include "wire/attribute_kinds.h"
#include "wire/function_table.h"
#include "wire/mechanism_codec.h"

namespace hsmux::agent {
namespace {

std::optional<bool> WireBool(const v1::AttributeList& list, CK_ATTRIBUTE_TYPE type) {
  for (const auto& a : list.attributes()) {
    if (a.type() == type && a.value_case() == v1::Attribute::kBoolean) return a.boolean();
  }
  return std::nullopt;
}

std::optional<uint64_t> WireUlong(const v1::AttributeList& list, CK_ATTRIBUTE_TYPE type) {
  for (const auto& a : list.attributes()) {
    if (a.type() == type && a.value_case() == v1::Attribute::kUlong) return a.ulong();
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
                             const v1::AttributeList& tmpl, CK_OBJECT_CLASS implied_class = 0) {
  if (ctx.ObjectLimitReached()) {
    LogWarning(absl::StrCat("instance ", ctx.instance().id, ": max_objects_per_instance reached"));
    return CKR_DEVICE_MEMORY;
  }
  if (WireBool(tmpl, CKA_TOKEN).value_or(false) && !session.rw) return CKR_SESSION_READ_ONLY;
  if (WireBool(tmpl, CKA_PRIVATE).value_or(false) && !ctx.LoggedIn(session.slot_id)) {
    return CKR_USER_NOT_LOGGED_IN;
  }
  // An identity with a key allow-list makes keys inside it only.
  std::optional<uint64_t> cls = WireUlong(tmpl, CKA_CLASS);
  if (!cls.has_value() && implied_class != 0) cls = implied_class;
  std::string label, id;
  for (const auto& a : tmpl.attributes()) {
    if (a.type() == CKA_LABEL) label = a.bytes();
    if (a.type() == CKA_ID) id = a.bytes();
  }
  if (cls.has_value() && !ctx.ObjectAllowed(session.slot_id, *cls, label, id)) {
    LogWarning(absl::StrCat("instance ", ctx.instance().id,
                            ": key outside the identity's allow-list refused"));
    return CKR_TEMPLATE_INCONSISTENT;
  }
  return CKR_OK;
}

// After a member made a session object with defaults the template did not
// show: checks the same rules on what was made, undoes the write if they
// fail, and maps the new handle for the instance.
CK_RV AdoptSessionObject(CallContext& ctx, const ClientSession& session, size_t member_index,
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
  } else if (token) {
    // The template did not ask for a token object but the member made one:
    // it would bypass replication.
    refuse = CKR_TEMPLATE_INCONSISTENT;
  } else if (priv && !ctx.LoggedIn(session.slot_id)) {
    refuse = CKR_USER_NOT_LOGGED_IN;
  }
  if (refuse != CKR_OK) {
    absl::MutexLock lock(&m->holder_mutex());
    m->fn()->C_DestroyObject(m->holder(), member_handle);
    return refuse;
  }
  *out = ctx.MapObject(member_index, member_handle, session.handle);
  return CKR_OK;
}

// After the Writer made token objects: private ones made before login are
// undone (their privacy came from member defaults), the rest are mapped.
CK_RV AdoptTokenObjects(CallContext& ctx, const ClientSession& session,
                        const std::vector<uint64_t>& ids) {
  Group& group = *session.group;
  bool refuse = false;
  for (uint64_t id : ids) {
    auto obj = group.registry().Get(id);
    if (obj != nullptr && obj->snapshot.is_private && !ctx.LoggedIn(session.slot_id)) {
      refuse = true;
    }
  }
  if (refuse) {
    for (uint64_t id : ids) group.writer().Destroy(id);
    return CKR_USER_NOT_LOGGED_IN;
  }
  for (uint64_t id : ids) {
    ctx.AddUlong(ctx.MapLogical(id));
    auto obj = group.registry().Get(id);
    const CK_OBJECT_CLASS cls = obj != nullptr ? obj->snapshot.object_class : 0;
    if (cls == CKO_SECRET_KEY || cls == CKO_PRIVATE_KEY || cls == CKO_PUBLIC_KEY) {
      Audit("key_created", ClientKey(*ctx.instance().client),
            {{"group", group.config().label}, {"class", std::to_string(cls)},
             {"key_type", std::to_string(obj->snapshot.key_type)}});
    }
  }
  return CKR_OK;
}

// Session-object creation on one member's holder session.
using SessionMake = std::function<CK_RV(Member& m, CK_SESSION_HANDLE holder,
                                        std::vector<CK_OBJECT_HANDLE>* made)>;

CK_RV MakeSessionObjects(CallContext& ctx, const ClientSession& session, size_t member,
                         size_t count, const SessionMake& make) {
  Member* m = session.group->member(member);
  std::vector<CK_OBJECT_HANDLE> made(count, CK_INVALID_HANDLE);
  CK_RV rv;
  {
    InFlight f(m);
    absl::MutexLock lock(&m->holder_mutex());
    rv = make(*m, m->holder(), &made);
  }
  if (rv != CKR_OK) return rv;
  std::vector<uint64_t> out(count, 0);
  for (size_t k = 0; k < count; ++k) {
    rv = AdoptSessionObject(ctx, session, member, made[k], &out[k]);
    if (rv != CKR_OK) {
      for (size_t j = 0; j < count; ++j) {
        if (j < k) {
          ctx.UnmapObject(out[j]);
        }
        if (j != k) {
          absl::MutexLock lock(&m->holder_mutex());
          m->fn()->C_DestroyObject(m->holder(), made[j]);
        }
      }
      return rv;
    }
  }
  for (uint64_t h : out) ctx.AddUlong(h);
  return CKR_OK;
}

CK_RV FromStatus(const absl::Status& s) { return wire::GetCkRv(s); }

// Runs the Writer and maps what it made for the instance.
CK_RV WriteTokenObjects(CallContext& ctx, const ClientSession& session, Writer::How how,
                        size_t source, std::vector<v1::AttributeList> templates,
                        const std::vector<bool>& is_key, Writer::MakeFn make,
                        bool keygen = false) {
  auto ids = session.group->writer().Create(how, source, std::move(templates), is_key,
                                            std::move(make), keygen);
  if (!ids.ok()) return FromStatus(ids.status());
  return AdoptTokenObjects(ctx, session, *ids);
}

// The same for writes that may start on any member (new keys and objects
// that depend on no existing one): when the source member fails (a device
// error or no answer in time), the write is undone there (or left pending
// for catch-up to drop) and runs again on another healthy member (DESIGN §5).
CK_RV WriteTokenObjectsAnywhere(CallContext& ctx, const ClientSession& session, Writer::How how,
                                const std::vector<v1::AttributeList>& templates,
                                const std::vector<bool>& is_key, const Writer::MakeFn& make,
                                bool keygen = false) {
  Group& group = *session.group;
  std::set<size_t> tried;
  CK_RV rv = CKR_DEVICE_ERROR;
  for (size_t attempt = 0; attempt < group.member_count(); ++attempt) {
    auto source = group.RouteWhere([&](size_t i) { return tried.count(i) == 0; });
    if (!source.has_value()) break;
    rv = WriteTokenObjects(ctx, session, how, *source, templates, is_key, make, keygen);
    if (!IsDeviceFailure(rv)) return rv;
    tried.insert(*source);
    group.member(*source)->failovers.fetch_add(1);
    LogWarning(absl::StrCat("instance ", ctx.instance().id, ": ",
                            wire::FunctionName(ctx.request().function()), " moves off member ",
                            group.member(*source)->name(), " (", wire::CkRvName(rv), ")"));
  }
  return IsDeviceFailure(rv) ? CKR_DEVICE_ERROR : rv;
}

bool IsKeyClass(std::optional<uint64_t> cls) {
  return cls.has_value() && (*cls == CKO_SECRET_KEY || *cls == CKO_PRIVATE_KEY);
}



CK_RV KeyRv(CK_RV rv, CK_RV key_rv) { return rv == CKR_OBJECT_HANDLE_INVALID ? key_rv : rv; }

}  // namespace

CK_RV CreateObject(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(const v1::AttributeList* tmpl, ctx.Attributes(1));
  if (CK_RV rv = CheckNewObjectTemplate(ctx, *session, *tmpl); rv != CKR_OK) return rv;
  // Validates the template's encoding before any member sees it.
  ASSIGN_OR_RV(wire::NativeTemplate check, wire::NativeTemplate::Decode(*tmpl));
  (void)check;
  Group& group = *session->group;
  if (!WireBool(*tmpl, CKA_TOKEN).value_or(false)) {
    CK_RV rv = MakeSessionObjects(ctx, *session, ctx.HomeMember(group), 1,
                                  [&](Member& m, CK_SESSION_HANDLE h, auto* made) {
                                    auto native = wire::NativeTemplate::Decode(*tmpl);
                                    return m.fn()->C_CreateObject(h, native->data(),
                                                                  native->size(), &(*made)[0]);
                                  });
    // Kept so the object can be made again on another member (DESIGN §3).
    if (rv == CKR_OK) ctx.KeepTemplate(ctx.LastResultUlong(), *tmpl);
    return rv;
  }
  const bool key = IsKeyClass(WireUlong(*tmpl, CKA_CLASS));
  auto make = [](size_t, CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE h,
                 const std::vector<v1::AttributeList>& t,
                 std::vector<CK_OBJECT_HANDLE>* made) -> CK_RV {
    auto native = wire::NativeTemplate::Decode(t[0]);
    if (!native.ok()) return wire::GetCkRv(native.status());
    return fn->C_CreateObject(h, native->data(), native->size(), &(*made)[0]);
  };
  return WriteTokenObjectsAnywhere(
      ctx, *session, key ? Writer::How::kKeysByWrap : Writer::How::kReplay, {*tmpl}, {key}, make);
}

CK_RV CopyObject(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(uint64_t handle, ctx.Ulong(1));
  ASSIGN_OR_RV(const v1::AttributeList* tmpl, ctx.Attributes(2));
  ASSIGN_OR_RV(ObjectRef ref, ctx.Object(*session, handle, CKR_OBJECT_HANDLE_INVALID));
  if (CK_RV rv = CheckNewObjectTemplate(ctx, *session, *tmpl); rv != CKR_OK) return rv;
  ASSIGN_OR_RV(wire::NativeTemplate check, wire::NativeTemplate::Decode(*tmpl));
  (void)check;
  Group& group = *session->group;
  // The copy is a token object if the template says so, else like its source.
  bool token = ref.logical_id != 0;
  if (auto t = WireBool(*tmpl, CKA_TOKEN)) token = *t;
  if (token && !session->rw) return CKR_SESSION_READ_ONLY;
  if (!token) {
    ASSIGN_OR_RV(auto place, ctx.Place(group, ref, CKR_OBJECT_HANDLE_INVALID));
    return MakeSessionObjects(ctx, *session, place.first, 1,
                              [&](Member& m, CK_SESSION_HANDLE h, auto* made) {
                                auto native = wire::NativeTemplate::Decode(*tmpl);
                                return m.fn()->C_CopyObject(h, place.second, native->data(),
                                                            native->size(), &(*made)[0]);
                              });
  }
  // A token copy: of a token object, replayed on every member holding it
  // (the key value never leaves the members); of a session object (Java
  // turns session keys into token keys this way), made where the source is
  // and replicated like a new key.
  std::vector<CK_OBJECT_HANDLE> sources(group.member_count());
  for (size_t i = 0; i < sources.size(); ++i) sources[i] = ctx.HandleOn(group, ref, i);
  auto make = [sources](size_t member, CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE h,
                        const std::vector<v1::AttributeList>& t,
                        std::vector<CK_OBJECT_HANDLE>* made) -> CK_RV {
    const CK_OBJECT_HANDLE src = sources[member];
    if (src == CK_INVALID_HANDLE) return CKR_DEVICE_ERROR;
    auto native = wire::NativeTemplate::Decode(t[0]);
    if (!native.ok()) return wire::GetCkRv(native.status());
    return fn->C_CopyObject(h, src, native->data(), native->size(), &(*made)[0]);
  };
  if (ref.logical_id != 0) {
    ASSIGN_OR_RV(auto place, ctx.Place(group, ref, CKR_OBJECT_HANDLE_INVALID));
    return WriteTokenObjects(ctx, *session, Writer::How::kReplay, place.first, {*tmpl}, {false},
                             make);
  }
  return WriteTokenObjects(ctx, *session, Writer::How::kKeysByWrap, ref.member, {*tmpl}, {true},
                           make);
}

CK_RV DestroyObject(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(uint64_t handle, ctx.Ulong(1));
  ASSIGN_OR_RV(ObjectRef ref, ctx.Object(*session, handle, CKR_OBJECT_HANDLE_INVALID));
  if (ref.logical_id != 0) {
    if (!session->rw) return CKR_SESSION_READ_ONLY;
    CK_RV rv = session->group->writer().Destroy(ref.logical_id);
    if (rv == CKR_OK || rv == CKR_OBJECT_HANDLE_INVALID) ctx.UnmapObject(handle);
    if (rv == CKR_OK) {
      LogInfo(absl::StrCat("instance ", ctx.instance().id, " (", ctx.instance().identity,
                           "): destroyed token object on every member"));
      Audit("object_destroyed", ClientKey(*ctx.instance().client),
            {{"group", session->group->config().label}});
    }
    return rv;
  }
  Member* m = session->group->member(ref.member);
  CK_RV rv;
  {
    absl::MutexLock lock(&m->holder_mutex());
    rv = m->fn()->C_DestroyObject(m->holder(), ref.member_handle);
  }
  if (rv == CKR_OK || rv == CKR_OBJECT_HANDLE_INVALID) ctx.UnmapObject(handle);
  return rv;
}

CK_RV GetObjectSize(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(uint64_t handle, ctx.Ulong(1));
  ASSIGN_OR_RV(ObjectRef ref, ctx.Object(*session, handle, CKR_OBJECT_HANDLE_INVALID));
  Group& group = *session->group;
  std::vector<CK_OBJECT_HANDLE> where(group.member_count());
  for (size_t i = 0; i < where.size(); ++i) where[i] = ctx.HandleOn(group, ref, i);
  auto size = std::make_shared<CK_ULONG>(0);
  CK_RV rv = group.RunOnMember(
      [&](size_t i) { return where[i] != CK_INVALID_HANDLE; },
      [where, size](size_t i, CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE h) {
        return fn->C_GetObjectSize(h, where[i], size.get());
      },
      "C_GetObjectSize");
  if (rv == CKR_OK) ctx.AddUlong(*size);
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

uint64_t AnswerLength(const v1::Attribute& a) {
  switch (a.value_case()) {
    case v1::Attribute::kNested:
      return a.nested().attributes_size();
    case v1::Attribute::kMechanisms:
      return a.mechanisms().values_size();
    case v1::Attribute::kBytes:
      return a.bytes().size();
    default:
      return 0;  // fixed-size values: the module knows their native size
  }
}

// Answers from the registry when every queried attribute is kept there.
bool AnswerFromRegistry(const LogicalObject& obj, const v1::AttributeQueryList& queries,
                        v1::AttributeAnswerList* answers) {
  for (const auto& q : queries.queries()) {
    if (!Cacheable(obj.snapshot.object_class, q.type()) &&
        obj.snapshot.sensitive.count(q.type()) == 0) {
      // A key value, or a type the registry does not read: ask a member.
      const bool known_type = std::find(CachedTypes().begin(), CachedTypes().end(), q.type()) !=
                              CachedTypes().end();
      if (!known_type || q.type() == CKA_VALUE) return false;
    }
  }
  for (const auto& q : queries.queries()) {
    v1::AttributeAnswer* ans = answers->add_answers();
    if (obj.snapshot.sensitive.count(q.type())) {
      ans->set_status(v1::AttributeAnswer::SENSITIVE);
      continue;
    }
    const v1::Attribute* have = FindAttribute(obj.snapshot.attributes, q.type());
    if (have == nullptr) {
      ans->set_status(v1::AttributeAnswer::TYPE_INVALID);
      continue;
    }
    ans->set_length(AnswerLength(*have));
    if (q.want_value()) *ans->mutable_value() = *have;
  }
  return true;
}

// The member's answers to C_GetAttributeValue queries (runs on a worker).
CK_RV ReadAnswers(CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE obj,
                  const v1::AttributeQueryList& queries, const LogicalObject* logical,
                  v1::AttributeAnswerList* answers) {
  const int n = queries.queries_size();
  // Pass 1: lengths and availability of every attribute.
  std::vector<CK_ATTRIBUTE> probe(n);
  for (int i = 0; i < n; ++i) probe[i] = {queries.queries(i).type(), nullptr, 0};
  CK_RV rv = fn->C_GetAttributeValue(h, obj, probe.data(), n);
  if (rv != CKR_OK && rv != CKR_ATTRIBUTE_SENSITIVE && rv != CKR_ATTRIBUTE_TYPE_INVALID) {
    return rv;
  }
  for (int i = 0; i < n; ++i) {
    const v1::AttributeQuery& q = queries.queries(i);
    v1::AttributeAnswer* ans = answers->add_answers();
    if (probe[i].ulValueLen == CK_UNAVAILABLE_INFORMATION) {
      // Which of the two reasons: ask for this attribute alone.
      CK_ATTRIBUTE one = {q.type(), nullptr, 0};
      CK_RV why = fn->C_GetAttributeValue(h, obj, &one, 1);
      ans->set_status(why == CKR_ATTRIBUTE_SENSITIVE ? v1::AttributeAnswer::SENSITIVE
                                                     : v1::AttributeAnswer::TYPE_INVALID);
      continue;
    }
    // Values that differ between replicas by how they were made: the
    // registry's weakest value.
    if (logical != nullptr && Cacheable(logical->snapshot.object_class, q.type())) {
      if (const v1::Attribute* have = FindAttribute(logical->snapshot.attributes, q.type())) {
        ans->set_length(AnswerLength(*have));
        if (q.want_value()) *ans->mutable_value() = *have;
        continue;
      }
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
    CK_RV vrv = ReadValue(fn, h, obj, q.type(), probe[i].ulValueLen, ans->mutable_value());
    if (vrv == CKR_ATTRIBUTE_SENSITIVE) {
      ans->set_status(v1::AttributeAnswer::SENSITIVE);
      ans->clear_value();
    } else if (vrv != CKR_OK) {
      return vrv;
    }
  }
  return CKR_OK;
}

}  // namespace

CK_RV GetAttributeValue(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(uint64_t handle, ctx.Ulong(1));
  ASSIGN_OR_RV(const v1::AttributeQueryList* queries, ctx.Queries(2));
  ASSIGN_OR_RV(ObjectRef ref, ctx.Object(*session, handle, CKR_OBJECT_HANDLE_INVALID));
  std::shared_ptr<const LogicalObject> logical;
  if (ref.logical_id != 0) {
    logical = session->group->registry().Get(ref.logical_id);
    if (logical == nullptr) return CKR_OBJECT_HANDLE_INVALID;
    v1::AttributeAnswerList answers;
    if (AnswerFromRegistry(*logical, *queries, &answers)) {
      *ctx.AddResult()->mutable_answers() = std::move(answers);
      return CKR_OK;
    }
  }
  Group& group = *session->group;
  for (int attempt = 0;; ++attempt) {
  std::vector<CK_OBJECT_HANDLE> where(group.member_count());
  for (size_t i = 0; i < where.size(); ++i) where[i] = ctx.HandleOn(group, ref, i);
  auto answers = std::make_shared<v1::AttributeAnswerList>();
  auto shared_queries = std::make_shared<v1::AttributeQueryList>(*queries);
  CK_RV rv = group.RunOnMember(
      [&](size_t i) { return where[i] != CK_INVALID_HANDLE; },
      [where, answers, shared_queries, logical](size_t i, CK_FUNCTION_LIST* fn,
                                                CK_SESSION_HANDLE h) {
        answers->Clear();
        return ReadAnswers(fn, h, where[i], *shared_queries, logical.get(), answers.get());
      },
      "C_GetAttributeValue");
  if (rv == CKR_DEVICE_ERROR && attempt == 0 && ref.logical_id == 0) {
    // The session object's member failed: look it up again (it is made
    // again elsewhere if it can be) and retry once.
    ASSIGN_OR_RV(ref, ctx.Object(*session, handle, CKR_OBJECT_HANDLE_INVALID));
    continue;
  }
  if (rv == CKR_OK) *ctx.AddResult()->mutable_answers() = std::move(*answers);
  return rv;
  }
}

CK_RV SetAttributeValue(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(uint64_t handle, ctx.Ulong(1));
  ASSIGN_OR_RV(const v1::AttributeList* tmpl, ctx.Attributes(2));
  ASSIGN_OR_RV(ObjectRef ref, ctx.Object(*session, handle, CKR_OBJECT_HANDLE_INVALID));
  ASSIGN_OR_RV(wire::NativeTemplate native, wire::NativeTemplate::Decode(*tmpl));
  if (ref.logical_id != 0) {
    if (!session->rw) return CKR_SESSION_READ_ONLY;
    return session->group->writer().SetAttributes(ref.logical_id, *tmpl);
  }
  Member* m = session->group->member(ref.member);
  absl::MutexLock lock(&m->holder_mutex());
  return m->fn()->C_SetAttributeValue(m->holder(), ref.member_handle, native.data(),
                                      native.size());
}

namespace {

// Runs one complete search on a member `where` allows (its session is
// pooled; the search runs on a worker with the call deadline, and moves to
// the next such member after a device failure). `*used` is the member that
// answered.
CK_RV SearchMember(Group& group, const std::function<bool(size_t)>& where,
                   const v1::AttributeList& tmpl, std::vector<CK_OBJECT_HANDLE>* out,
                   size_t* used = nullptr) {
  ASSIGN_OR_RV(wire::NativeTemplate check, wire::NativeTemplate::Decode(tmpl));
  (void)check;
  auto found = std::make_shared<std::vector<CK_OBJECT_HANDLE>>();
  auto shared_tmpl = std::make_shared<v1::AttributeList>(tmpl);
  CK_RV rv = group.RunOnMember(
      where,
      [found, shared_tmpl](size_t, CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE h) {
        auto native = wire::NativeTemplate::Decode(*shared_tmpl);
        if (!native.ok()) return wire::GetCkRv(native.status());
        CK_RV r = fn->C_FindObjectsInit(h, native->data(), native->size());
        if (r != CKR_OK) return r;
        CK_OBJECT_HANDLE batch[256];
        CK_ULONG got = 0;
        do {
          r = fn->C_FindObjects(h, batch, 256, &got);
          if (r != CKR_OK) return r;  // the session is closed, not pooled
          found->insert(found->end(), batch, batch + got);
        } while (got == 256);
        return fn->C_FindObjectsFinal(h);
      },
      "C_FindObjects", used);
  if (rv == CKR_OK) *out = *found;
  return rv;
}

// Token objects matching a template: from the registry, or — when the
// template names something the registry does not keep — from a member's
// search, keeping only objects the registry knows (never the replication
// key or an object being written).
CK_RV FindTokenObjects(CallContext& ctx, uint64_t slot, Group& group,
                       const v1::AttributeList& tmpl, bool logged_in,
                       std::vector<uint64_t>* ids) {
  auto matched = group.registry().Match(tmpl);
  if (!matched.has_value()) {
    // Any member will do: the search moves on if the first fails.
    size_t mi = 0;
    v1::AttributeList t = tmpl;
    AddWireBool(t, CKA_TOKEN, true);
    std::vector<CK_OBJECT_HANDLE> found;
    if (CK_RV rv = SearchMember(
            group, [](size_t) { return true; }, t, &found, &mi);
        rv != CKR_OK) {
      return rv;
    }
    std::vector<uint64_t> out;
    for (const auto& obj : group.registry().All()) {
      if (!obj->OnMember(mi)) continue;
      if (std::find(found.begin(), found.end(), obj->handles[mi]) != found.end()) {
        out.push_back(obj->id);
      }
    }
    matched = std::move(out);
  }
  for (uint64_t id : *matched) {
    auto obj = group.registry().Get(id);
    if (obj == nullptr) continue;
    if (!logged_in && obj->snapshot.is_private) continue;
    if (!ctx.ObjectAllowed(slot, obj->snapshot.object_class, obj->snapshot.label,
                           obj->snapshot.cka_id)) {
      continue;  // absent for this identity
    }
    ids->push_back(id);
  }
  return CKR_OK;
}

}  // namespace

// A search that finds at most this many objects answers their attributes
// too (a keystore load reads them next): one round trip in all.
constexpr size_t kFoundAttributesMax = 64;

// The registry's answers for every kept attribute of each token object found,
// as C_GetAttributeValue would give them (AnswerFromRegistry): the module
// answers later reads of them itself while the view epoch holds.
void AddFoundAttributes(CallContext& ctx, Group& group,
                        const std::vector<std::pair<uint64_t, uint64_t>>& found) {
  v1::AttributeQueryList queries;
  for (CK_ATTRIBUTE_TYPE t : CachedTypes()) {
    if (t == CKA_VALUE || wire::KindOf(t) == wire::AttributeKind::kTemplate) continue;
    auto* q = queries.add_queries();
    q->set_type(t);
    q->set_want_value(true);
  }
  for (const auto& [handle, id] : found) {
    auto obj = group.registry().Get(id);
    if (obj == nullptr) continue;
    v1::ObjectAttributes out;
    if (!AnswerFromRegistry(*obj, queries, out.mutable_answers())) continue;
    out.set_handle(handle);
    for (const auto& q : queries.queries()) out.add_types(q.type());
    *ctx.response().add_found_attributes() = std::move(out);
  }
}

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
  std::vector<std::pair<uint64_t, uint64_t>> token_found;  // (handle, logical id)
  const bool logged_in = ctx.LoggedIn(session->slot_id);
  bool none = false;
  if (!logged_in) {
    // Before login, private objects are invisible.
    auto priv = WireBool(tmpl, CKA_PRIVATE);
    if (priv.value_or(false)) none = true;
  }
  Group& group = *session->group;
  const auto token = WireBool(tmpl, CKA_TOKEN);
  if (!none && (!token.has_value() || *token)) {
    std::vector<uint64_t> ids;
    if (CK_RV rv = FindTokenObjects(ctx, session->slot_id, group, tmpl, logged_in, &ids);
        rv != CKR_OK) {
      return rv;
    }
    for (uint64_t id : ids) {
      results.push_back(ctx.MapLogical(id));
      token_found.emplace_back(results.back(), id);
    }
  }
  if (!none && (!token.has_value() || !*token)) {
    // Session objects: each member shows the agent's, of every client; only
    // this instance's own are visible to it.
    std::set<size_t> members;
    {
      absl::MutexLock lock(&ctx.instance().mu);
      for (auto& [key, h] : ctx.instance().object_index) members.insert(key.first);
    }
    v1::AttributeList t = tmpl;
    if (!token.has_value()) AddWireBool(t, CKA_TOKEN, false);
    if (!logged_in && !WireBool(t, CKA_PRIVATE).has_value()) AddWireBool(t, CKA_PRIVATE, false);
    for (size_t mi : members) {
      std::vector<CK_OBJECT_HANDLE> found;
      if (CK_RV rv = SearchMember(
              group, [mi](size_t i) { return i == mi; }, t, &found);
          rv != CKR_OK) {
        return rv;
      }
      absl::MutexLock lock(&ctx.instance().mu);
      for (CK_OBJECT_HANDLE h : found) {
        auto it = ctx.instance().object_index.find({mi, h});
        if (it == ctx.instance().object_index.end()) continue;
        results.push_back(it->second);
      }
    }
  }
  if (ctx.request().find_prefetch() > 0 && results.size() <= ctx.request().find_prefetch()) {
    // The module keeps the search (docs/decisions/0010): one round trip.
    auto* list = ctx.AddResult()->mutable_ulongs();
    for (uint64_t h : results) list->add_values(h);
    if (results.size() <= kFoundAttributesMax) AddFoundAttributes(ctx, group, token_found);
    return CKR_OK;
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
  Group& group = *session->group;
  if (CK_RV rv = ctx.CheckMechanism(*session, mech->type()); rv != CKR_OK) return rv;
  if (CK_RV rv = CheckNewObjectTemplate(ctx, *session, *tmpl, CKO_SECRET_KEY); rv != CKR_OK) {
    return rv;
  }
  ASSIGN_OR_RV(wire::NativeMechanism check_mech, wire::NativeMechanism::Decode(*mech));
  ASSIGN_OR_RV(wire::NativeTemplate check, wire::NativeTemplate::Decode(*tmpl));
  (void)check_mech;
  (void)check;
  auto make = [mech = *mech](size_t, CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE h,
                             const std::vector<v1::AttributeList>& t,
                             std::vector<CK_OBJECT_HANDLE>* made) -> CK_RV {
    auto nm = wire::NativeMechanism::Decode(mech);
    auto native = wire::NativeTemplate::Decode(t[0]);
    if (!nm.ok() || !native.ok()) return CKR_GENERAL_ERROR;
    return fn->C_GenerateKey(h, nm->get(), native->data(), native->size(), &(*made)[0]);
  };
  CK_RV rv;
  if (!WireBool(*tmpl, CKA_TOKEN).value_or(false)) {
    rv = MakeSessionObjects(ctx, *session, ctx.HomeMember(group), 1,
                            [&](Member& m, CK_SESSION_HANDLE h, auto* made) {
                              return make(0, m.fn(), h, {*tmpl}, made);
                            });
  } else {
    rv = WriteTokenObjectsAnywhere(ctx, *session, Writer::How::kKeysByWrap, {*tmpl}, {true}, make,
                                   /*keygen=*/true);
  }
  if (rv == CKR_OK) {
    LogInfo(absl::StrCat("instance ", ctx.instance().id, " (", ctx.instance().identity,
                         "): generated a key with ", wire::MechanismName(mech->type())));
  }
  return rv;
}

CK_RV GenerateKeyPair(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(const v1::Mechanism* mech, ctx.Mechanism(1));
  ASSIGN_OR_RV(const v1::AttributeList* pub_tmpl, ctx.Attributes(2));
  ASSIGN_OR_RV(const v1::AttributeList* priv_tmpl, ctx.Attributes(3));
  Group& group = *session->group;
  if (CK_RV rv = ctx.CheckMechanism(*session, mech->type()); rv != CKR_OK) return rv;
  if (CK_RV rv = CheckNewObjectTemplate(ctx, *session, *pub_tmpl, CKO_PUBLIC_KEY); rv != CKR_OK) {
    return rv;
  }
  if (CK_RV rv = CheckNewObjectTemplate(ctx, *session, *priv_tmpl, CKO_PRIVATE_KEY);
      rv != CKR_OK) {
    return rv;
  }
  ASSIGN_OR_RV(wire::NativeMechanism check_mech, wire::NativeMechanism::Decode(*mech));
  (void)check_mech;
  const bool pub_token = WireBool(*pub_tmpl, CKA_TOKEN).value_or(false);
  const bool priv_token = WireBool(*priv_tmpl, CKA_TOKEN).value_or(false);
  if (pub_token != priv_token) {
    // One half on every member and the other on one: not a pair any more.
    LogWarning("C_GenerateKeyPair with one token and one session half refused");
    return CKR_TEMPLATE_INCONSISTENT;
  }
  auto make = [mech = *mech](size_t, CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE h,
                             const std::vector<v1::AttributeList>& t,
                             std::vector<CK_OBJECT_HANDLE>* made) -> CK_RV {
    auto nm = wire::NativeMechanism::Decode(mech);
    auto pub = wire::NativeTemplate::Decode(t[0]);
    auto priv = wire::NativeTemplate::Decode(t[1]);
    if (!nm.ok() || !pub.ok() || !priv.ok()) return CKR_TEMPLATE_INCONSISTENT;
    return fn->C_GenerateKeyPair(h, nm->get(), pub->data(), pub->size(), priv->data(),
                                 priv->size(), &(*made)[0], &(*made)[1]);
  };
  CK_RV rv;
  if (!pub_token) {
    rv = MakeSessionObjects(ctx, *session, ctx.HomeMember(group), 2,
                            [&](Member& m, CK_SESSION_HANDLE h, auto* made) {
                              return make(0, m.fn(), h, {*pub_tmpl, *priv_tmpl}, made);
                            });
  } else {
    rv = WriteTokenObjectsAnywhere(ctx, *session, Writer::How::kKeysByWrap, {*pub_tmpl, *priv_tmpl},
                                   {false, true}, make,
                                   /*keygen=*/true);
  }
  if (rv == CKR_OK) {
    LogInfo(absl::StrCat("instance ", ctx.instance().id, " (", ctx.instance().identity,
                         "): generated a key pair with ", wire::MechanismName(mech->type())));
  }
  return rv;
}

CK_RV WrapKey(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(const v1::Mechanism* mech, ctx.Mechanism(1));
  ASSIGN_OR_RV(uint64_t wrapping, ctx.Ulong(2));
  ASSIGN_OR_RV(uint64_t key, ctx.Ulong(3));
  ASSIGN_OR_RV(const v1::OutputCapacity* cap, ctx.Capacity(4));
  Group& group = *session->group;
  if (CK_RV rv = ctx.CheckMechanism(*session, mech->type()); rv != CKR_OK) return rv;
  ASSIGN_OR_RV(ObjectRef wref, ctx.Object(*session, wrapping, CKR_WRAPPING_KEY_HANDLE_INVALID));
  ASSIGN_OR_RV(ObjectRef kref, ctx.Object(*session, key, CKR_KEY_HANDLE_INVALID));
  ASSIGN_OR_RV(wire::NativeMechanism nm, wire::NativeMechanism::Decode(*mech));
  // A member holding both keys.
  std::vector<CK_OBJECT_HANDLE> wrapping_on(group.member_count()), key_on(group.member_count());
  for (size_t i = 0; i < wrapping_on.size(); ++i) {
    wrapping_on[i] = ctx.HandleOn(group, wref, i);
    key_on[i] = ctx.HandleOn(group, kref, i);
  }
  auto out = std::make_shared<OutputBuffer>(*cap);
  auto shared_mech = std::make_shared<v1::Mechanism>(*mech);
  CK_RV rv = group.RunOnMember(
      [&](size_t i) { return wrapping_on[i] != CK_INVALID_HANDLE && key_on[i] != CK_INVALID_HANDLE; },
      [out, shared_mech, wrapping_on, key_on](size_t i, CK_FUNCTION_LIST* fn,
                                              CK_SESSION_HANDLE h) {
        auto nm = wire::NativeMechanism::Decode(*shared_mech);
        if (!nm.ok()) return wire::GetCkRv(nm.status());
        return fn->C_WrapKey(h, nm->get(), wrapping_on[i], key_on[i], out->ptr(), out->len());
      },
      "C_WrapKey");
  (void)nm;
  if (rv == CKR_OBJECT_HANDLE_INVALID) rv = CKR_KEY_HANDLE_INVALID;
  if (rv == CKR_OK || rv == CKR_BUFFER_TOO_SMALL) out->Answer(rv, ctx.AddResult());
  return rv;
}

// C_UnwrapKey and C_DeriveKey: a new key from a key the caller names.
using KeyFromKeyCall = std::function<CK_RV(CK_FUNCTION_LIST*, CK_SESSION_HANDLE,
                                           wire::NativeMechanism&, CK_OBJECT_HANDLE base,
                                           wire::NativeTemplate&, CK_OBJECT_HANDLE*)>;

CK_RV NewKeyFromKey(CallContext& ctx, const v1::Mechanism* mech, uint64_t base, CK_RV invalid_rv,
                    const v1::AttributeList* tmpl, KeyFromKeyCall call) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  Group& group = *session->group;
  if (CK_RV rv = ctx.CheckMechanism(*session, mech->type()); rv != CKR_OK) return rv;
  ASSIGN_OR_RV(ObjectRef bref, ctx.Object(*session, base, invalid_rv));
  if (CK_RV rv = CheckNewObjectTemplate(ctx, *session, *tmpl); rv != CKR_OK) return rv;
  ASSIGN_OR_RV(wire::NativeMechanism check_mech, wire::NativeMechanism::Decode(*mech));
  ASSIGN_OR_RV(wire::NativeTemplate check, wire::NativeTemplate::Decode(*tmpl));
  (void)check_mech;
  (void)check;
  ASSIGN_OR_RV(auto place, ctx.Place(group, bref, invalid_rv));
  std::vector<CK_OBJECT_HANDLE> bases(group.member_count());
  for (size_t i = 0; i < bases.size(); ++i) bases[i] = ctx.HandleOn(group, bref, i);
  auto make = [mech = *mech, bases, call, invalid_rv](
                  size_t member, CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE h,
                  const std::vector<v1::AttributeList>& t,
                  std::vector<CK_OBJECT_HANDLE>* made) -> CK_RV {
    auto nm = wire::NativeMechanism::Decode(mech);
    auto native = wire::NativeTemplate::Decode(t[0]);
    if (!nm.ok() || !native.ok()) return CKR_GENERAL_ERROR;
    CK_RV rv = call(fn, h, *nm, bases[member], *native, &(*made)[0]);
    return KeyRv(rv, invalid_rv);
  };
  if (!WireBool(*tmpl, CKA_TOKEN).value_or(false)) {
    return MakeSessionObjects(ctx, *session, place.first, 1,
                              [&](Member& m, CK_SESSION_HANDLE h, auto* made) {
                                return make(place.first, m.fn(), h, {*tmpl}, made);
                              });
  }
  return WriteTokenObjects(ctx, *session, Writer::How::kKeysByWrap, place.first, {*tmpl}, {true},
                           make);
}

CK_RV UnwrapKey(CallContext& ctx) {
  ASSIGN_OR_RV(const v1::Mechanism* mech, ctx.Mechanism(1));
  ASSIGN_OR_RV(uint64_t unwrapping, ctx.Ulong(2));
  ASSIGN_OR_RV(const std::string* wrapped, ctx.Bytes(3));
  ASSIGN_OR_RV(const v1::AttributeList* tmpl, ctx.Attributes(4));
  return NewKeyFromKey(ctx, mech, unwrapping, CKR_UNWRAPPING_KEY_HANDLE_INVALID, tmpl,
                       [blob = *wrapped](CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE h,
                                         wire::NativeMechanism& nm, CK_OBJECT_HANDLE base,
                                         wire::NativeTemplate& t, CK_OBJECT_HANDLE* out) {
                         std::string copy = blob;
                         return fn->C_UnwrapKey(h, nm.get(), base,
                                                reinterpret_cast<CK_BYTE_PTR>(copy.data()),
                                                copy.size(), t.data(), t.size(), out);
                       });
}

CK_RV DeriveKey(CallContext& ctx) {
  ASSIGN_OR_RV(const v1::Mechanism* mech, ctx.Mechanism(1));
  ASSIGN_OR_RV(uint64_t base, ctx.Ulong(2));
  ASSIGN_OR_RV(const v1::AttributeList* tmpl, ctx.Attributes(3));
  return NewKeyFromKey(ctx, mech, base, CKR_KEY_HANDLE_INVALID, tmpl,
                       [](CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE h, wire::NativeMechanism& nm,
                          CK_OBJECT_HANDLE b, wire::NativeTemplate& t, CK_OBJECT_HANDLE* out) {
                         return fn->C_DeriveKey(h, nm.get(), b, t.data(), t.size(), out);
                       });
}

}  // namespace hsmux::agent
