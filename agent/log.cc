#include "log.h"

#include <cstdio>
#include <ctime>

#include "absl/synchronization/mutex.h"

namespace hsmux::agent {
namespace {

absl::Mutex& LogMutex() {
  static absl::Mutex* mu = new absl::Mutex;
  return *mu;
}

void Write(const char* level, std::string_view line) {
  char stamp[32];
  std::time_t now = std::time(nullptr);
  std::tm tm_utc{};
  gmtime_r(&now, &tm_utc);
  std::strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm_utc);
  absl::MutexLock lock(&LogMutex());
  std::fprintf(stderr, "%s %s hsmuxd: %.*s\n", stamp, level, static_cast<int>(line.size()),
               line.data());
  std::fflush(stderr);
}

}  // namespace

void LogInfo(std::string_view line) { Write("INFO", line); }
void LogWarning(std::string_view line) { Write("WARN", line); }
void LogError(std::string_view line) { Write("ERROR", line); }

}  // namespace hsmux::agent
