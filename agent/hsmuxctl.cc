// hsmuxctl: the operator's command-line tool.
//
//   hsmuxctl hash-pin [--pin-file F]   hash a client PIN for the config
//   hsmuxctl check-config [--config F] validate an agent config
//   hsmuxctl status [--socket P|--config F]              the running agent
//   hsmuxctl create-replication-key [--slot N] [--socket P|--config F]
//   hsmuxctl unlock --identity cn:NAME --slot N [--socket P|--config F]
//
// Exit codes: 0 success, 1 the operation failed, 2 usage error.
#include <openssl/crypto.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "config.h"
#include "hsmuxctl_admin.h"
#include "pin_hash.h"

namespace hsmux::agent {
namespace {

constexpr char kDefaultConfig[] = "/etc/hsmux/hsmuxd.yaml";
// Same cap as the agent applies to member PINs; also bounds what we read.
constexpr size_t kMaxPinBytes = 255;

constexpr char kUsage[] =
    "usage: hsmuxctl <command> [options]\n"
    "\n"
    "commands:\n"
    "  hash-pin [--pin-file FILE]\n"
    "      Hash a client PIN for the pin_hash field of the agent config.\n"
    "      The PIN is the first line of FILE, or of standard input (on a\n"
    "      terminal it is prompted for twice, without echo). Prints the\n"
    "      encoded hash.\n"
    "  check-config [--config FILE]\n"
    "      Load and validate an agent config (default\n"
    "      /etc/hsmux/hsmuxd.yaml). Prints a summary, or the error with file\n"
    "      and line (exit 1).\n"
    "  status [--socket PATH | --config FILE]\n"
    "      Show the running agent's groups, members, sessions and recent\n"
    "      errors (over its admin socket, <state_dir>/admin.sock).\n"
    "  create-replication-key [--slot N] [--socket PATH | --config FILE]\n"
    "      Create the group's replication key (AES-256, non-extractable,\n"
    "      the same on every member); every group if --slot is not given.\n"
    "  unlock --identity cn:NAME|san:NAME --slot N [--socket PATH | --config FILE]\n"
    "      Lift a PIN lockout of a client identity on a group.\n"
    "  drain --slot N --member NAME [--socket PATH | --config FILE]\n"
    "      Take a member out of service (it stays out until readmitted).\n"
    "  readmit --slot N --member NAME [--socket PATH | --config FILE]\n"
    "      Reconnect a member, catch it up from the journal, and serve from it.\n"
    "  help, --help, -h\n"
    "      Show this text.\n";

int Usage(std::string_view problem) {
  if (!problem.empty()) std::cerr << "hsmuxctl: " << problem << "\n";
  std::cerr << kUsage;
  return 2;
}

// Overwrites a string that held a PIN before it is freed.
void Wipe(std::string* s) {
  if (!s->empty()) OPENSSL_cleanse(s->data(), s->size());
  s->clear();
}

// Parses "--name VALUE" / "--name=VALUE" options. Returns false (after
// printing why) on anything it does not know.
bool ParseOptions(const std::vector<std::string_view>& args,
                  std::string_view name, std::string* value, bool* seen) {
  *seen = false;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string_view a = args[i];
    const std::string flag = std::string("--") + std::string(name);
    if (a == flag) {
      if (i + 1 >= args.size()) {
        Usage(flag + " needs a value");
        return false;
      }
      *value = std::string(args[++i]);
    } else if (a.substr(0, flag.size() + 1) == flag + "=") {
      *value = std::string(a.substr(flag.size() + 1));
    } else {
      Usage("unknown option '" + std::string(a) + "'");
      return false;
    }
    if (*seen) {
      Usage(flag + " given twice");
      return false;
    }
    *seen = true;
    if (value->empty()) {
      Usage(flag + " needs a value");
      return false;
    }
  }
  return true;
}

// Reads one line from `in`, at most kMaxPinBytes + a little, without the
// line end. False on EOF before any character.
bool ReadLine(std::istream& in, std::string* line) {
  line->clear();
  char c;
  bool any = false;
  while (in.get(c)) {
    any = true;
    if (c == '\n') break;
    if (line->size() > kMaxPinBytes) continue;  // too long; keep draining
    line->push_back(c);
  }
  if (!line->empty() && line->back() == '\r') line->pop_back();
  return any;
}

// Turns terminal echo off for its lifetime, so a typed PIN is not shown.
class NoEcho {
 public:
  NoEcho() {
    if (tcgetattr(STDIN_FILENO, &saved_) == 0) {
      termios quiet = saved_;
      quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
      active_ = tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet) == 0;
    }
  }
  ~NoEcho() {
    if (active_) tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_);
  }
  NoEcho(const NoEcho&) = delete;
  NoEcho& operator=(const NoEcho&) = delete;

 private:
  termios saved_{};
  bool active_ = false;
};

