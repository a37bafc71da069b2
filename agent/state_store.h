// The agent's persistent state behind one interface (DESIGN §3): the object
// registry, the replication journal, tombstones and PIN lockouts. The default
// implementation is embedded SQLite under the state directory
// (sqlite_state_store.cc); a shared-database implementation for several
// agents can come later behind the same interface.
//
// Nothing stored here is secret: key material appears only as blobs wrapped
// under the group's replication key; PINs never appear.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace hsmux::agent {

// One logical object of a group, as persisted.
struct StoredObject {
  uint64_t logical_id = 0;
  uint64_t slot_id = 0;        // the group
  uint64_t object_class = 0;   // CKA_CLASS
  uint64_t key_type = 0;       // CKA_KEY_TYPE / CKA_CERTIFICATE_TYPE, 0 if none
  std::string cka_id;          // raw bytes
  std::string label;           // raw bytes
  std::string fingerprint;     // what replicas are matched by (see registry.h)
  std::string attributes;      // serialized hsmux.v1.AttributeList: non-sensitive cache
  // "live", "pending" (a write under way, invisible to clients) or
  // "tombstone" (destroyed: never resurrected by a returning member).
  std::string state = "live";
  // Members holding a replica, by member name, with how equality was proven
  // ("attributes", "sign-verify", "mac", "created").
  std::vector<std::pair<std::string, std::string>> replicas;
};

// One replicated write, recorded before it is acknowledged.
struct JournalEntry {
  uint64_t seq = 0;            // assigned by the store
  uint64_t slot_id = 0;
  uint64_t logical_id = 0;
  std::string op;              // "create", "destroy", "set_attributes"
  // For creates of keys: the key wrapped under the replication key (never a
  // clear value); for public objects and attribute changes: the serialized
  // AttributeList to replay.
  std::string payload;
  std::string state = "pending";  // "pending", "acked", "rolled_back"
  int64_t created_unix_ms = 0;
};

struct Lockout {
  std::string identity;
  uint64_t slot_id = 0;
  uint32_t failures = 0;
  bool locked = false;
};

class StateStore {
 public:
  virtual ~StateStore() = default;

  // ---- registry ----
  // Inserts or replaces by logical_id (0: assign a new one, returned).
  virtual absl::StatusOr<uint64_t> PutObject(const StoredObject& object) = 0;
  virtual absl::StatusOr<std::optional<StoredObject>> GetObject(uint64_t logical_id) = 0;
  // Every object of a group, tombstones included.
  virtual absl::StatusOr<std::vector<StoredObject>> ListObjects(uint64_t slot_id) = 0;
  virtual absl::Status DeleteObject(uint64_t logical_id) = 0;

  // ---- journal ----
  // Appends an entry (its seq is assigned and returned), durably.
  virtual absl::StatusOr<uint64_t> AppendJournal(const JournalEntry& entry) = 0;
  virtual absl::Status SetJournalState(uint64_t seq, const std::string& state) = 0;
  // Entries of a group in seq order, optionally only those in `state`.
  virtual absl::StatusOr<std::vector<JournalEntry>> ListJournal(uint64_t slot_id,
                                                                const std::string& state) = 0;

  // ---- member catch-up ----
  // The journal position a member has applied up to.
  virtual absl::StatusOr<uint64_t> GetMemberPosition(uint64_t slot_id,
                                                     const std::string& member) = 0;
  virtual absl::Status SetMemberPosition(uint64_t slot_id, const std::string& member,
                                         uint64_t seq) = 0;

  // ---- PIN lockouts (survive restarts) ----
  virtual absl::StatusOr<Lockout> GetLockout(const std::string& identity, uint64_t slot_id) = 0;
  virtual absl::Status PutLockout(const Lockout& lockout) = 0;
  // Client PIN changed by C_SetPIN: the new hash overrides the config's.
  virtual absl::StatusOr<std::optional<std::string>> GetPinOverride(const std::string& identity,
                                                                    uint64_t slot_id) = 0;
  virtual absl::Status PutPinOverride(const std::string& identity, uint64_t slot_id,
                                      const std::string& pin_hash) = 0;
};

// Opens (creating if needed) the SQLite store at `path` (e.g.
// <state_dir>/hsmux-state.db): WAL mode, synchronous=FULL so an
// acknowledged write survives a crash, schema versioned with
// PRAGMA user_version. Errors name the path and SQLite's message.
absl::StatusOr<std::unique_ptr<StateStore>> OpenSqliteStateStore(const std::string& path);

}  // namespace hsmux::agent
