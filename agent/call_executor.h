// Runs vendor library calls on worker threads so that a caller can stop
// waiting for one (DESIGN §5: "a hung vendor call never blocks other
// clients"). A call that overruns its deadline keeps its worker until the
// library returns; the task must therefore own everything it touches
// (capture by value or shared_ptr, never references to the caller's stack).
#pragma once

#include <deque>
#include <functional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace hsmux::agent {

class CallExecutor {
 public:
  explicit CallExecutor(std::string name) : name_(std::move(name)) {}
  CallExecutor(const CallExecutor&) = delete;
  CallExecutor& operator=(const CallExecutor&) = delete;

  // Runs `task` and waits for it at most `timeout`. True if it finished.
  bool Run(absl::Duration timeout, std::function<void()> task);
  // Runs `task` without waiting for it.
  void Post(std::function<void()> task);

  // Workers blocked in a call right now (hung calls show up here).
  int busy();

 private:
  void Worker();

  const std::string name_;
  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  int threads_ ABSL_GUARDED_BY(mu_) = 0;
  int idle_ ABSL_GUARDED_BY(mu_) = 0;
  // Hung calls each hold a worker; past this many, new calls queue.
  static constexpr int kMaxThreads = 256;
};

}  // namespace hsmux::agent