absl::Status ReadPin(const std::string& pin_file, bool from_file,
                     std::string* pin) {
  if (from_file) {
    std::ifstream in(pin_file, std::ios::binary);
    if (!in) {
      return absl::NotFoundError("cannot open " + pin_file + ": " +
                                 std::strerror(errno));
    }
    ReadLine(in, pin);
  } else if (isatty(STDIN_FILENO)) {
    std::string again;
    {
      NoEcho no_echo;
      std::cerr << "PIN: " << std::flush;
      ReadLine(std::cin, pin);
      std::cerr << "\nRepeat PIN: " << std::flush;
      ReadLine(std::cin, &again);
      std::cerr << "\n";
    }
    const bool same = again == *pin;
    Wipe(&again);
    if (!same) {
      Wipe(pin);
      return absl::InvalidArgumentError("the PINs do not match");
    }
  } else {
    ReadLine(std::cin, pin);
  }
  if (pin->empty()) {
    return absl::InvalidArgumentError("the PIN is empty");
  }
  if (pin->size() > kMaxPinBytes) {
    Wipe(pin);
    return absl::InvalidArgumentError("the PIN is longer than 255 bytes");
  }
  return absl::OkStatus();
}

int HashPinCommand(const std::vector<std::string_view>& args) {
  std::string pin_file;
  bool from_file = false;
  if (!ParseOptions(args, "pin-file", &pin_file, &from_file)) return 2;
  std::string pin;
  absl::Status status = ReadPin(pin_file, from_file, &pin);
  if (!status.ok()) {
    Wipe(&pin);
    std::cerr << "hsmuxctl hash-pin: " << status.message() << "\n";
    return 1;
  }
  absl::StatusOr<std::string> hash = HashPin(pin);
  Wipe(&pin);
  if (!hash.ok()) {
    std::cerr << "hsmuxctl hash-pin: " << hash.status().message() << "\n";
    return 1;
  }
  std::cout << *hash << "\n";
  return std::cout.flush() ? 0 : 1;
}

int CheckConfigCommand(const std::vector<std::string_view>& args) {
  std::string path = kDefaultConfig;
  bool seen = false;
  if (!ParseOptions(args, "config", &path, &seen)) return 2;
  absl::StatusOr<AgentConfig> config = LoadAgentConfig(path);
  if (!config.ok()) {
    std::cerr << "hsmuxctl check-config: " << config.status().message() << "\n";
    return 1;
  }
  size_t members = 0;
  for (GroupConfig& group : config->groups) {
    members += group.members.size();
    for (MemberConfig& member : group.members) Wipe(&member.pin);
  }
  std::cout << "config OK: " << config->groups.size() << " groups, " << members
            << " members, " << config->clients.size() << " clients\n";
  return 0;
}

int Main(int argc, char** argv) {
  if (argc < 2) return Usage("no command given");
  const std::string_view command = argv[1];
  std::vector<std::string_view> args(argv + 2, argv + argc);
  if (command == "--help" || command == "-h" || command == "help") {
    std::cout << kUsage;
    return 0;
  }
  for (std::string_view a : args) {
    if (a == "--help" || a == "-h") {
      std::cout << kUsage;
      return 0;
    }
  }
  if (command == "hash-pin") return HashPinCommand(args);
  if (command == "check-config") return CheckConfigCommand(args);
  if (command == "status" || command == "create-replication-key" || command == "unlock" ||
      command == "drain" || command == "readmit") {
    return AdminCommand(command, args);
  }
  return Usage("unknown command '" + std::string(command) + "'");
}

}  // namespace
}  // namespace hsmux::agent

int main(int argc, char** argv) {
  // No exception may end the tool with an abort and a core file.
  try {
    return hsmux::agent::Main(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "hsmuxctl: unexpected error: " << e.what() << "\n";
  } catch (...) {
    std::cerr << "hsmuxctl: unexpected error\n";
  }
  return 1;
}
