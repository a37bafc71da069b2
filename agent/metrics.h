// Prometheus metrics (prometheus-cpp from Debian), served on
// `metrics_listen` (localhost by default). Member figures are read from the
// members' own counters when scraped, so the hot path only bumps atomics.
// Label sets are bounded: groups and members from config, identities from
// config, return codes by name; never a key label.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "prometheus/collectable.h"
#include "prometheus/exposer.h"
#include "wire/cryptoki.h"

namespace hsmux::agent {

class Agent;

class AgentMetrics : public prometheus::Collectable {
 public:
  explicit AgentMetrics(Agent& agent) : agent_(agent) {}

  // Counts one served call of a client identity and its outcome.
  void CountCall(const std::string& identity, CK_RV rv);

  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  Agent& agent_;
  mutable absl::Mutex mu_;
  std::map<std::pair<std::string, std::string>, uint64_t> calls_ ABSL_GUARDED_BY(mu_);
};

// Starts the endpoint; nullptr (and a log line) if it cannot listen.
std::unique_ptr<prometheus::Exposer> StartMetrics(const std::string& listen,
                                                  const std::shared_ptr<AgentMetrics>& metrics);

}  // namespace hsmux::agent
