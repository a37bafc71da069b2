#include "log.h"

#include <grpc/support/log.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>

#include "absl/synchronization/mutex.h"

namespace hsmux::module {
namespace {

struct LogState {
  absl::Mutex mu;
  std::string path ABSL_GUARDED_BY(mu);
};

// Leaked on purpose: no global destructors run inside a host process.
LogState& State() {
  static LogState* state = new LogState;
  return *state;
}

void GrpcLog(gpr_log_func_args* args) {
  if (args->severity < GPR_LOG_SEVERITY_ERROR) return;
  std::string line = "grpc: ";
  line += args->message != nullptr ? args->message : "";
  LogLine(line);
}

}  // namespace

void SetLogFile(const std::string& path) {
  absl::MutexLock lock(&State().mu);
  State().path = path;
}

void LogLine(std::string_view line) {
  LogState& s = State();
  absl::MutexLock lock(&s.mu);
  if (s.path.empty()) return;
  FILE* f = std::fopen(s.path.c_str(), "ae");
  if (f == nullptr) return;
  char stamp[32];
  std::time_t now = std::time(nullptr);
  std::tm tm_utc{};
  gmtime_r(&now, &tm_utc);
  std::strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm_utc);
  std::fprintf(f, "%s hsmux-pkcs11[%d]: %.*s\n", stamp, static_cast<int>(getpid()),
               static_cast<int>(line.size()), line.data());
  std::fclose(f);
}

void RouteGrpcLogs() {
  gpr_set_log_verbosity(GPR_LOG_SEVERITY_ERROR);
  gpr_set_log_function(GrpcLog);
}

}  // namespace hsmux::module
