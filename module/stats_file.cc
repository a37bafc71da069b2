#include "stats_file.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "module_state.h"

namespace hsmux::module {

void WriteStatsFile(uint64_t round_trips) {
  const char* path = std::getenv("HSMUX_STATS_FILE");
  if (path == nullptr || path[0] == '\0') return;
  const std::string target(path);
  const std::string tmp = target + ".tmp." + std::to_string(getpid()) + "." +
                          std::to_string(static_cast<long>(syscall(SYS_gettid)));
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) return;
  std::fprintf(f, "{\"pid\":%ld,\"round_trips\":%llu}\n", static_cast<long>(getpid()),
               static_cast<unsigned long long>(round_trips));
  const bool ok = std::fclose(f) == 0;
  if (!ok || std::rename(tmp.c_str(), target.c_str()) != 0) std::remove(tmp.c_str());
}

void SnapshotStats() {
  const char* path = std::getenv("HSMUX_STATS_FILE");
  if (path == nullptr || path[0] == '\0') return;
  auto client = ModuleState::Get().Client();
  if (!client.ok() || *client == nullptr) return;
  WriteStatsFile((*client)->round_trips());
}

}  // namespace hsmux::module
