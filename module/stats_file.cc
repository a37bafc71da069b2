#include "stats_file.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "module_state.h"

namespace hsmux::module {

void WriteStatsFile(const AgentClient::TransportStats& stats) {
  const char* path = std::getenv("HSMUX_STATS_FILE");
  if (path == nullptr || path[0] == '\0') return;
  const std::string target(path);
  const std::string tmp = target + ".tmp." + std::to_string(getpid()) + "." +
                          std::to_string(static_cast<long>(syscall(SYS_gettid)));
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) return;
  std::fprintf(
      f, "{\"pid\":%ld,\"round_trips\":%llu,\"streams_opened\":%llu,\"streams_refused\":%llu}\n",
      static_cast<long>(getpid()), static_cast<unsigned long long>(stats.round_trips),
      static_cast<unsigned long long>(stats.streams_opened),
      static_cast<unsigned long long>(stats.streams_refused));
  const bool ok = std::fclose(f) == 0;
  if (!ok || std::rename(tmp.c_str(), target.c_str()) != 0) std::remove(tmp.c_str());
}

void SnapshotStats() {
  const char* path = std::getenv("HSMUX_STATS_FILE");
  if (path == nullptr || path[0] == '\0') return;
  auto client = ModuleState::Get().Client();
  if (!client.ok() || *client == nullptr) return;
  WriteStatsFile((*client)->stats());
}

}  // namespace hsmux::module
