#include "writer.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "audit.h"
#include "group.h"
#include "log.h"
#include "wire/attribute_codec.h"
#include "wire/errors.h"

namespace hsmux::agent {
namespace {

std::string NewPendingLabel() {
  unsigned char r[8];
  RAND_bytes(r, sizeof(r));
  static const char* kDigits = "0123456789abcdef";
  std::string s = kPendingLabelPrefix;
  for (unsigned char c : r) {
    s.push_back(kDigits[c >> 4]);
    s.push_back(kDigits[c & 15]);
  }
  return s;
}

void SetWire(v1::AttributeList& list, CK_ATTRIBUTE_TYPE type, const v1::Attribute& value) {
  for (auto& a : *list.mutable_attributes()) {
    if (a.type() == type) {
      a = value;
      a.set_type(type);
      return;
    }
  }
  v1::Attribute* a = list.add_attributes();
  *a = value;
  a->set_type(type);
}

v1::Attribute BoolAttr(bool v) {
  v1::Attribute a;
  a.set_boolean(v);
  return a;
}

v1::Attribute BytesAttr(const std::string& v) {
  v1::Attribute a;
  a.set_bytes(v);
  return a;
}

// The attributes a replica is made with, taken from the source object.
const std::vector<CK_ATTRIBUTE_TYPE>& ReplicaTypes(CK_OBJECT_CLASS cls) {
  static const auto* secret = new std::vector<CK_ATTRIBUTE_TYPE>{CKA_CLASS,
                                                                 CKA_KEY_TYPE,
                                                                 CKA_TOKEN,
                                                                 CKA_PRIVATE,
                                                                 CKA_ID,
                                                                 CKA_SENSITIVE,
                                                                 CKA_ENCRYPT,
                                                                 CKA_DECRYPT,
                                                                 CKA_SIGN,
                                                                 CKA_VERIFY,
                                                                 CKA_WRAP,
                                                                 CKA_UNWRAP,
                                                                 CKA_DERIVE,
                                                                 CKA_START_DATE,
                                                                 CKA_END_DATE,
                                                                 CKA_COPYABLE,
                                                                 CKA_DESTROYABLE,
                                                                 CKA_WRAP_WITH_TRUSTED,
                                                                 CKA_WRAP_TEMPLATE,
                                                                 CKA_UNWRAP_TEMPLATE,
                                                                 CKA_DERIVE_TEMPLATE,
                                                                 CKA_ALLOWED_MECHANISMS};
  static const auto* priv = new std::vector<CK_ATTRIBUTE_TYPE>{CKA_CLASS,
                                                               CKA_KEY_TYPE,
                                                               CKA_TOKEN,
                                                               CKA_PRIVATE,
                                                               CKA_ID,
                                                               CKA_SENSITIVE,
                                                               CKA_DECRYPT,
                                                               CKA_SIGN,
                                                               CKA_SIGN_RECOVER,
                                                               CKA_UNWRAP,
                                                               CKA_DERIVE,
                                                               CKA_SUBJECT,
                                                               CKA_START_DATE,
                                                               CKA_END_DATE,
                                                               CKA_COPYABLE,
                                                               CKA_DESTROYABLE,
                                                               CKA_WRAP_WITH_TRUSTED,
                                                               CKA_UNWRAP_TEMPLATE,
                                                               CKA_DERIVE_TEMPLATE,
                                                               CKA_ALLOWED_MECHANISMS,
                                                               CKA_ALWAYS_AUTHENTICATE};
  static const auto* pub = new std::vector<CK_ATTRIBUTE_TYPE>{CKA_CLASS,
                                                              CKA_KEY_TYPE,
                                                              CKA_TOKEN,
                                                              CKA_PRIVATE,
                                                              CKA_ID,
                                                              CKA_ENCRYPT,
                                                              CKA_VERIFY,
                                                              CKA_VERIFY_RECOVER,
                                                              CKA_WRAP,
                                                              CKA_DERIVE,
                                                              CKA_SUBJECT,
                                                              CKA_START_DATE,
                                                              CKA_END_DATE,
                                                              CKA_COPYABLE,
                                                              CKA_DESTROYABLE,
                                                              CKA_WRAP_TEMPLATE,
                                                              CKA_ALLOWED_MECHANISMS,
                                                              CKA_MODULUS,
                                                              CKA_PUBLIC_EXPONENT,
                                                              CKA_EC_PARAMS,
                                                              CKA_EC_POINT};
  if (cls == CKO_SECRET_KEY) return *secret;
  if (cls == CKO_PRIVATE_KEY) return *priv;
  return *pub;
}

v1::AttributeList ReplicaTemplate(const ObjectSnapshot& snap, const std::string& pending_label,
                                  bool extractable) {
  v1::AttributeList t;
  for (CK_ATTRIBUTE_TYPE type : ReplicaTypes(snap.object_class)) {
    const v1::Attribute* a = FindAttribute(snap.attributes, type);
    if (a == nullptr) continue;
    // Empty values are the defaults; some tokens refuse them as input
    // (SoftHSM: an empty CKA_START_DATE or attribute array).
    const bool empty =
        (a->value_case() == v1::Attribute::kBytes && a->bytes().empty()) ||
        (a->value_case() == v1::Attribute::kNested && a->nested().attributes_size() == 0) ||
        (a->value_case() == v1::Attribute::kMechanisms && a->mechanisms().values_size() == 0);
    if (!empty) *t.add_attributes() = *a;
  }
  SetWire(t, CKA_LABEL, BytesAttr(pending_label));
  if (snap.object_class != CKO_PUBLIC_KEY) SetWire(t, CKA_EXTRACTABLE, BoolAttr(extractable));
  return t;
}

// Reads the new object's attributes and fingerprint on a member (worker).
struct ReadState {
  CK_SESSION_HANDLE session;
  CK_OBJECT_HANDLE object;
  Member* member;
  ObjectSnapshot snapshot;
  std::string fingerprint;
};

}  // namespace

CK_RV Writer::OnMember(size_t member, bool keygen,
                       std::function<CK_RV(CK_FUNCTION_LIST*, CK_SESSION_HANDLE holder)> call,
                       bool recovering) {
  Member* m = group_.member(member);
  if (!recovering && !m->healthy.load()) return CKR_DEVICE_ERROR;
  const absl::Duration timeout = absl::Milliseconds(keygen ? group_.config().keygen_timeout_ms
                                                           : group_.config().call_timeout_ms);
  InFlight f(m);
  absl::MutexLock lock(&m->holder_mutex());
  const CK_SESSION_HANDLE holder = m->holder();
  auto state = std::make_shared<int>(0);
  CK_RV rv = m->Invoke<int>(
      timeout, state, [call, holder](CK_FUNCTION_LIST* fn, int&) { return call(fn, holder); },
      holder);
  if (IsDeviceFailure(rv) && !recovering) group_.Suspect(member, rv, "write");
  return rv;
}

uint64_t Writer::Journal(const std::string& op, uint64_t logical_id,
                         const v1::JournalPayload& payload, const std::string& state) {
  if (store_ == nullptr) return 0;
  JournalEntry e;
  e.slot_id = group_.config().slot_id;
  e.logical_id = logical_id;
  e.op = op;
  e.payload = payload.SerializeAsString();
  e.state = state;
  e.created_unix_ms = absl::ToUnixMillis(absl::Now());
  auto seq = store_->AppendJournal(e);
  if (!seq.ok()) {
    LogError(absl::StrCat("journal append failed: ", seq.status().message()));
    return 0;
  }
  return *seq;
}

void Writer::JournalState(uint64_t seq, const std::string& state) {
  if (store_ == nullptr || seq == 0) return;
  if (auto s = store_->SetJournalState(seq, state); !s.ok()) {
    LogError(absl::StrCat("journal update failed: ", s.message()));
  }
}

std::vector<std::pair<size_t, size_t>> Writer::Undo(
    const std::vector<std::vector<CK_OBJECT_HANDLE>>& made) {
  std::vector<std::pair<size_t, size_t>> left;
  for (size_t i = 0; i < made.size(); ++i) {
    for (size_t k = 0; k < made[i].size(); ++k) {
      const CK_OBJECT_HANDLE h = made[i][k];
      if (h == CK_INVALID_HANDLE) continue;
      CK_RV rv = OnMember(i, false, [h](CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE holder) {
        return fn->C_DestroyObject(holder, h);
      });
      if (rv != CKR_OK && rv != CKR_OBJECT_HANDLE_INVALID) left.emplace_back(i, k);
    }
  }
  return left;
}

absl::StatusOr<std::vector<uint64_t>> Writer::Create(How how, size_t source,
                                                     std::vector<v1::AttributeList> templates,
                                                     const std::vector<bool>& is_key, MakeFn make,
                                                     bool keygen) {
  absl::ReaderMutexLock no_catchup(&catchup_mu_);
  const size_t n_members = group_.member_count();
  const std::string& policy = group_.config().replication;
  // `wrap` replicates (and journals, for members that are down); `external`
  // and `none` make the object on the source only.
  const bool replicate = n_members > 1 && policy == "wrap";
  std::vector<size_t> targets;  // healthy members other than the source
  for (size_t i = 0; i < n_members; ++i) {
    if (i != source && group_.member(i)->healthy.load()) targets.push_back(i);
  }
  // What the caller asked for, restored once the write is complete.
  std::vector<std::string> final_labels(templates.size());
  std::vector<bool> seal(templates.size(), false);
  const std::string pending = NewPendingLabel();
  for (size_t i = 0; i < templates.size(); ++i) {
    if (const v1::Attribute* l = FindAttribute(templates[i], CKA_LABEL)) {
      final_labels[i] = l->bytes();
    }
    if (const v1::Attribute* m = FindAttribute(templates[i], CKA_MODIFIABLE)) {
      if (replicate && m->value_case() == v1::Attribute::kBoolean && !m->boolean()) {
        // The write ends by relabelling (and sealing) every replica.
        LogWarning("CKA_MODIFIABLE=FALSE token objects cannot be replicated");
        return wire::CkError(CKR_TEMPLATE_INCONSISTENT, "CKA_MODIFIABLE=FALSE");
      }
    }
    if (replicate) SetWire(templates[i], CKA_LABEL, BytesAttr(pending));
    if (replicate && how == How::kKeysByWrap && is_key[i]) {
      const v1::Attribute* x = FindAttribute(templates[i], CKA_EXTRACTABLE);
      // Keys made through hsmux are sealed unless the caller asked otherwise.
      seal[i] = x == nullptr || (x->value_case() == v1::Attribute::kBoolean && !x->boolean());
      SetWire(templates[i], CKA_EXTRACTABLE, BoolAttr(true));
    }
  }
  v1::JournalPayload payload;
  for (size_t i = 0; i < templates.size(); ++i) {
    v1::JournalObject* o = payload.add_objects();
    o->set_pending_label(pending);
    o->set_final_label(final_labels[i]);
    o->set_seal(seal[i]);
  }
  const size_t count = templates.size();
  std::vector<std::vector<CK_OBJECT_HANDLE>> made(
      n_members, std::vector<CK_OBJECT_HANDLE>(count, CK_INVALID_HANDLE));
  std::vector<ObjectSnapshot> snaps(count);
  std::vector<std::string> fps(count);
  auto fail = [&](CK_RV rv, const std::string& why) -> absl::Status {
    // A member that did not answer may still finish what it was asked
    // (even relabelling the object to its final label) once it answers
    // again: remember what to look for when it is caught up.
    for (auto [i, k] : Undo(made)) {
      if (fps[k].empty()) continue;  // still pending-labelled: dropped anyway
      absl::MutexLock lock(&orphans_mu_);
      orphans_.push_back(Orphan{i, snaps[k].object_class, fps[k]});
    }
    if (rv == CKR_DEVICE_ERROR) LogError(absl::StrCat("replicated write failed: ", why));
    return wire::CkError(rv, why);
  };
  auto shared_templates = std::make_shared<const std::vector<v1::AttributeList>>(templates);
  auto run_make = [&](size_t i) -> CK_RV {
    auto out = std::make_shared<std::vector<CK_OBJECT_HANDLE>>(count, CK_INVALID_HANDLE);
    CK_RV rv =
        OnMember(i, keygen,
                 [make, i, shared_templates, out](CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE holder) {
                   return make(i, fn, holder, *shared_templates, out.get());
                 });
    if (rv == CKR_OK) made[i] = *out;
    return rv;
  };
  // A member that fails after the source answered is left to catch-up.
  auto drop_target = [&](size_t i, const std::string& what, CK_RV rv) {
    LogWarning(absl::StrCat("member ", group_.member(i)->name(), ": ", what, " failed (",
                            wire::CkRvName(rv), "); left to catch-up"));
    if (IsDeviceFailure(rv)) group_.MissedWrite(i, "a new object");
    for (CK_OBJECT_HANDLE& h : made[i]) {
      if (h == CK_INVALID_HANDLE) continue;
      const CK_OBJECT_HANDLE doomed = h;
      OnMember(i, false, [doomed](CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE holder) {
        return fn->C_DestroyObject(holder, doomed);
      });
      h = CK_INVALID_HANDLE;
    }
    targets.erase(std::remove(targets.begin(), targets.end(), i), targets.end());
  };

  // 1. The creating call on the source; replays on every healthy member.
  if (CK_RV rv = run_make(source); rv != CKR_OK) {
    return fail(rv == kMemberTimedOut ? CKR_DEVICE_ERROR : rv, "refused by the member");
  }
  if (how == How::kReplay && replicate) {
    for (size_t i : std::vector<size_t>(targets)) {
      if (CK_RV rv = run_make(i); rv != CKR_OK) drop_target(i, "replay", rv);
    }
  }

  // 2. Read what was made on the source: attributes, fingerprint.
  Member* src = group_.member(source);
  for (size_t k = 0; k < count; ++k) {
    auto session = src->Acquire();
    if (!session.ok()) return fail(CKR_DEVICE_ERROR, "no session on the source member");
    auto st = std::make_shared<ReadState>();
    st->session = *session;
    st->object = made[source][k];
    st->member = src;
    CK_RV rv = src->Invoke<ReadState>(
        absl::Milliseconds(group_.config().call_timeout_ms), st,
        [](CK_FUNCTION_LIST*, ReadState& r) {
          auto snap = ReadObject(*r.member, r.session, r.object);
          if (!snap.ok()) return wire::GetCkRv(snap.status());
          r.snapshot = std::move(*snap);
          r.fingerprint = Fingerprint(*r.member, r.session, r.object, r.snapshot);
          return CKR_OK;
        },
        *session);
    src->Release(*session, rv != CKR_OK);
    if (rv != CKR_OK) return fail(CKR_DEVICE_ERROR, "cannot read the new object");
    snaps[k] = std::move(st->snapshot);
    fps[k] = std::move(st->fingerprint);
    payload.mutable_objects(static_cast<int>(k))->set_fingerprint(fps[k]);
    payload.mutable_objects(static_cast<int>(k))->set_object_class(snaps[k].object_class);
  }

  // 3. Keys: wrap on the source, unwrap on the other healthy members; public
  //    halves of generated pairs are copied by attributes.
  if (how == How::kKeysByWrap && replicate) {
    const std::vector<CK_OBJECT_HANDLE> rk = registry_.replication_keys();
    auto rk_on = [&](size_t i) { return i < rk.size() ? rk[i] : CK_INVALID_HANDLE; };
    if (rk_on(source) == CK_INVALID_HANDLE) {
      return fail(CKR_DEVICE_ERROR,
                  absl::StrCat("group ", group_.config().label, " has no replication key on ",
                               src->name(), ": run hsmuxctl create-replication-key"));
    }
    for (size_t k = 0; k < count; ++k) {
      const bool key =
          snaps[k].object_class == CKO_SECRET_KEY || snaps[k].object_class == CKO_PRIVATE_KEY;
      auto blob = std::make_shared<std::string>();
      if (key) {
        const CK_OBJECT_HANDLE wrapping = rk_on(source), target = made[source][k];
        CK_RV rv =
            OnMember(source, false,
                     [blob, wrapping, target](CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE holder) {
                       CK_MECHANISM wrap = {CKM_AES_KEY_WRAP_PAD, nullptr, 0};
                       CK_ULONG len = 0;
                       CK_RV r = fn->C_WrapKey(holder, &wrap, wrapping, target, nullptr, &len);
                       if (r != CKR_OK) return r;
                       blob->resize(len);
                       r = fn->C_WrapKey(holder, &wrap, wrapping, target,
                                         reinterpret_cast<CK_BYTE_PTR>(blob->data()), &len);
                       blob->resize(len);
                       return r;
                     });
        if (rv != CKR_OK) {
          return fail(CKR_DEVICE_ERROR,
                      absl::StrCat("wrap on ", src->name(), ": ", wire::CkRvName(rv)));
        }
        payload.mutable_objects(static_cast<int>(k))->set_wrapped_key(*blob);
      }
      const v1::AttributeList tmpl = ReplicaTemplate(snaps[k], pending, true);
      *payload.mutable_objects(static_cast<int>(k))->mutable_template_() = tmpl;
      for (size_t i : std::vector<size_t>(targets)) {
        if (key && rk_on(i) == CK_INVALID_HANDLE) {
          drop_target(i, "unwrap (no replication key)", CKR_KEY_HANDLE_INVALID);
          continue;
        }
        auto out = std::make_shared<CK_OBJECT_HANDLE>(CK_INVALID_HANDLE);
        const CK_OBJECT_HANDLE unwrapping = rk_on(i);
        CK_RV rv = OnMember(
            i, false,
            [key, blob, tmpl, unwrapping, out](CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE holder) {
              auto native = wire::NativeTemplate::Decode(tmpl);
              if (!native.ok()) return wire::GetCkRv(native.status());
              if (!key)
                return fn->C_CreateObject(holder, native->data(), native->size(), out.get());
              CK_MECHANISM unwrap = {CKM_AES_KEY_WRAP_PAD, nullptr, 0};
              return fn->C_UnwrapKey(holder, &unwrap, unwrapping,
                                     reinterpret_cast<CK_BYTE_PTR>(blob->data()), blob->size(),
                                     native->data(), native->size(), out.get());
            });
        if (rv != CKR_OK) {
          drop_target(i, key ? "unwrap" : "copy", rv);
          continue;
        }
        made[i][k] = *out;
      }
    }
  } else if (policy == "external" && n_members > 1) {
    // The vendor's tooling copies new objects: wait (bounded) for them.
    WaitForExternalCopies(source, count, &made);
  }

  // 4. Complete: the caller's labels, then seal, on every replica.
  if (replicate) {
    for (size_t i = 0; i < n_members; ++i) {
      bool ok = true;
      for (size_t k = 0; k < count && ok; ++k) {
        if (made[i][k] == CK_INVALID_HANDLE) continue;
        v1::AttributeList finish;
        SetWire(finish, CKA_LABEL, BytesAttr(final_labels[k]));
        if (seal[k]) SetWire(finish, CKA_EXTRACTABLE, BoolAttr(false));
        const CK_OBJECT_HANDLE h = made[i][k];
        CK_RV rv = OnMember(i, false, [finish, h](CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE holder) {
          auto native = wire::NativeTemplate::Decode(finish);
          if (!native.ok()) return wire::GetCkRv(native.status());
          return fn->C_SetAttributeValue(holder, h, native->data(), native->size());
        });
        if (rv != CKR_OK) {
          if (i == source) {
            return fail(CKR_DEVICE_ERROR,
                        absl::StrCat("completing on ", src->name(), ": ", wire::CkRvName(rv)));
          }
          drop_target(i, "completing", rv);
          ok = false;
        }
      }
    }
  }

  // 5. Journal (before the caller hears of it: the wrapped blobs, never a
  //    clear value, let members that missed the write catch up), register
  //    (visible from now on), answer.
  if (replicate) Journal("create", 0, payload, "acked");
  std::vector<uint64_t> ids;
  for (size_t k = 0; k < count; ++k) {
    LogicalObject obj;
    obj.handles.assign(n_members, CK_INVALID_HANDLE);
    for (size_t i = 0; i < n_members; ++i) obj.handles[i] = made[i][k];
    obj.snapshot = snaps[k];
    obj.fingerprint = fps[k];
    // Replicas made by unwrapping read CKA_LOCAL/NEVER_EXTRACTABLE false: the
    // weakest value is what clients see; the caller's label; the seal.
    for (auto& a : *obj.snapshot.attributes.mutable_attributes()) {
      const bool copied = replicate && how == How::kKeysByWrap;
      if (copied && (a.type() == CKA_LOCAL || a.type() == CKA_NEVER_EXTRACTABLE)) {
        a.set_boolean(false);
      }
      if (copied && a.type() == CKA_ALWAYS_SENSITIVE) a.set_boolean(false);
      if (a.type() == CKA_LABEL) a.set_bytes(final_labels[k]);
      if (seal[k] && a.type() == CKA_EXTRACTABLE) a.set_boolean(false);
    }
    obj.snapshot.label = final_labels[k];
    obj.proof = replicate ? "created" : (policy == "external" ? "attributes" : "unproven");
    ids.push_back(registry_.Add(std::move(obj)));
  }
  return ids;
}

void Writer::WaitForExternalCopies(size_t source, size_t count,
                                   std::vector<std::vector<CK_OBJECT_HANDLE>>* made) {
  Member* src = group_.member(source);
  std::vector<ObjectSnapshot> snaps(count);
  std::vector<std::string> fps(count);
  {
    auto s = src->Acquire();
    if (!s.ok()) return;
    PooledSession ps(src, *s);
    for (size_t k = 0; k < count; ++k) {
      auto snap = ReadObject(*src, *s, (*made)[source][k]);
      if (!snap.ok()) return;
      snaps[k] = std::move(*snap);
      fps[k] = Fingerprint(*src, *s, (*made)[source][k], snaps[k]);
    }
  }
  const auto deadline = absl::Now() + absl::Milliseconds(group_.config().external_wait_ms);
  while (true) {
    bool missing = false;
    for (size_t i = 0; i < group_.member_count(); ++i) {
      if (i == source || !group_.member(i)->healthy.load()) continue;
      Member* m = group_.member(i);
      auto s = m->Acquire();
      if (!s.ok()) continue;
      PooledSession ps(m, *s);
      for (size_t k = 0; k < count; ++k) {
        if ((*made)[i][k] != CK_INVALID_HANDLE) continue;
        CK_OBJECT_CLASS cls = snaps[k].object_class;
        CK_BBOOL yes = CK_TRUE;
        std::string id = snaps[k].cka_id, label = snaps[k].label;
        CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)},
                               {CKA_TOKEN, &yes, sizeof(yes)},
                               {CKA_ID, id.data(), id.size()},
                               {CKA_LABEL, label.data(), label.size()}};
        CK_OBJECT_HANDLE found[4];
        CK_ULONG n = 0;
        if (m->fn()->C_FindObjectsInit(*s, tmpl, 4) != CKR_OK) continue;
        m->fn()->C_FindObjects(*s, found, 4, &n);
        m->fn()->C_FindObjectsFinal(*s);
        for (CK_ULONG j = 0; j < n; ++j) {
          auto snap = ReadObject(*m, *s, found[j]);
          if (snap.ok() && Fingerprint(*m, *s, found[j], *snap) == fps[k]) {
            (*made)[i][k] = found[j];
            break;
          }
        }
        if ((*made)[i][k] == CK_INVALID_HANDLE) missing = true;
      }
    }
    if (!missing) return;
    if (absl::Now() >= deadline) {
      LogWarning(absl::StrCat("group ", group_.config().label,
                              ": external replication did not copy a new object to every member "
                              "within ",
                              group_.config().external_wait_ms, " ms; served from where it is"));
      return;
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
}

