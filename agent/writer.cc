#include "writer.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <chrono>

#include "absl/time/clock.h"
#include <cstring>

#include "absl/strings/str_cat.h"
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
  static const auto* secret = new std::vector<CK_ATTRIBUTE_TYPE>{
      CKA_CLASS, CKA_KEY_TYPE, CKA_TOKEN, CKA_PRIVATE, CKA_ID, CKA_SENSITIVE, CKA_ENCRYPT,
      CKA_DECRYPT, CKA_SIGN, CKA_VERIFY, CKA_WRAP, CKA_UNWRAP, CKA_DERIVE, CKA_START_DATE,
      CKA_END_DATE, CKA_COPYABLE, CKA_DESTROYABLE, CKA_WRAP_WITH_TRUSTED, CKA_WRAP_TEMPLATE,
      CKA_UNWRAP_TEMPLATE, CKA_DERIVE_TEMPLATE, CKA_ALLOWED_MECHANISMS};
  static const auto* priv = new std::vector<CK_ATTRIBUTE_TYPE>{
      CKA_CLASS, CKA_KEY_TYPE, CKA_TOKEN, CKA_PRIVATE, CKA_ID, CKA_SENSITIVE, CKA_DECRYPT,
      CKA_SIGN, CKA_SIGN_RECOVER, CKA_UNWRAP, CKA_DERIVE, CKA_SUBJECT, CKA_START_DATE,
      CKA_END_DATE, CKA_COPYABLE, CKA_DESTROYABLE, CKA_WRAP_WITH_TRUSTED,
      CKA_UNWRAP_TEMPLATE, CKA_DERIVE_TEMPLATE, CKA_ALLOWED_MECHANISMS,
      CKA_ALWAYS_AUTHENTICATE};
  static const auto* pub = new std::vector<CK_ATTRIBUTE_TYPE>{
      CKA_CLASS, CKA_KEY_TYPE, CKA_TOKEN, CKA_PRIVATE, CKA_ID, CKA_ENCRYPT, CKA_VERIFY,
      CKA_VERIFY_RECOVER, CKA_WRAP, CKA_DERIVE, CKA_SUBJECT, CKA_START_DATE, CKA_END_DATE,
      CKA_COPYABLE, CKA_DESTROYABLE, CKA_WRAP_TEMPLATE, CKA_ALLOWED_MECHANISMS, CKA_MODULUS,
      CKA_PUBLIC_EXPONENT, CKA_EC_PARAMS, CKA_EC_POINT};
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
    const bool empty = (a->value_case() == v1::Attribute::kBytes && a->bytes().empty()) ||
                       (a->value_case() == v1::Attribute::kNested &&
                        a->nested().attributes_size() == 0) ||
                       (a->value_case() == v1::Attribute::kMechanisms &&
                        a->mechanisms().values_size() == 0);
    if (!empty) *t.add_attributes() = *a;
  }
  SetWire(t, CKA_LABEL, BytesAttr(pending_label));
  if (snap.object_class != CKO_PUBLIC_KEY) SetWire(t, CKA_EXTRACTABLE, BoolAttr(extractable));
  return t;
}

CK_RV DestroyOn(Member& m, CK_OBJECT_HANDLE h) {
  absl::MutexLock lock(&m.holder_mutex());
  return m.fn()->C_DestroyObject(m.holder(), h);
}

CK_RV SetOn(Member& m, CK_OBJECT_HANDLE h, const v1::AttributeList& changes) {
  auto native = wire::NativeTemplate::Decode(changes);
  if (!native.ok()) return wire::GetCkRv(native.status());
  absl::MutexLock lock(&m.holder_mutex());
  return m.fn()->C_SetAttributeValue(m.holder(), h, native->data(), native->size());
}

}  // namespace

