// Members: the real tokens behind a virtual slot. A vendor library is loaded
// and initialised once, however many members (tokens) it holds; a member is
// one token in it, logged in once by the agent, with a small pool of
// sessions and one long-lived holder session where objects are created (so
// that session objects survive pool recycling, DESIGN §3).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "call_executor.h"
#include "config.h"
#include "wire/cryptoki.h"

namespace hsmux::agent {

// One loaded vendor library.
class MemberLibrary {
 public:
  // dlopen + C_GetFunctionList + C_Initialize(CKF_OS_LOCKING_OK). Libraries
  // are shared by path through `cache`.
  static absl::StatusOr<std::shared_ptr<MemberLibrary>> Load(
      const std::string& path, std::map<std::string, std::shared_ptr<MemberLibrary>>& cache);

  CK_FUNCTION_LIST* fn() const { return fn_; }
  const std::string& path() const { return path_; }

 private:
  MemberLibrary(std::string path, void* handle, CK_FUNCTION_LIST* fn)
      : path_(std::move(path)), handle_(handle), fn_(fn) {}
  std::string path_;
  void* handle_;
  CK_FUNCTION_LIST* fn_;
};

// A CK_RV the agent uses internally for "the member did not answer within
// its deadline"; never sent to a client (it becomes CKR_DEVICE_ERROR).
inline constexpr CK_RV kMemberTimedOut = CKR_VENDOR_DEFINED | 0x48544fUL;

// True for outcomes that say the member (not the caller) is in trouble:
// they trigger a probe, and single-part calls are retried elsewhere.
bool IsDeviceFailure(CK_RV rv);

class Member {
 public:
  // A member that is not connected yet (Connect does that).
  Member(MemberConfig config, std::shared_ptr<MemberLibrary> library);

  // Finds the token, opens the holder session, logs in and opens the pool's
  // minimum; on success the member is up. Used at start and on recovery
  // (the library is never finalised: other members may share it).
  absl::Status Connect(absl::Duration timeout);
  // Forgets every session of the current connection (the member is down:
  // they are gone or unusable); sessions in use are dropped when released.
  void Disconnect();

  const std::string& name() const { return config_.name; }
  const MemberConfig& config() const { return config_; }
  CK_FUNCTION_LIST* fn() const { return library_->fn(); }
  CK_SLOT_ID slot() const { return slot_; }
  CallExecutor& executor() { return executor_; }

  // Runs `call` on a worker with a deadline; kMemberTimedOut if it overran
  // (it keeps running; `state` stays alive with it). `session` is the member
  // session the call uses, if any: it is not closed while the call runs, also
  // after the caller gave up on it — a hung call released later must not
  // meet a session closed under it (SoftHSM frees the session's operation
  // state while the call still reads it).
  template <typename State>
  CK_RV Invoke(absl::Duration timeout, std::shared_ptr<State> state,
               std::function<CK_RV(CK_FUNCTION_LIST*, State&)> call,
               CK_SESSION_HANDLE session = CK_INVALID_HANDLE) {
    auto rv = std::make_shared<CK_RV>(CKR_GENERAL_ERROR);
    CK_FUNCTION_LIST* f = fn();
    BeginUse(session);
    const bool done = executor_.Run(timeout, [this, rv, state, call, f, session] {
      *rv = call(f, *state);
      EndUse(session);
    });
    return done ? *rv : kMemberTimedOut;
  }

  // Pool bounds (DESIGN §4): `max` counts the holder session too, so the
  // member never sees more than `max` sessions from this agent.
  void ConfigurePool(uint32_t min, uint32_t max, uint32_t wait_ms, uint32_t open_timeout_ms);

  // A pooled session: an idle one, a new one while under the maximum, or
  // the first one released within the wait. CKR_DEVICE_ERROR after the wait.
  absl::StatusOr<CK_SESSION_HANDLE> Acquire();
  // Returns a session. `dirty` (an operation may still be active on it, which
  // SoftHSM leaves after errors) closes it instead of pooling it. Sessions of
  // an earlier connection are dropped.
  void Release(CK_SESSION_HANDLE session, bool dirty);

  // Sessions open now (pooled, in use and the holder), for status and tests.
  uint32_t open_sessions();

  // The holder session, for creating objects; calls on it are serialised.
  CK_SESSION_HANDLE holder() const { return holder_; }
  absl::Mutex& holder_mutex() { return holder_mu_; }