CK_RV Writer::Destroy(uint64_t logical_id) {
  absl::ReaderMutexLock no_catchup(&catchup_mu_);
  auto obj = registry_.Get(logical_id);
  if (obj == nullptr) return CKR_OBJECT_HANDLE_INVALID;
  v1::JournalPayload payload;
  payload.set_fingerprint(obj->fingerprint);
  // The first healthy replica answers for the caller (CKA_DESTROYABLE=FALSE).
  size_t first = obj->handles.size();
  for (size_t i = 0; i < obj->handles.size(); ++i) {
    if (obj->OnMember(i) && group_.member(i)->healthy.load()) {
      first = i;
      break;
    }
  }
  if (first == obj->handles.size()) return CKR_DEVICE_ERROR;
  const uint64_t seq = Journal("destroy", logical_id, payload, "pending");
  // The first replica that answers decides for the caller; a member in
  // trouble is skipped (reported, and left to catch-up via the tombstone).
  CK_RV rv = CKR_DEVICE_ERROR;
  for (; first < obj->handles.size(); ++first) {
    if (!obj->OnMember(first) || !group_.member(first)->healthy.load()) continue;
    const CK_OBJECT_HANDLE h0 = obj->handles[first];
    rv = OnMember(first, false, [h0](CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE holder) {
      return fn->C_DestroyObject(holder, h0);
    });
    if (!IsDeviceFailure(rv)) break;
    group_.member(first)->failovers.fetch_add(1);
    LogWarning(absl::StrCat("C_DestroyObject moves off member ", group_.member(first)->name()));
  }
  if (rv != CKR_OK) {
    JournalState(seq, "rolled_back");
    return IsDeviceFailure(rv) ? CKR_DEVICE_ERROR : rv;
  }
  for (size_t i = first + 1; i < obj->handles.size(); ++i) {
    if (!obj->OnMember(i)) continue;
    const CK_OBJECT_HANDLE h = obj->handles[i];
    CK_RV r = OnMember(i, false, [h](CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE holder) {
      return fn->C_DestroyObject(holder, h);
    });
    if (r != CKR_OK) {
      // The tombstone makes the member drop it when it is next caught up.
      LogWarning(absl::StrCat("member ", group_.member(i)->name(),
                              ": destroy failed, left to catch-up: ", wire::CkRvName(r)));
      if (IsDeviceFailure(r)) group_.MissedWrite(i, "a destroy");
    }
  }
  if (store_ != nullptr) {
    StoredObject tomb;
    tomb.logical_id = obj->store_id;  // the object's row becomes its tombstone
    tomb.slot_id = group_.config().slot_id;
    tomb.object_class = obj->snapshot.object_class;
    tomb.key_type = obj->snapshot.key_type;
    tomb.cka_id = obj->snapshot.cka_id;
    tomb.label = obj->snapshot.label;
    tomb.fingerprint = obj->fingerprint;
    tomb.state = "tombstone";
    if (auto s = store_->PutObject(tomb); !s.ok()) {
      LogError(absl::StrCat("tombstone not stored: ", s.status().message()));
    }
  }
  registry_.Remove(logical_id);
  JournalState(seq, "acked");
  return CKR_OK;
}