uint64_t Writer::Journal(const std::string& op, uint64_t logical_id,
                         const v1::JournalPayload& payload, const std::string& state) {
  if (store_ == nullptr) return 0;
  JournalEntry e;
  e.slot_id = group_.config().slot_id;
  e.logical_id = logical_id;
  e.op = op;
  e.payload = payload.SerializeAsString();
  e.state = state;
  e.created_unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
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

void Writer::Undo(const std::vector<std::vector<CK_OBJECT_HANDLE>>& made) {
  for (size_t i = 0; i < made.size(); ++i) {
    for (CK_OBJECT_HANDLE h : made[i]) {
      if (h != CK_INVALID_HANDLE) DestroyOn(*group_.member(i), h);
    }
  }
}

absl::StatusOr<std::vector<uint64_t>> Writer::Create(How how, size_t source,
                                                     std::vector<v1::AttributeList> templates,
                                                     const std::vector<bool>& is_key,
                                                     const MakeFn& make) {
  const size_t n_members = group_.member_count();
  const std::string& policy = group_.config().replication;
  const bool replicate = n_members > 1 && policy == "wrap";
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
  // Creates are journalled once complete (step 4): until then the pending
  // label is what makes a crash recoverable.
  const uint64_t seq = 0;

  std::vector<std::vector<CK_OBJECT_HANDLE>> made(
      n_members, std::vector<CK_OBJECT_HANDLE>(templates.size(), CK_INVALID_HANDLE));
  auto fail = [&](CK_RV rv, const std::string& why) -> absl::Status {
    Undo(made);
    JournalState(seq, "rolled_back");
    if (rv == CKR_DEVICE_ERROR) LogError(absl::StrCat("replicated write failed: ", why));
    return wire::CkError(rv, why);
  };
  auto run_make = [&](size_t i) -> CK_RV {
    Member* m = group_.member(i);
    absl::MutexLock lock(&m->holder_mutex());
    return make(i, *m, m->holder(), templates, &made[i]);
  };

  // 1. The creating call: on every member (replay) or on the source.
  if (how == How::kReplay && replicate) {
    for (size_t i = 0; i < n_members; ++i) {
      const size_t member = (source + i) % n_members;  // the source answers for the caller
      CK_RV rv = run_make(member);
      if (rv != CKR_OK) {
        return fail(i == 0 ? rv : CKR_DEVICE_ERROR,
                    absl::StrCat("member ", group_.member(member)->name(), " refused a replay: ",
                                 wire::CkRvName(rv)));
      }
    }
  } else {
    CK_RV rv = run_make(source);
    if (rv != CKR_OK) return fail(rv, "refused by the member");
  }

  // 2. Keys: wrap on the source, unwrap everywhere else; public halves of
  //    generated pairs are copied by attributes.
  if (how == How::kKeysByWrap && replicate) {
    const std::vector<CK_OBJECT_HANDLE> rk = registry_.replication_keys();
    for (size_t i = 0; i < n_members; ++i) {
      if (rk.size() <= i || rk[i] == CK_INVALID_HANDLE) {
        return fail(CKR_DEVICE_ERROR,
                    absl::StrCat("group ", group_.config().label, " has no replication key on ",
                                 group_.member(i)->name(),
                                 ": run hsmuxctl create-replication-key"));
      }
    }
    Member* src = group_.member(source);
    for (size_t k = 0; k < templates.size(); ++k) {
      ObjectSnapshot snap;
      {
        auto s = src->Acquire();
        if (!s.ok()) return fail(CKR_DEVICE_ERROR, "no session on the source member");
        PooledSession ps(src, *s);
        auto read = ReadObject(*src, *s, made[source][k]);
        if (!read.ok()) return fail(CKR_DEVICE_ERROR, "cannot read the new object");
        snap = std::move(*read);
      }
      const bool key = snap.object_class == CKO_SECRET_KEY || snap.object_class == CKO_PRIVATE_KEY;
      std::string blob;
      if (key) {
        CK_MECHANISM wrap = {CKM_AES_KEY_WRAP_PAD, nullptr, 0};
        absl::MutexLock lock(&src->holder_mutex());
        CK_ULONG len = 0;
        CK_RV rv = src->fn()->C_WrapKey(src->holder(), &wrap, rk[source], made[source][k],
                                        nullptr, &len);
        if (rv == CKR_OK) {
          blob.resize(len);
          rv = src->fn()->C_WrapKey(src->holder(), &wrap, rk[source], made[source][k],
                                    reinterpret_cast<CK_BYTE_PTR>(blob.data()), &len);
          blob.resize(len);
        }
        if (rv != CKR_OK) {
          return fail(CKR_DEVICE_ERROR, absl::StrCat("wrap on ", src->name(), ": ",
                                                     wire::CkRvName(rv)));
        }
        payload.mutable_objects(static_cast<int>(k))->set_wrapped_key(blob);
      }
      const v1::AttributeList tmpl = ReplicaTemplate(snap, pending, true);
      *payload.mutable_objects(static_cast<int>(k))->mutable_template_() = tmpl;
      auto native = wire::NativeTemplate::Decode(tmpl);
      if (!native.ok()) return fail(CKR_DEVICE_ERROR, "replica template");
      for (size_t i = 0; i < n_members; ++i) {
        if (i == source) continue;
        Member* m = group_.member(i);
        CK_RV rv;
        {
          absl::MutexLock lock(&m->holder_mutex());
          if (key) {
            CK_MECHANISM unwrap = {CKM_AES_KEY_WRAP_PAD, nullptr, 0};
            rv = m->fn()->C_UnwrapKey(m->holder(), &unwrap, rk[i],
                                      reinterpret_cast<CK_BYTE_PTR>(blob.data()), blob.size(),
                                      native->data(), native->size(), &made[i][k]);
          } else {
            rv = m->fn()->C_CreateObject(m->holder(), native->data(), native->size(),
                                         &made[i][k]);
          }
        }
        if (rv != CKR_OK) {
          return fail(CKR_DEVICE_ERROR, absl::StrCat(key ? "unwrap" : "copy", " on ", m->name(),
                                                     ": ", wire::CkRvName(rv)));
        }
      }
    }
  }

  // 3. Complete: the caller's labels, then seal, on every replica.
  if (replicate) {
    for (size_t i = 0; i < n_members; ++i) {
      for (size_t k = 0; k < templates.size(); ++k) {
        v1::AttributeList finish;
        SetWire(finish, CKA_LABEL, BytesAttr(final_labels[k]));
        if (seal[k]) SetWire(finish, CKA_EXTRACTABLE, BoolAttr(false));
        CK_RV rv = SetOn(*group_.member(i), made[i][k], finish);
        if (rv != CKR_OK) {
          return fail(CKR_DEVICE_ERROR, absl::StrCat("completing on ", group_.member(i)->name(),
                                                     ": ", wire::CkRvName(rv)));
        }
      }
    }
  }

  // External replication: the vendor's tooling copies new objects; wait
  // (bounded) for them to appear on the other members, matched by class,
  // ID, label and fingerprint.
  if (policy == "external" && n_members > 1) {
    WaitForExternalCopies(source, templates.size(), &made);
  }

  // 4. Register (visible from now on) and acknowledge.
  std::vector<uint64_t> ids;
  for (size_t k = 0; k < templates.size(); ++k) {
    LogicalObject obj;
    obj.handles.assign(n_members, CK_INVALID_HANDLE);
    bool first = true;
    for (size_t i = 0; i < n_members; ++i) {
      if (made[i][k] == CK_INVALID_HANDLE) continue;
      obj.handles[i] = made[i][k];
      Member* m = group_.member(i);
      auto s = m->Acquire();
      if (!s.ok()) continue;
      PooledSession ps(m, *s);
      auto snap = ReadObject(*m, *s, made[i][k]);
      if (!snap.ok()) continue;
      if (first) {
        obj.snapshot = std::move(*snap);
        obj.fingerprint = Fingerprint(*m, *s, made[i][k], obj.snapshot);
        first = false;
      } else {
        // Replicas made by unwrapping read CKA_LOCAL/NEVER_EXTRACTABLE false:
        // the weakest value is what clients see.
        for (auto& a : *obj.snapshot.attributes.mutable_attributes()) {
          if (a.type() == CKA_LOCAL || a.type() == CKA_NEVER_EXTRACTABLE ||
              a.type() == CKA_ALWAYS_SENSITIVE) {
            const v1::Attribute* o = FindAttribute(snap->attributes, a.type());
            a.set_boolean(a.boolean() && o != nullptr && o->boolean());
          }
        }
      }
    }
    obj.proof = replicate ? "created" : (policy == "external" ? "attributes" : "unproven");
    ids.push_back(registry_.Add(std::move(obj)));
  }
  if (replicate) {
    // Recorded before the caller hears of it. The journal keeps the wrapped
    // blobs (never a clear value) for members that must be caught up later.
    Journal("create", ids.front(), payload, "acked");
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
                              "within ", group_.config().external_wait_ms, " ms; served from where "
                              "it is"));
      return;
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
}

