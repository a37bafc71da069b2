// The module's configuration: a small YAML file named by HSMUX_CONFIG, else
// /etc/hsmux/module.conf. Schema in docs/configuration.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace hsmux::module {

struct ModuleConfig {
  std::vector<std::string> agents;  // "host:port", tried in order
  std::string ca_file;              // CA the agent's certificate must chain to
  std::string cert_file;            // this client's certificate
  std::string key_file;             // this client's private key (never logged)
  std::string server_name;          // expected agent name, if not the host
  std::vector<uint64_t> slots;      // slot IDs listed even with no agent
  uint32_t call_timeout_ms = 10000;
  uint32_t connect_timeout_ms = 3000;
  uint32_t heartbeat_seconds = 10;
  std::string log_file;  // module log (never the host's stderr); empty: off
  uint32_t max_message_bytes = 16 << 20;
  // What C_Initialize does with CKF_LIBRARY_CANT_CREATE_OS_THREADS: the
  // module needs threads (gRPC), so the spec's answer is
  // CKR_NEED_TO_CREATE_THREADS ("refuse", the default). p11-kit (p11tool,
  // GnuTLS) sets the flag on every module it loads; "ignore" lets those
  // hosts use hsmux. See docs/decisions/0009-cant-create-threads.md.
  bool ignore_cant_create_threads = false;
  // parameter_checks: "at_init" (default) or "deferred". Deferred lets the
  // module answer a C_*Init whose mechanism carries a parameter (AES-GCM,
  // CBC, OAEP, PSS) once the agent accepted that mechanism and key, saving
  // a round trip; a parameter the member refuses is then reported by the
  // next call instead of C_*Init (docs/decisions/0010-round-trips.md).
  bool defer_parameter_checks = false;
  // transport: "stream" (default) sends each thread's calls on one
  // long-lived CallStream; "unary" sends one RPC per call
  // (docs/decisions/0012-call-streams.md).
  bool use_streams = true;
};

inline constexpr char kDefaultModuleConfigPath[] = "/etc/hsmux/module.conf";

// Reads HSMUX_CONFIG or the default path. Errors carry CKR_GENERAL_ERROR
// and name the file, line and reason.
absl::StatusOr<ModuleConfig> LoadModuleConfig();
absl::StatusOr<ModuleConfig> LoadModuleConfigFile(const std::string& path);

}  // namespace hsmux::module
