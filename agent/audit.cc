#include "audit.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>

#include "absl/synchronization/mutex.h"

namespace hsmux::agent {
namespace {

struct AuditFile {
  absl::Mutex mu;
  int fd ABSL_GUARDED_BY(mu) = -1;
};

AuditFile& File() {
  static AuditFile* f = new AuditFile;
  return *f;
}

void AppendJsonString(std::string* out, const std::string& s) {
  out->push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"': *out += "\\\""; break;
      case '\\': *out += "\\\\"; break;
      case '\n': *out += "\\n"; break;
      case '\r': *out += "\\r"; break;
      case '\t': *out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          *out += buf;
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
  }
  out->push_back('"');
}

}  // namespace

bool OpenAuditLog(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  AuditFile& f = File();
  absl::MutexLock lock(&f.mu);
  if (f.fd >= 0) ::close(f.fd);
  f.fd = fd;
  return true;
}

void Audit(const std::string& event, const std::string& identity,
           const std::vector<std::pair<std::string, std::string>>& fields) {
  char stamp[32];
  std::time_t now = std::time(nullptr);
  std::tm tm_utc{};
  gmtime_r(&now, &tm_utc);
  std::strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm_utc);
  std::string line = "{\"time\":";
  AppendJsonString(&line, stamp);
  line += ",\"event\":";
  AppendJsonString(&line, event);
  line += ",\"identity\":";
  AppendJsonString(&line, identity);
  for (const auto& [k, v] : fields) {
    line.push_back(',');
    AppendJsonString(&line, k);
    line.push_back(':');
    AppendJsonString(&line, v);
  }
  line += "}\n";
  AuditFile& f = File();
  absl::MutexLock lock(&f.mu);
  if (f.fd < 0) return;
  (void)!::write(f.fd, line.data(), line.size());
}

}  // namespace hsmux::agent
