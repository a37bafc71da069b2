// The agent's configuration (/etc/hsmux/hsmuxd.yaml), as loaded and validated.
// The YAML schema is documented in docs/configuration.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace hsmux::agent {

struct TlsConfig {
  std::string ca_file;    // CA that client certificates must chain to
  std::string cert_file;  // the agent's server certificate (PEM)
  std::string key_file;   // its private key (PEM); never logged
};

// A member: one token in one vendor library.
struct MemberConfig {
  std::string name;          // unique within the group, used in logs/metrics
  std::string library;       // path of the vendor PKCS#11 library
  std::string token_label;   // select the token by label ...
  std::string token_serial;  // ... or by serial (at least one is set)
  // The member's user PIN, resolved at load time from `pin_file` (first line,
  // trailing newline stripped) or `pin_env` (environment variable). Never
  // logged.
  std::string pin;
};

// What one client identity may use in one group.
struct GroupAccess {
  uint64_t slot_id = 0;  // the group's slot
  // Salted slow hash of the client's PIN for this group (see pin_hash.h).
  std::string pin_hash;
  // Optional allow-lists (DESIGN §2): keys whose CKA_LABEL matches one of
  // these shell patterns (or "id:<hex pattern>" for CKA_ID), and mechanisms
  // by name ("CKM_ECDSA") or number ("0x1041"). Empty: everything. What is
  // not allowed is absent for this client.
  std::vector<std::string> allowed_keys;
  std::vector<std::string> allowed_mechanisms;
};

struct ClientConfig {
  // Matched exactly against the client certificate: the subject's common
  // name, or a DNS/URI subject alternative name. At least one is set.
  std::string common_name;
  std::string san;
  std::vector<GroupAccess> groups;
};

// One virtual slot/token.
struct GroupConfig {
  uint64_t slot_id = 0;                // never 0 is not required by Cryptoki; any value
  std::string label;                   // token label, at most 32 bytes
  std::string serial;                  // at most 16 bytes
  std::string model = "hsmux";         // at most 16 bytes
  std::string manufacturer = "hsmux";  // at most 32 bytes
  std::string slot_description = "hsmux virtual slot";  // at most 64 bytes
  // How new keys reach every member (DESIGN §3): "wrap" (default; needs the
  // group's replication key), "external" (the vendor's tooling copies them;
  // the agent waits for them to appear) or "none" (one member only).
  std::string replication = "wrap";
  // `external`: how long a write waits for the vendor's tooling to copy a
  // new object to the other members before answering.
  uint32_t external_wait_ms = 10000;
  // High availability (DESIGN §5): deadlines of member calls by class, how
  // often members are probed and how long a probe may take, and how much of
  // a multi-part operation is kept for replay on another member.
  uint32_t call_timeout_ms = 5000;
  uint32_t keygen_timeout_ms = 60000;
  uint32_t probe_interval_ms = 1000;
  uint32_t probe_timeout_ms = 2000;
  uint32_t replay_buffer_bytes = 1 << 20;
  // Member sessions per member (DESIGN §4): opened at start, at most, and
  // how long a call waits for one when all are busy. The maximum counts the
  // member's holder session too.
  uint32_t pool_min_sessions = 2;
  uint32_t pool_max_sessions = 16;
  uint32_t pool_wait_ms = 5000;
  std::vector<MemberConfig> members;
};

struct AgentConfig {
  std::string listen = "127.0.0.1:7443";  // host:port of the mTLS listener
  // Optional second mTLS listener on a Unix socket (absolute path), for
  // modules on the same host: the same certificates and checks, no TCP
  // (docs/decisions/0012-call-streams.md). Empty: none.
  std::string listen_unix;
  TlsConfig tls;
  std::string state_dir = "/var/lib/hsmux";
  // Prometheus endpoint (host:port); empty: off. Localhost by default.
  std::string metrics_listen = "127.0.0.1:9464";
  // Audit log (JSON lines): logins, failed logins, lockouts, key creation
  // and destruction, admin actions; never a PIN or key material. Empty:
  // <state_dir>/audit.log.
  std::string audit_log;
  uint32_t lease_seconds = 30;  // instance lease, renewed by heartbeats
  uint32_t max_sessions_per_instance = 4096;
  // Hostile-input limits (DESIGN §6): attributes in one template, bytes in
  // one attribute value, objects an instance may create, calls the agent
  // runs at once (more wait in gRPC's queue, then answer CKR_DEVICE_MEMORY).
  uint32_t max_template_attributes = 256;
  uint32_t max_attribute_bytes = 1 << 20;
  uint32_t max_objects_per_instance = 100000;
  uint32_t max_concurrent_calls = 256;
  // CallStreams open at once (docs/decisions/0012-call-streams.md). Each
  // holds a server thread out of max_concurrent_calls while open, so the
  // default is half of max_concurrent_calls; a module whose stream is
  // refused sends unary calls instead. 0: every module uses unary calls.
  uint32_t max_streams = max_concurrent_calls / 2;
  // Wrong PINs in a row that lock an identity out of a group
  // (CKR_PIN_LOCKED; persistent; `hsmuxctl unlock` lifts it).
  uint32_t max_pin_failures = 5;
  std::vector<GroupConfig> groups;
  std::vector<ClientConfig> clients;
};

// Loads and validates a config file. Any error names the file, the line
// (when the YAML parser gives one) and the reason, e.g.
// "/etc/hsmux/hsmuxd.yaml:12: groups[0].members[1]: library is required".
// Validation: required fields, unique slot IDs and member names, field
// lengths above, exactly one of pin_file/pin_env per member (and it must be
// readable / set), every client group naming an existing slot, pin_hash
// parseable.
absl::StatusOr<AgentConfig> LoadAgentConfig(const std::string& path);

// The agent's admin socket (hsmuxctl), mode 0600 in the state directory.
// The stable name of a client identity in the state store and audit log.
inline std::string ClientKey(const ClientConfig& client) {
  return client.common_name.empty() ? "san:" + client.san : "cn:" + client.common_name;
}

inline std::string AdminSocketPath(const std::string& state_dir) {
  return state_dir + "/admin.sock";
}

}  // namespace hsmux::agent
