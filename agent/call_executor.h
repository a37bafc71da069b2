// Runs vendor library calls on worker threads so that a caller can stop
// waiting for one (DESIGN §5: "a hung vendor call never blocks other
// clients"). A call that overruns its deadline keeps its worker until the
// library returns; the task must therefore own everything it touches
// (capture by value or shared_ptr, never references to the caller's stack).
//
// The hand-off is on every data call's path, so it wakes exactly one idle
// worker (its own condition variable) rather than every idle worker of the
// member; see docs/decisions/0011-agent-hot-path.md.
#pragma once

#include <deque>
#include <functional>
#include <string>
#include <vector>

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
  // One worker thread's mailbox: Post puts a task here and signals `wake`.
  struct Slot {
    absl::CondVar wake;
    std::function<void()> task;
  };
  void Worker(std::function<void()> first);

  const std::string name_;
  absl::Mutex mu_;
  // Idle workers, most recently idle last (it is the one woken next: its
  // stack and caches are warm).
  std::vector<Slot*> idle_ ABSL_GUARDED_BY(mu_);
  // Tasks waiting for a worker: only when kMaxThreads workers are all busy.
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  int threads_ ABSL_GUARDED_BY(mu_) = 0;
  // Hung calls each hold a worker; past this many, new calls queue.
  static constexpr int kMaxThreads = 256;
};

}  // namespace hsmux::agent
