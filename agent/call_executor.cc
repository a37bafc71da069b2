#include "call_executor.h"

#include <memory>
#include <thread>

#include "absl/synchronization/notification.h"

namespace hsmux::agent {

void CallExecutor::Post(std::function<void()> task) {
  bool spawn = false;
  {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(task));
    if (static_cast<int>(queue_.size()) > idle_ && threads_ < kMaxThreads) {
      ++threads_;
      spawn = true;
    }
  }
  if (spawn) {
    // Workers live as long as the agent; they are never joined.
    std::thread([this] { Worker(); }).detach();
  }
}

bool CallExecutor::Run(absl::Duration timeout, std::function<void()> task) {
  auto done = std::make_shared<absl::Notification>();
  Post([done, task = std::move(task)] {
    task();
    done->Notify();
  });
  return done->WaitForNotificationWithTimeout(timeout);
}

void CallExecutor::Worker() {
  while (true) {
    std::function<void()> task;
    {
      absl::MutexLock lock(&mu_);
      ++idle_;
      mu_.Await(absl::Condition(
          +[](std::deque<std::function<void()>>* q) { return !q->empty(); }, &queue_));
      --idle_;
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

int CallExecutor::busy() {
  absl::MutexLock lock(&mu_);
  return threads_ - idle_;
}

}  // namespace hsmux::agent
