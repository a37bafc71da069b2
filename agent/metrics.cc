#include "metrics.h"

#include <exception>
#include <limits>

#include "prometheus/client_metric.h"
#include "prometheus/metric_family.h"
#include "prometheus/metric_type.h"

#include "absl/strings/str_cat.h"
#include "agent.h"
#include "log.h"
#include "wire/errors.h"

namespace hsmux::agent {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

ClientMetric Labeled(std::vector<ClientMetric::Label> labels) {
  ClientMetric m;
  m.label = std::move(labels);
  return m;
}

MetricFamily Family(const char* name, const char* help, MetricType type) {
  MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  return f;
}

}  // namespace

void AgentMetrics::CountCall(const std::string& identity, CK_RV rv) {
  absl::MutexLock lock(&mu_);
  ++calls_[{identity, wire::CkRvName(rv)}];
}

std::vector<MetricFamily> AgentMetrics::Collect() const {
  auto calls = Family("hsmux_member_calls_total", "Calls made to a member", MetricType::Counter);
  auto inflight = Family("hsmux_member_inflight", "Calls in flight on a member", MetricType::Gauge);
  auto healthy = Family("hsmux_member_healthy", "1 while the member serves", MetricType::Gauge);
  auto sessions = Family("hsmux_member_sessions_open",
                         "Member sessions open (pool and holder)", MetricType::Gauge);
  auto failovers = Family("hsmux_member_failovers_total", "Calls moved off the member",
                          MetricType::Counter);
  auto replays = Family("hsmux_member_replays_total",
                        "Multi-part operations replayed onto the member", MetricType::Counter);
  auto waits = Family("hsmux_member_pool_waits_total",
                      "Session requests that found the pool busy", MetricType::Counter);
  auto latency = Family("hsmux_member_call_seconds", "Member call latency",
                        MetricType::Histogram);
  auto client_sessions = Family("hsmux_client_sessions", "Client sessions open",
                                MetricType::Gauge);
  auto identity_calls = Family("hsmux_identity_calls_total",
                               "Calls served per client identity and return code",
                               MetricType::Counter);
  for (const auto& [slot, group] : agent_.groups()) {
    const std::string g = group->config().label;
    for (size_t i = 0; i < group->member_count(); ++i) {
      Member* m = group->member(i);
      const std::vector<ClientMetric::Label> l = {{"group", g}, {"member", m->name()}};
      auto c = Labeled(l);
      c.counter.value = static_cast<double>(m->calls.load());
      calls.metric.push_back(c);
      auto in = Labeled(l);
      in.gauge.value = m->inflight.load();
      inflight.metric.push_back(in);
      auto h = Labeled(l);
      h.gauge.value = m->healthy.load() ? 1 : 0;
      healthy.metric.push_back(h);
      auto s = Labeled(l);
      s.gauge.value = m->healthy.load() ? m->open_sessions() : 0;
      sessions.metric.push_back(s);
      auto f = Labeled(l);
      f.counter.value = static_cast<double>(m->failovers.load());
      failovers.metric.push_back(f);
      auto r = Labeled(l);
      r.counter.value = static_cast<double>(m->replays.load());
      replays.metric.push_back(r);
      auto w = Labeled(l);
      w.counter.value = static_cast<double>(m->pool_waits.load());
      waits.metric.push_back(w);
      auto hist = Labeled(l);
      uint64_t cumulative = 0;
      for (size_t b = 0; b <= Member::kLatencyBuckets; ++b) {
        cumulative += m->latency_counts[b].load();
        ClientMetric::Bucket bucket;
        bucket.cumulative_count = cumulative;
        bucket.upper_bound = b < Member::kLatencyBuckets ? Member::kLatencyBucketsUs[b] / 1e6
                                                          : std::numeric_limits<double>::infinity();
        hist.histogram.bucket.push_back(bucket);
      }
      hist.histogram.sample_count = cumulative;
      hist.histogram.sample_sum = static_cast<double>(m->latency_sum_us.load()) / 1e6;
      latency.metric.push_back(hist);
    }
  }
  auto [instances, open] = agent_.Counts();
  auto cs = Labeled({});
  cs.gauge.value = static_cast<double>(open);
  client_sessions.metric.push_back(cs);
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [key, n] : calls_) {
      auto m = Labeled({{"identity", key.first}, {"rv", key.second}});
      m.counter.value = static_cast<double>(n);
      identity_calls.metric.push_back(m);
    }
  }
  (void)instances;
  return {calls, inflight, healthy, sessions, failovers, replays, waits, latency,
          client_sessions, identity_calls};
}

std::unique_ptr<prometheus::Exposer> StartMetrics(const std::string& listen,
                                                  const std::shared_ptr<AgentMetrics>& metrics) {
  // prometheus-cpp reports a busy port by throwing; no exception leaves here.
  try {
    auto exposer = std::make_unique<prometheus::Exposer>(listen, 1);
    exposer->RegisterCollectable(metrics);
    LogInfo(absl::StrCat("metrics on http://", listen, "/metrics"));
    return exposer;
  } catch (const std::exception& e) {
    LogError(absl::StrCat("metrics endpoint ", listen, ": ", e.what()));
    return nullptr;
  }
}

}  // namespace hsmux::agent
