#include "module_config.h"

#include <cstdlib>
#include <exception>
#include <set>

#include "absl/strings/str_cat.h"
#include "wire/errors.h"
#include "yaml-cpp/yaml.h"

namespace hsmux::module {
namespace {

absl::Status ConfigError(const std::string& path, const YAML::Node& node, const std::string& what) {
  std::string where = path;
  if (node.IsDefined() && node.Mark().line >= 0) {
    absl::StrAppend(&where, ":", node.Mark().line + 1);
  }
  return wire::CkError(CKR_GENERAL_ERROR, absl::StrCat(where, ": ", what));
}

// yaml-cpp reports errors by throwing: everything that touches it stays in
// here, and no exception leaves this file.
absl::StatusOr<ModuleConfig> Parse(const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    return wire::CkError(CKR_GENERAL_ERROR, absl::StrCat(path, ": cannot read file"));
  } catch (const YAML::Exception& e) {
    return wire::CkError(CKR_GENERAL_ERROR, absl::StrCat(path, ":", e.mark.line + 1, ": ", e.msg));
  }
  if (!root.IsMap()) return ConfigError(path, root, "top level must be a mapping");
  static const std::set<std::string> kKnown = {"agents",
                                               "tls",
                                               "slots",
                                               "timeouts",
                                               "heartbeat_seconds",
                                               "log_file",
                                               "max_message_bytes",
                                               "cant_create_threads",
                                               "parameter_checks",
                                               "transport"};
  ModuleConfig cfg;
  try {
    for (const auto& kv : root) {
      const std::string key = kv.first.as<std::string>();
      if (!kKnown.count(key)) return ConfigError(path, kv.first, "unknown key '" + key + "'");
    }
    const YAML::Node agents = root["agents"];
    if (!agents || !agents.IsSequence() || agents.size() == 0) {
      return ConfigError(path, root, "agents: a non-empty list of host:port is required");
    }
    for (const auto& a : agents) cfg.agents.push_back(a.as<std::string>());
    const YAML::Node tls = root["tls"];
    if (!tls || !tls.IsMap()) return ConfigError(path, root, "tls: ca, cert and key are required");
    for (const auto& kv : tls) {
      const std::string key = kv.first.as<std::string>();
      if (key == "ca") {
        cfg.ca_file = kv.second.as<std::string>();
      } else if (key == "cert") {
        cfg.cert_file = kv.second.as<std::string>();
      } else if (key == "key") {
        cfg.key_file = kv.second.as<std::string>();
      } else if (key == "server_name") {
        cfg.server_name = kv.second.as<std::string>();
      } else {
        return ConfigError(path, kv.first, "tls: unknown key '" + key + "'");
      }
    }
    if (cfg.ca_file.empty() || cfg.cert_file.empty() || cfg.key_file.empty()) {
      return ConfigError(path, tls, "tls: ca, cert and key are required");
    }
    const YAML::Node slots = root["slots"];
    if (!slots || !slots.IsSequence() || slots.size() == 0) {
      return ConfigError(path, root, "slots: a non-empty list of slot IDs is required");
    }
    for (const auto& s : slots) cfg.slots.push_back(s.as<uint64_t>());
    if (const YAML::Node t = root["timeouts"]) {
      for (const auto& kv : t) {
        const std::string key = kv.first.as<std::string>();
        if (key == "call_ms") {
          cfg.call_timeout_ms = kv.second.as<uint32_t>();
        } else if (key == "connect_ms") {
          cfg.connect_timeout_ms = kv.second.as<uint32_t>();
        } else {
          return ConfigError(path, kv.first, "timeouts: unknown key '" + key + "'");
        }
      }
    }
    if (const YAML::Node h = root["heartbeat_seconds"]) cfg.heartbeat_seconds = h.as<uint32_t>();
    if (const YAML::Node l = root["log_file"]) cfg.log_file = l.as<std::string>();
    if (const YAML::Node m = root["max_message_bytes"]) cfg.max_message_bytes = m.as<uint32_t>();
    if (const YAML::Node t = root["cant_create_threads"]) {
      const std::string v = t.as<std::string>();
      if (v != "refuse" && v != "ignore") {
        return ConfigError(path, t, "cant_create_threads: must be refuse or ignore");
      }
      cfg.ignore_cant_create_threads = v == "ignore";
    }
    if (const YAML::Node t = root["parameter_checks"]) {
      const std::string v = t.as<std::string>();
      if (v != "at_init" && v != "deferred") {
        return ConfigError(path, t, "parameter_checks: must be at_init or deferred");
      }
      cfg.defer_parameter_checks = v == "deferred";
    }
    if (const YAML::Node t = root["transport"]) {
      const std::string v = t.as<std::string>();
      if (v != "stream" && v != "unary") {
        return ConfigError(path, t, "transport: must be stream or unary");
      }
      cfg.use_streams = v == "stream";
    }
  } catch (const YAML::Exception& e) {
    return wire::CkError(CKR_GENERAL_ERROR, absl::StrCat(path, ":", e.mark.line + 1, ": ", e.msg));
  } catch (const std::exception& e) {
    return wire::CkError(CKR_GENERAL_ERROR, absl::StrCat(path, ": ", e.what()));
  }
  if (cfg.call_timeout_ms == 0 || cfg.connect_timeout_ms == 0 || cfg.heartbeat_seconds == 0) {
    return ConfigError(path, root, "timeouts and heartbeat_seconds must be positive");
  }
  return cfg;
}

}  // namespace

absl::StatusOr<ModuleConfig> LoadModuleConfigFile(const std::string& path) { return Parse(path); }

absl::StatusOr<ModuleConfig> LoadModuleConfig() {
  const char* env = std::getenv("HSMUX_CONFIG");
  return Parse(env != nullptr && env[0] != '\0' ? env : kDefaultModuleConfigPath);
}

}  // namespace hsmux::module
