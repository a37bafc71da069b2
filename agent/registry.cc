#include "registry.h"

#include <tuple>

#include "absl/strings/str_cat.h"
#include "group.h"
#include "log.h"
#include "member.h"
#include "wire/attribute_kinds.h"
#include "wire/errors.h"

namespace hsmux::agent {
namespace {

struct Found {
  size_t member;
  CK_OBJECT_HANDLE handle;
  ObjectSnapshot snapshot;
  std::string fingerprint;
};

using MatchKey = std::tuple<CK_OBJECT_CLASS, CK_ULONG, std::string, std::string, std::string>;

// Attributes that differ between replicas because of how they were made
// report the weakest value (DESIGN §3).
void Weaken(v1::AttributeList& into, const v1::AttributeList& other) {
  for (CK_ATTRIBUTE_TYPE t : {CKA_LOCAL, CKA_NEVER_EXTRACTABLE, CKA_ALWAYS_SENSITIVE}) {
    const v1::Attribute* o = FindAttribute(other, t);
    for (auto& a : *into.mutable_attributes()) {
      if (a.type() == t && a.value_case() == v1::Attribute::kBoolean) {
        a.set_boolean(a.boolean() && o != nullptr && o->boolean());
      }
    }
  }
}

absl::Status ListTokenObjects(Member& m, CK_SESSION_HANDLE s,
                              std::vector<CK_OBJECT_HANDLE>* out) {
  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE tmpl = {CKA_TOKEN, &yes, sizeof(yes)};
  CK_RV rv = m.fn()->C_FindObjectsInit(s, &tmpl, 1);
  if (rv != CKR_OK) return wire::CkError(rv, "C_FindObjectsInit");
  CK_OBJECT_HANDLE batch[256];
  CK_ULONG got = 0;
  do {
    rv = m.fn()->C_FindObjects(s, batch, 256, &got);
    if (rv != CKR_OK) break;
    out->insert(out->end(), batch, batch + got);
  } while (got == 256);
  m.fn()->C_FindObjectsFinal(s);
  return rv == CKR_OK ? absl::OkStatus() : wire::CkError(rv, "C_FindObjects");
}

}  // namespace

bool SameValue(const v1::Attribute& a, const v1::Attribute& b) {
  if (a.value_case() != b.value_case()) return false;
  switch (a.value_case()) {
    case v1::Attribute::kBytes:
      return a.bytes() == b.bytes();
    case v1::Attribute::kUlong:
      return a.ulong() == b.ulong();
    case v1::Attribute::kBoolean:
      return a.boolean() == b.boolean();
    default:
      return a.SerializeAsString() == b.SerializeAsString();
  }
}

absl::StatusOr<DiscoveryReport> Registry::Discover(Group& group) {
  std::vector<Found> found;
  std::vector<CK_OBJECT_HANDLE> rk(member_count_, CK_INVALID_HANDLE);
  std::vector<std::pair<size_t, CK_OBJECT_HANDLE>> pending;
  for (size_t i = 0; i < member_count_; ++i) {
    Member* m = group.member(i);
    if (!m->healthy.load()) continue;  // caught up when it comes back
    auto session = m->Acquire();
    if (!session.ok()) return session.status();
    PooledSession ps(m, *session);
    std::vector<CK_OBJECT_HANDLE> handles;
    HSMUX_RETURN_IF_ERROR(ListTokenObjects(*m, *session, &handles));
    for (CK_OBJECT_HANDLE h : handles) {
      auto snap = ReadObject(*m, *session, h);
      if (!snap.ok()) {
        LogWarning(absl::StrCat("member ", m->name(), ": object unreadable, skipped: ",
                                snap.status().message()));
        continue;
      }
      if (snap->object_class == CKO_SECRET_KEY && snap->label == kReplicationKeyLabel) {
        rk[i] = h;
        continue;
      }
      if (snap->label.rfind(kPendingLabelPrefix, 0) == 0) {
        pending.emplace_back(i, h);
        continue;
      }
      std::string fp = Fingerprint(*m, *session, h, *snap);
      found.push_back(Found{i, h, std::move(*snap), std::move(fp)});
    }
  }
  DiscoveryReport report;
  std::map<MatchKey, std::vector<size_t>> groups;  // key -> indices into found
  std::vector<size_t> apart;
  for (size_t k = 0; k < found.size(); ++k) {
    const Found& f = found[k];
    if (f.fingerprint.empty()) {
      apart.push_back(k);
      ++report.unproven;
      report.notes.push_back(absl::StrCat("member ", group.member(f.member)->name(), ": '",
                                          f.snapshot.label, "' (class ", f.snapshot.object_class,
                                          ") kept apart: nothing proves identity"));
      continue;
    }
    groups[MatchKey(f.snapshot.object_class, f.snapshot.key_type, f.snapshot.cka_id,
                    f.snapshot.label, f.fingerprint)]
        .push_back(k);
  }
  std::map<uint64_t, std::shared_ptr<const LogicalObject>> objects;
  uint64_t next = 1;
  auto add_single = [&](const Found& f, const std::string& proof) {
    auto obj = std::make_shared<LogicalObject>();
    obj->id = next++;
    obj->snapshot = f.snapshot;
    obj->fingerprint = f.fingerprint;
    obj->handles.assign(member_count_, CK_INVALID_HANDLE);
    obj->handles[f.member] = f.handle;
    obj->proof = proof;
    objects[obj->id] = obj;
  };
  for (size_t k : apart) add_single(found[k], "unproven");
  for (auto& [key, members] : groups) {
    std::map<size_t, int> per_member;
    for (size_t k : members) ++per_member[found[k].member];
    bool ambiguous = false;
    for (auto& [m, n] : per_member) ambiguous |= n > 1;
    if (ambiguous) {
      ++report.ambiguous;
      report.notes.push_back(absl::StrCat("'", found[members[0]].snapshot.label,
                                          "': several candidates on one member, kept apart"));
      for (size_t k : members) add_single(found[k], "ambiguous");
      continue;
    }
    auto obj = std::make_shared<LogicalObject>();
    obj->id = next++;
    obj->snapshot = found[members[0]].snapshot;
    obj->fingerprint = found[members[0]].fingerprint;
    obj->handles.assign(member_count_, CK_INVALID_HANDLE);
    for (size_t k : members) {
      obj->handles[found[k].member] = found[k].handle;
      Weaken(obj->snapshot.attributes, found[k].snapshot.attributes);
    }
    const std::string& fp = obj->fingerprint;
    obj->proof = fp.rfind("fn-", 0) == 0 || (obj->snapshot.object_class == CKO_PRIVATE_KEY &&
                                             obj->snapshot.key_type == CKK_EC)
                     ? "function"
                     : "attributes";
    if (members.size() > 1) ++report.merged;
    objects[obj->id] = obj;
  }
  report.objects = objects.size();
  if (store_ != nullptr) {
    // Keep the store's rows: the same object keeps its row across restarts.
    std::vector<StoredObject> stored;
    if (auto rows = store_->ListObjects(slot_id_); rows.ok()) stored = std::move(*rows);
    for (auto& [id, obj] : objects) {
      auto copy = std::make_shared<LogicalObject>(*obj);
      for (const StoredObject& row : stored) {
        if (row.state == "live" && !row.fingerprint.empty() &&
            row.fingerprint == copy->fingerprint && row.object_class == copy->snapshot.object_class) {
          copy->store_id = row.logical_id;
          break;
        }
      }
      copy->store_id = Persist(*copy);
      obj = copy;
    }
  }
  {
    absl::MutexLock lock(&mu_);
    objects_ = std::move(objects);
    next_id_ = next;
    rk_ = std::move(rk);
    pending_ = std::move(pending);
  }
  report_ = report;
  return report;
}

uint64_t Registry::Persist(const LogicalObject& object) {
  if (store_ == nullptr) return 0;
  StoredObject row;
  row.logical_id = object.store_id;
  row.slot_id = slot_id_;
  row.object_class = object.snapshot.object_class;
  row.key_type = object.snapshot.key_type;
  row.cka_id = object.snapshot.cka_id;
  row.label = object.snapshot.label;
  row.fingerprint = object.fingerprint;
  row.attributes = object.snapshot.attributes.SerializeAsString();
  row.state = "live";
  for (size_t i = 0; i < object.handles.size() && i < member_names_.size(); ++i) {
    if (object.OnMember(i)) row.replicas.emplace_back(member_names_[i], object.proof);
  }
  auto id = store_->PutObject(row);
  if (!id.ok()) {
    LogError(absl::StrCat("state store: registry row not written: ", id.status().message()));
    return 0;
  }
  return *id;
}

std::shared_ptr<const LogicalObject> Registry::Get(uint64_t id) const {
  absl::MutexLock lock(&mu_);
  auto it = objects_.find(id);
  return it == objects_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<const LogicalObject>> Registry::All() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::shared_ptr<const LogicalObject>> out;
  for (auto& [id, o] : objects_) out.push_back(o);
  return out;
}

uint64_t Registry::Add(LogicalObject object) {
  object.store_id = Persist(object);
  absl::MutexLock lock(&mu_);
  object.id = next_id_++;
  const uint64_t id = object.id;
  objects_[id] = std::make_shared<const LogicalObject>(std::move(object));
  return id;
}

void Registry::Replace(std::shared_ptr<const LogicalObject> object) {
  if (object->store_id != 0) Persist(*object);
  absl::MutexLock lock(&mu_);
  objects_[object->id] = std::move(object);
}

void Registry::Remove(uint64_t id) {
  absl::MutexLock lock(&mu_);
  objects_.erase(id);
}

std::optional<std::vector<uint64_t>> Registry::Match(const v1::AttributeList& tmpl) const {
  std::vector<std::shared_ptr<const LogicalObject>> all = All();
  std::vector<uint64_t> out;
  for (const auto& obj : all) {
    bool match = true;
    for (const auto& want : tmpl.attributes()) {
      if (!Cacheable(obj->snapshot.object_class, want.type()) ||
          obj->snapshot.sensitive.count(want.type())) {
        // Key values and sensitive attributes are not kept: only a member
        // can say whether they match.
        return std::nullopt;
      }
      const v1::Attribute* have = FindAttribute(obj->snapshot.attributes, want.type());
      if (have == nullptr || !SameValue(*have, want)) {
        match = false;
        break;
      }
    }
    if (match) out.push_back(obj->id);
  }
  return out;
}

std::vector<CK_OBJECT_HANDLE> Registry::replication_keys() const {
  absl::MutexLock lock(&mu_);
  return rk_;
}

void Registry::SetReplicationKey(size_t member, CK_OBJECT_HANDLE handle) {
  absl::MutexLock lock(&mu_);
  if (rk_.size() < member_count_) rk_.resize(member_count_, CK_INVALID_HANDLE);
  rk_[member] = handle;
}

std::vector<std::pair<size_t, CK_OBJECT_HANDLE>> Registry::pending_found() const {
  absl::MutexLock lock(&mu_);
  return pending_;
}

}  // namespace hsmux::agent