CK_RV Writer::SetAttributes(uint64_t logical_id, const v1::AttributeList& changes) {
  absl::ReaderMutexLock no_catchup(&catchup_mu_);
  auto obj = registry_.Get(logical_id);
  if (obj == nullptr) return CKR_OBJECT_HANDLE_INVALID;
  // The old values, to put back if a later member refuses.
  v1::AttributeList old;
  for (const auto& c : changes.attributes()) {
    if (const v1::Attribute* a = FindAttribute(obj->snapshot.attributes, c.type())) {
      *old.add_attributes() = *a;
    }
  }
  v1::JournalPayload payload;
  payload.set_fingerprint(obj->fingerprint);
  *payload.mutable_attributes() = changes;
  const uint64_t seq = Journal("set_attributes", logical_id, payload, "pending");
  auto apply = [this](size_t i, CK_OBJECT_HANDLE h, const v1::AttributeList& list) {
    return OnMember(i, false, [h, list](CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE holder) {
      auto native = wire::NativeTemplate::Decode(list);
      if (!native.ok()) return wire::GetCkRv(native.status());
      return fn->C_SetAttributeValue(holder, h, native->data(), native->size());
    });
  };
  std::vector<size_t> done;
  for (size_t i = 0; i < obj->handles.size(); ++i) {
    if (!obj->OnMember(i) || !group_.member(i)->healthy.load()) continue;
    CK_RV rv = apply(i, obj->handles[i], changes);
    if (rv == CKR_OK) {
      done.push_back(i);
      continue;
    }
    if (IsDeviceFailure(rv) && !done.empty()) {
      // The member is in trouble, not the request: catch-up aligns it.
      LogWarning(absl::StrCat("member ", group_.member(i)->name(),
                              ": attribute change left to catch-up (", wire::CkRvName(rv), ")"));
      group_.MissedWrite(i, "an attribute change");
      continue;
    }
    for (size_t j : done) apply(j, obj->handles[j], old);
    JournalState(seq, "rolled_back");
    if (done.empty()) return rv == kMemberTimedOut ? CKR_DEVICE_ERROR : rv;
    LogError(absl::StrCat("member ", group_.member(i)->name(),
                          ": attribute change refused after others took it: ", wire::CkRvName(rv)));
    return CKR_DEVICE_ERROR;
  }
  if (done.empty()) {
    JournalState(seq, "rolled_back");
    return CKR_DEVICE_ERROR;
  }
  auto updated = std::make_shared<LogicalObject>(*obj);
  for (const auto& c : changes.attributes()) SetWire(updated->snapshot.attributes, c.type(), c);
  for (const auto& c : changes.attributes()) {
    if (c.type() == CKA_LABEL) updated->snapshot.label = c.bytes();
    if (c.type() == CKA_ID) updated->snapshot.cka_id = c.bytes();
  }
  registry_.Replace(updated);
  JournalState(seq, "acked");
  return CKR_OK;
}