  // Load and health, read by routing and reported by hsmuxctl/metrics.
  std::atomic<int> inflight{0};
  std::atomic<uint64_t> calls{0};
  std::atomic<uint64_t> failovers{0};   // calls moved off this member
  std::atomic<uint64_t> replays{0};     // multi-part operations replayed onto it
  std::atomic<uint64_t> pool_waits{0};  // Acquire calls that found every session busy
  // Call latency histogram (microseconds), read by the metrics endpoint.
  static constexpr double kLatencyBucketsUs[] = {100,  250,   500,   1000,   2500,
                                                 5000, 10000, 25000, 100000, 1000000};
  static constexpr size_t kLatencyBuckets = sizeof(kLatencyBucketsUs) / sizeof(double);
  std::array<std::atomic<uint64_t>, kLatencyBuckets + 1> latency_counts{};
  std::atomic<uint64_t> latency_sum_us{0};
  void RecordLatency(uint64_t us) {
    size_t b = 0;
    while (b<kLatencyBuckets&& static_cast<double>(us)> kLatencyBucketsUs[b]) ++b;
    latency_counts[b].fetch_add(1);
    latency_sum_us.fetch_add(us);
  }
  std::atomic<bool> healthy{false};
  std::atomic<bool> drained{false};  // taken out by an operator
  // Unix ms since recovery first found calls from before the member was
  // taken out still running in it (0: none); see Group::Recover.
  std::atomic<int64_t> busy_since_ms{0};
  uint32_t weight = 1;

  // The member's mechanisms and their info, in the member's own order.
  absl::StatusOr<std::vector<std::pair<CK_MECHANISM_TYPE, CK_MECHANISM_INFO>>> Mechanisms() const;

  // Why the member is down, for status ("" when up).
  std::string down_reason();
  void set_down_reason(std::string why);

 private:
  const MemberConfig config_;
  std::shared_ptr<MemberLibrary> library_;
  CallExecutor executor_;
  CK_SLOT_ID slot_ = 0;
  CK_SESSION_HANDLE holder_ = CK_INVALID_HANDLE;
  absl::Mutex holder_mu_;

  // Sessions a call is running on, and those to close when it returns.
  void BeginUse(CK_SESSION_HANDLE session);
  void EndUse(CK_SESSION_HANDLE session);
  void CloseWhenIdle(CK_SESSION_HANDLE session);
  absl::Mutex use_mu_;
  std::map<CK_SESSION_HANDLE, int> in_use_ ABSL_GUARDED_BY(use_mu_);
  std::set<CK_SESSION_HANDLE> closing_ ABSL_GUARDED_BY(use_mu_);

  absl::Mutex pool_mu_;
  std::vector<CK_SESSION_HANDLE> idle_ ABSL_GUARDED_BY(pool_mu_);
  std::set<CK_SESSION_HANDLE> current_ ABSL_GUARDED_BY(pool_mu_);  // this connection's
  uint32_t open_ ABSL_GUARDED_BY(pool_mu_) = 0;  // pooled + in use, not the holder
  uint32_t pool_min_ = 2;
  uint32_t pool_max_ = 16;  // including the holder
  uint32_t pool_wait_ms_ = 5000;
  uint32_t open_timeout_ms_ = 5000;  // one C_OpenSession, like any call
  std::string down_reason_ ABSL_GUARDED_BY(pool_mu_) = "not connected";
};

// Counts one call to a member while it runs (routing reads `inflight`).
class InFlight {
 public:
  explicit InFlight(Member* m) : m_(m), start_(std::chrono::steady_clock::now()) {
    m_->inflight.fetch_add(1);
    m_->calls.fetch_add(1);
  }
  ~InFlight() {
    m_->inflight.fetch_sub(1);
    m_->RecordLatency(static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                                std::chrono::steady_clock::now() - start_)
                                                .count()));
  }
  InFlight(const InFlight&) = delete;
  InFlight& operator=(const InFlight&) = delete;

 private:
  Member* m_;
  std::chrono::steady_clock::time_point start_;
};

// Scoped lease of a pooled session.
class PooledSession {
 public:
  PooledSession(Member* member, CK_SESSION_HANDLE h) : member_(member), h_(h) {}
  ~PooledSession() {
    if (member_ != nullptr) member_->Release(h_, dirty_);
  }
  PooledSession(const PooledSession&) = delete;
  PooledSession& operator=(const PooledSession&) = delete;
  CK_SESSION_HANDLE get() const { return h_; }
  void MarkDirty() { dirty_ = true; }

 private:
  Member* member_;
  CK_SESSION_HANDLE h_;
  bool dirty_ = false;
};

}  // namespace hsmux::agent
