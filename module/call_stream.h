// One CallStream per host thread (docs/decisions/0012-call-streams.md): a
// Cryptoki call costs one message each way on an open HTTP/2 stream instead
// of a new RPC. Each thread's stream has its own completion queue, so every
// message keeps its own deadline (a hung agent still answers
// CKR_DEVICE_ERROR within call_ms). A stream is closed when its thread ends,
// and all of them at C_Finalize.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "hsmux/v1/cryptoki.grpc.pb.h"

namespace hsmux::module {

class ThreadStream;

class CallStreams {
 public:
  struct Result {
    grpc::Status status;
    // False when the agent cannot have seen the request (the stream broke
    // before it was written, or the agent refused the stream before reading
    // it): the request may be sent again.
    bool sent = false;
    // The agent refused the stream (its stream limit): this thread sends
    // unary calls for a while.
    bool refused = false;
  };

  CallStreams();
  ~CallStreams();
  CallStreams(const CallStreams&) = delete;
  CallStreams& operator=(const CallStreams&) = delete;

  // Whether the calling thread should use its stream now (not after a
  // refusal in the last kUnaryAfterRefusal).
  bool UseStream() const;

  // Sends `request` on the calling thread's stream over `stub`, opening one
  // when the thread has none (or one over an older stub), and waits for the
  // answer until `deadline`.
  Result Exchange(const std::shared_ptr<v1::Cryptoki::Stub>& stub, const v1::CallRequest& request,
                  std::chrono::system_clock::time_point deadline, v1::CallResponse* response);

  // Cancels every stream (C_Finalize); later exchanges are refused.
  void CloseAll();

  // Streams opened so far, and how many of them the agent refused.
  uint64_t opened() const;
  uint64_t refused() const;

 private:
  const uint64_t id_;
  mutable absl::Mutex mu_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t opened_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t refused_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::weak_ptr<ThreadStream>> streams_ ABSL_GUARDED_BY(mu_);
};

}  // namespace hsmux::module