absl::Status Writer::CreateReplicationKey() {
  const std::vector<CK_OBJECT_HANDLE> rk = registry_.replication_keys();
  for (size_t i = 0; i < rk.size(); ++i) {
    if (rk[i] != CK_INVALID_HANDLE) {
      return absl::AlreadyExistsError(
          absl::StrCat("member ", group_.member(i)->name(), " already has a replication key"));
    }
  }
  for (size_t i = 0; i < group_.member_count(); ++i) {
    if (!group_.member(i)->healthy.load()) {
      return absl::UnavailableError(absl::StrCat("member ", group_.member(i)->name(),
                                                 " is down: the key must be made on every member"));
    }
  }
  // The value lives in a buffer the workers share until every member has it.
  auto value = std::shared_ptr<std::array<unsigned char, 32>>(
      new std::array<unsigned char, 32>(), [](std::array<unsigned char, 32>* v) {
        OPENSSL_cleanse(v->data(), v->size());
        delete v;
      });
  if (RAND_bytes(value->data(), static_cast<int>(value->size())) != 1) {
    return absl::InternalError("no randomness");
  }
  std::vector<std::pair<size_t, CK_OBJECT_HANDLE>> made;
  for (size_t i = 0; i < group_.member_count(); ++i) {
    auto out = std::make_shared<CK_OBJECT_HANDLE>(CK_INVALID_HANDLE);
    CK_RV rv = OnMember(i, false, [value, out](CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE holder) {
      CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
      CK_KEY_TYPE kt = CKK_AES;
      CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
      std::string label = kReplicationKeyLabel;
      CK_ATTRIBUTE tmpl[] = {
          {CKA_CLASS, &cls, sizeof(cls)},          {CKA_KEY_TYPE, &kt, sizeof(kt)},
          {CKA_TOKEN, &yes, sizeof(yes)},          {CKA_PRIVATE, &yes, sizeof(yes)},
          {CKA_SENSITIVE, &yes, sizeof(yes)},      {CKA_EXTRACTABLE, &no, sizeof(no)},
          {CKA_WRAP, &yes, sizeof(yes)},           {CKA_UNWRAP, &yes, sizeof(yes)},
          {CKA_ENCRYPT, &no, sizeof(no)},          {CKA_DECRYPT, &no, sizeof(no)},
          {CKA_LABEL, label.data(), label.size()}, {CKA_VALUE, value->data(), value->size()}};
      return fn->C_CreateObject(holder, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), out.get());
    });
    if (rv != CKR_OK) {
      for (auto& [j, hj] : made) {
        const CK_OBJECT_HANDLE doomed = hj;
        OnMember(j, false, [doomed](CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE holder) {
          return fn->C_DestroyObject(holder, doomed);
        });
      }
      return wire::CkError(rv,
                           absl::StrCat("member ", group_.member(i)->name(),
                                        ": creating the replication key: ", wire::CkRvName(rv)));
    }
    made.emplace_back(i, *out);
  }
  for (auto& [i, h] : made) registry_.SetReplicationKey(i, h);
  Audit("replication_key_created", "admin", {{"group", group_.config().label}});
  LogInfo(absl::StrCat("audit: group ", group_.config().label, ": replication key created on ",
                       made.size(), " members"));
  return absl::OkStatus();
}

