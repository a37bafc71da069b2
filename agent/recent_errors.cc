#include "recent_errors.h"

#include <algorithm>
#include <deque>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

namespace hsmux::agent {
namespace {

struct Ring {
  absl::Mutex mu;
  std::deque<RecentError> entries ABSL_GUARDED_BY(mu);
};

Ring& TheRing() {
  static Ring* ring = new Ring;  // never destroyed: the agent exits without destructors
  return *ring;
}

// Cut to the limit without splitting a UTF-8 sequence.
std::string Cut(std::string_view s) {
  if (s.size() <= kRecentErrorMessageMax) return std::string(s);
  size_t n = kRecentErrorMessageMax - 3;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return std::string(s.substr(0, n)) + "...";
}

}  // namespace

void RecordError(std::string_view kind, std::string_view group, std::string_view member,
                 std::string_view message) {
  RecentError e;
  e.when = absl::Now();
  e.kind = std::string(kind);
  e.group = Cut(group);
  e.member = Cut(member);
  e.message = Cut(message);
  Ring& ring = TheRing();
  absl::MutexLock lock(&ring.mu);
  auto same = std::find_if(ring.entries.begin(), ring.entries.end(), [&](const RecentError& o) {
    return o.kind == e.kind && o.group == e.group && o.member == e.member && o.message == e.message;
  });
  if (same != ring.entries.end()) {
    e.count = same->count + 1;
    ring.entries.erase(same);
  }
  ring.entries.push_back(std::move(e));
  while (ring.entries.size() > kRecentErrorsKept) ring.entries.pop_front();
}

std::vector<RecentError> RecentErrors() {
  Ring& ring = TheRing();
  absl::MutexLock lock(&ring.mu);
  return {ring.entries.begin(), ring.entries.end()};
}

void ClearRecentErrors() {
  Ring& ring = TheRing();
  absl::MutexLock lock(&ring.mu);
  ring.entries.clear();
}

}  // namespace hsmux::agent