CK_RV Writer::Destroy(uint64_t logical_id) {
  auto obj = registry_.Get(logical_id);
  if (obj == nullptr) return CKR_OBJECT_HANDLE_INVALID;
  v1::JournalPayload payload;
  payload.set_fingerprint(obj->fingerprint);
  // The first replica answers for the caller (CKA_DESTROYABLE=FALSE etc.).
  size_t first = obj->handles.size();
  for (size_t i = 0; i < obj->handles.size(); ++i) {
    if (obj->OnMember(i)) {
      first = i;
      break;
    }
  }
  if (first == obj->handles.size()) return CKR_OBJECT_HANDLE_INVALID;
  const uint64_t seq = Journal("destroy", logical_id, payload, "pending");
  CK_RV rv = DestroyOn(*group_.member(first), obj->handles[first]);
  if (rv != CKR_OK) {
    JournalState(seq, "rolled_back");
    return rv;
  }
  for (size_t i = first + 1; i < obj->handles.size(); ++i) {
    if (!obj->OnMember(i)) continue;
    CK_RV r = DestroyOn(*group_.member(i), obj->handles[i]);
    if (r != CKR_OK) {
      // The tombstone makes the member drop it when it is next caught up.
      LogWarning(absl::StrCat("member ", group_.member(i)->name(),
                              ": destroy failed, left to catch-up: ", wire::CkRvName(r)));
    }
  }
  if (store_ != nullptr) {
    StoredObject tomb;
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
  std::vector<size_t> done;
  for (size_t i = 0; i < obj->handles.size(); ++i) {
    if (!obj->OnMember(i)) continue;
    CK_RV rv = SetOn(*group_.member(i), obj->handles[i], changes);
    if (rv != CKR_OK) {
      for (size_t j : done) SetOn(*group_.member(j), obj->handles[j], old);
      JournalState(seq, "rolled_back");
      if (done.empty()) return rv;
      LogError(absl::StrCat("member ", group_.member(i)->name(),
                            ": attribute change failed after others took it: ",
                            wire::CkRvName(rv)));
      return CKR_DEVICE_ERROR;
    }
    done.push_back(i);
  }
  // Refresh what clients see from a replica.
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
      return absl::AlreadyExistsError(absl::StrCat("member ", group_.member(i)->name(),
                                                   " already has a replication key"));
    }
  }
  unsigned char value[32];
  if (RAND_bytes(value, sizeof(value)) != 1) return absl::InternalError("no randomness");
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE kt = CKK_AES;
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  std::string label = kReplicationKeyLabel;
  CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)},
                         {CKA_KEY_TYPE, &kt, sizeof(kt)},
                         {CKA_TOKEN, &yes, sizeof(yes)},
                         {CKA_PRIVATE, &yes, sizeof(yes)},
                         {CKA_SENSITIVE, &yes, sizeof(yes)},
                         {CKA_EXTRACTABLE, &no, sizeof(no)},
                         {CKA_WRAP, &yes, sizeof(yes)},
                         {CKA_UNWRAP, &yes, sizeof(yes)},
                         {CKA_ENCRYPT, &no, sizeof(no)},
                         {CKA_DECRYPT, &no, sizeof(no)},
                         {CKA_LABEL, label.data(), label.size()},
                         {CKA_VALUE, value, sizeof(value)}};
  std::vector<std::pair<size_t, CK_OBJECT_HANDLE>> made;
  for (size_t i = 0; i < group_.member_count(); ++i) {
    Member* m = group_.member(i);
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_RV rv;
    {
      absl::MutexLock lock(&m->holder_mutex());
      rv = m->fn()->C_CreateObject(m->holder(), tmpl, sizeof(tmpl) / sizeof(tmpl[0]), &h);
    }
    if (rv != CKR_OK) {
      OPENSSL_cleanse(value, sizeof(value));
      for (auto& [j, hj] : made) DestroyOn(*group_.member(j), hj);
      return wire::CkError(rv, absl::StrCat("member ", m->name(),
                                            ": creating the replication key: ",
                                            wire::CkRvName(rv)));
    }
    made.emplace_back(i, h);
  }
  OPENSSL_cleanse(value, sizeof(value));
  for (auto& [i, h] : made) registry_.SetReplicationKey(i, h);
  LogInfo(absl::StrCat("group ", group_.config().label, ": replication key created on ",
                       made.size(), " members"));
  return absl::OkStatus();
}

void Writer::RollBackPending() {
  for (auto& [i, h] : registry_.pending_found()) {
    CK_RV rv = DestroyOn(*group_.member(i), h);
    LogWarning(absl::StrCat("member ", group_.member(i)->name(),
                            ": rolled back an unacknowledged write (",
                            wire::CkRvName(rv), ")"));
  }
  if (store_ != nullptr) {
    auto pending = store_->ListJournal(group_.config().slot_id, "pending");
    if (pending.ok()) {
      for (const JournalEntry& e : *pending) {
        // Destroys and attribute changes were applied member by member;
        // creates left pending labels that were just removed.
        JournalState(e.seq, e.op == "create" ? "rolled_back" : "acked");
      }
    }
  }
}

}  // namespace hsmux::agent