namespace {

struct FoundOnMember {
  CK_OBJECT_HANDLE handle;
  ObjectSnapshot snapshot;
  std::string fingerprint;
};

struct MemberScan {
  Member* member;
  CK_SESSION_HANDLE session;
  std::vector<FoundOnMember> found;
};

CK_RV ScanMember(MemberScan& scan) {
  Member& m = *scan.member;
  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE tmpl = {CKA_TOKEN, &yes, sizeof(yes)};
  CK_RV rv = m.fn()->C_FindObjectsInit(scan.session, &tmpl, 1);
  if (rv != CKR_OK) return rv;
  std::vector<CK_OBJECT_HANDLE> handles;
  CK_OBJECT_HANDLE batch[256];
  CK_ULONG got = 0;
  do {
    rv = m.fn()->C_FindObjects(scan.session, batch, 256, &got);
    if (rv != CKR_OK) break;
    handles.insert(handles.end(), batch, batch + got);
  } while (got == 256);
  m.fn()->C_FindObjectsFinal(scan.session);
  if (rv != CKR_OK) return rv;
  for (CK_OBJECT_HANDLE h : handles) {
    auto snap = ReadObject(m, scan.session, h);
    if (!snap.ok()) continue;
    FoundOnMember f{h, std::move(*snap), ""};
    if (f.snapshot.label != kReplicationKeyLabel &&
        f.snapshot.label.rfind(kPendingLabelPrefix, 0) != 0) {
      f.fingerprint = Fingerprint(m, scan.session, h, f.snapshot);
    }
    scan.found.push_back(std::move(f));
  }
  return CKR_OK;
}

}  // namespace

