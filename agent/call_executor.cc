#include "call_executor.h"

#include <memory>
#include <thread>

#include "absl/synchronization/notification.h"

namespace hsmux::agent {

void CallExecutor::Post(std::function<void()> task) {
  {
    absl::MutexLock lock(&mu_);
    if (!idle_.empty()) {
      Slot* slot = idle_.back();
      idle_.pop_back();
      slot->task = std::move(task);
      slot->wake.Signal();
      return;
    }
    if (threads_ >= kMaxThreads) {
      queue_.push_back(std::move(task));
      return;
    }
    ++threads_;
  }
  // Workers live as long as the agent; they are never joined.
  std::thread([this, first = std::move(task)]() mutable { Worker(std::move(first)); }).detach();
}

bool CallExecutor::Run(absl::Duration timeout, std::function<void()> task) {
  auto done = std::make_shared<absl::Notification>();
  Post([done, task = std::move(task)] {
    task();
    done->Notify();
  });
  return done->WaitForNotificationWithTimeout(timeout);
}

void CallExecutor::Worker(std::function<void()> first) {
  Slot slot;
  std::function<void()> task = std::move(first);
  while (true) {
    task();
    task = nullptr;
    absl::MutexLock lock(&mu_);
    if (!queue_.empty()) {
      task = std::move(queue_.front());
      queue_.pop_front();
      continue;
    }
    idle_.push_back(&slot);
    while (!slot.task) slot.wake.Wait(&mu_);
    task = std::move(slot.task);
    slot.task = nullptr;
  }
}

int CallExecutor::busy() {
  absl::MutexLock lock(&mu_);
  return threads_ - static_cast<int>(idle_.size());
}

}  // namespace hsmux::agent