absl::Status Writer::CatchUp(size_t i) {
  absl::MutexLock alone(&catchup_mu_);
  Member* m = group_.member(i);
  HSMUX_ASSIGN_OR_RETURN(CK_SESSION_HANDLE session, m->Acquire());
  auto scan = std::make_shared<MemberScan>();
  scan->member = m;
  scan->session = session;
  CK_RV rv = m->Invoke<MemberScan>(
      absl::Milliseconds(group_.config().keygen_timeout_ms), scan,
      [](CK_FUNCTION_LIST*, MemberScan& s) { return ScanMember(s); }, session);
  m->Release(session, rv != CKR_OK);
  if (rv != CKR_OK) return wire::CkError(CKR_DEVICE_ERROR, "scan: " + wire::CkRvName(rv));

  std::vector<StoredObject> tombstones;
  // (fingerprint, class) -> latest create. The class is part of the key: the
  // two halves of a key pair share a fingerprint.
  std::map<std::pair<std::string, uint64_t>, v1::JournalObject> journalled;
  // Fingerprint -> the attributes acknowledged C_SetAttributeValue calls
  // changed: the member gets the registry's value of each it lacks.
  std::map<std::string, std::set<CK_ATTRIBUTE_TYPE>> changed;
  if (store_ != nullptr) {
    auto stored = store_->ListObjects(group_.config().slot_id);
    if (stored.ok()) {
      for (auto& o : *stored) {
        if (o.state == "tombstone") tombstones.push_back(o);
      }
    }
    auto entries = store_->ListJournal(group_.config().slot_id, "acked");
    if (entries.ok()) {
      for (const JournalEntry& e : *entries) {
        if (e.op != "create" && e.op != "set_attributes") continue;
        v1::JournalPayload p;
        if (!p.ParseFromString(e.payload)) continue;
        if (e.op == "set_attributes") {
          for (const auto& a : p.attributes().attributes()) {
            changed[p.fingerprint()].insert(a.type());
          }
          continue;
        }
        for (const auto& o : p.objects()) {
          if (!o.fingerprint().empty()) journalled[{o.fingerprint(), o.object_class()}] = o;
        }
      }
    }
  }
  auto destroy = [&](CK_OBJECT_HANDLE h) {
    return OnMember(
        i, false,
        [h](CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE holder) {
          return fn->C_DestroyObject(holder, h);
        },
        /*recovering=*/true);
  };
  size_t matched = 0, dropped = 0, made = 0;
  std::set<uint64_t> present;
  for (const FoundOnMember& f : scan->found) {
    const ObjectSnapshot& snap = f.snapshot;
    if (snap.object_class == CKO_SECRET_KEY && snap.label == kReplicationKeyLabel) {
      registry_.SetReplicationKey(i, f.handle);
      continue;
    }
    if (snap.label.rfind(kPendingLabelPrefix, 0) == 0) {
      destroy(f.handle);  // left by a write that did not finish here
      ++dropped;
      continue;
    }
    bool known = false;
    for (const auto& obj : registry_.All()) {
      if (f.fingerprint.empty() || obj->fingerprint != f.fingerprint ||
          obj->snapshot.object_class != snap.object_class || present.count(obj->id)) {
        continue;
      }
      auto updated = std::make_shared<LogicalObject>(*obj);
      updated->handles[i] = f.handle;
      registry_.Replace(updated);
      present.insert(obj->id);
      known = true;
      ++matched;
      // Labels and IDs changed while the member was out, and any other
      // attribute a C_SetAttributeValue it missed changed.
      v1::AttributeList fix;
      if (snap.label != obj->snapshot.label || snap.cka_id != obj->snapshot.cka_id) {
        SetWire(fix, CKA_LABEL, BytesAttr(obj->snapshot.label));
        SetWire(fix, CKA_ID, BytesAttr(obj->snapshot.cka_id));
      }
      if (auto c = changed.find(obj->fingerprint); c != changed.end()) {
        for (CK_ATTRIBUTE_TYPE type : c->second) {
          if (type == CKA_LABEL || type == CKA_ID) continue;
          const v1::Attribute* want = FindAttribute(obj->snapshot.attributes, type);
          if (want == nullptr) continue;  // not kept: nothing to compare with
          const v1::Attribute* have = FindAttribute(snap.attributes, type);
          if (have == nullptr || !SameValue(*have, *want)) SetWire(fix, type, *want);
        }
      }
      if (fix.attributes_size() > 0) {
        const CK_OBJECT_HANDLE h = f.handle;
        CK_RV r = OnMember(
            i, false,
            [fix, h](CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE holder) {
              auto native = wire::NativeTemplate::Decode(fix);
              if (!native.ok()) return wire::GetCkRv(native.status());
              return fn->C_SetAttributeValue(holder, h, native->data(), native->size());
            },
            /*recovering=*/true);
        if (r != CKR_OK) {
          LogWarning(absl::StrCat("member ", m->name(), ": '", obj->snapshot.label,
                                  "': changed attributes not aligned: ", wire::CkRvName(r)));
        }
      }
      break;
    }
    if (known) continue;
    bool dead = false;
    for (const StoredObject& t : tombstones) {
      dead |= !f.fingerprint.empty() && t.fingerprint == f.fingerprint &&
              t.object_class == snap.object_class;
    }
    {
      // Made by a write that failed while this member did not answer.
      absl::MutexLock lock(&orphans_mu_);
      for (auto it = orphans_.begin(); it != orphans_.end(); ++it) {
        if (it->member == i && !f.fingerprint.empty() && it->fingerprint == f.fingerprint &&
            it->object_class == snap.object_class) {
          dead = true;
          orphans_.erase(it);
          break;
        }
      }
    }
    if (dead) {
      // Destroyed while the member was out, or left by a failed write:
      // never resurrected.
      destroy(f.handle);
      ++dropped;
    }
  }
  // Objects the member missed: made from the journal (keys from their
  // wrapped blob, public objects from their template).
  const std::vector<CK_OBJECT_HANDLE> rk = registry_.replication_keys();
  for (const auto& obj : registry_.All()) {
    if (obj->OnMember(i)) continue;
    auto j = journalled.find({obj->fingerprint, obj->snapshot.object_class});
    if (j == journalled.end()) {
      LogWarning(absl::StrCat("member ", m->name(), ": '", obj->snapshot.label,
                              "' missing and not in the journal; served from other members"));
      continue;
    }
    const v1::JournalObject jo = j->second;
    const bool key = !jo.wrapped_key().empty();
    if (key && (i >= rk.size() || rk[i] == CK_INVALID_HANDLE)) {
      return absl::FailedPreconditionError("the member has no replication key");
    }
    auto out = std::make_shared<CK_OBJECT_HANDLE>(CK_INVALID_HANDLE);
    const CK_OBJECT_HANDLE unwrapping = key ? rk[i] : CK_INVALID_HANDLE;
    CK_RV r = OnMember(
        i, false,
        [jo, key, unwrapping, out](CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE holder) {
          auto native = wire::NativeTemplate::Decode(jo.template_());
          if (!native.ok()) return wire::GetCkRv(native.status());
          if (!key) return fn->C_CreateObject(holder, native->data(), native->size(), out.get());
          std::string blob = jo.wrapped_key();
          CK_MECHANISM unwrap = {CKM_AES_KEY_WRAP_PAD, nullptr, 0};
          return fn->C_UnwrapKey(holder, &unwrap, unwrapping,
                                 reinterpret_cast<CK_BYTE_PTR>(blob.data()), blob.size(),
                                 native->data(), native->size(), out.get());
        },
        /*recovering=*/true);
    if (r != CKR_OK) {
      return wire::CkError(CKR_DEVICE_ERROR, absl::StrCat("catching up '", obj->snapshot.label,
                                                          "': ", wire::CkRvName(r)));
    }
    v1::AttributeList finish;
    SetWire(finish, CKA_LABEL, BytesAttr(obj->snapshot.label));
    SetWire(finish, CKA_ID, BytesAttr(obj->snapshot.cka_id));
    if (jo.seal()) SetWire(finish, CKA_EXTRACTABLE, BoolAttr(false));
    const CK_OBJECT_HANDLE h = *out;
    r = OnMember(
        i, false,
        [finish, h](CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE holder) {
          auto native = wire::NativeTemplate::Decode(finish);
          if (!native.ok()) return wire::GetCkRv(native.status());
          return fn->C_SetAttributeValue(holder, h, native->data(), native->size());
        },
        /*recovering=*/true);
    if (r != CKR_OK) return wire::CkError(CKR_DEVICE_ERROR, "completing a caught-up object");
    auto updated = std::make_shared<LogicalObject>(*obj);
    updated->handles[i] = h;
    registry_.Replace(updated);
    ++made;
  }
  LogInfo(absl::StrCat("member ", m->name(), ": caught up: ", matched, " objects in place, ", made,
                       " made from the journal, ", dropped, " dropped"));
  m->healthy.store(true);
  return absl::OkStatus();
}

void Writer::RollBackPending() {
  for (auto& [i, h] : registry_.pending_found()) {
    const CK_OBJECT_HANDLE doomed = h;
    CK_RV rv = OnMember(i, false, [doomed](CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE holder) {
      return fn->C_DestroyObject(holder, doomed);
    });
    LogWarning(absl::StrCat("member ", group_.member(i)->name(),
                            ": rolled back an unacknowledged write (", wire::CkRvName(rv), ")"));
  }
  if (store_ != nullptr) {
    auto pending = store_->ListJournal(group_.config().slot_id, "pending");
    if (pending.ok()) {
      for (const JournalEntry& e : *pending) {
        // Destroys and attribute changes were applied member by member and
        // are completed by catch-up; the entry is closed.
        JournalState(e.seq, "acked");
      }
    }
  }
}

}  // namespace hsmux::agent
