#include "call_stream.h"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>

#include "wire/call_stream.h"

namespace hsmux::module {
namespace {

// After the agent refused a stream, the thread sends unary calls this long
// before asking again.
constexpr std::chrono::seconds kUnaryAfterRefusal(10);

// Completion-queue tags of the one read and one write a stream has out.
void* const kWriteTag = reinterpret_cast<void*>(1);
void* const kReadTag = reinterpret_cast<void*>(2);
void* const kFinishTag = reinterpret_cast<void*>(3);

uint64_t NextId() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1);
}

bool HasRefusedTrailer(const grpc::ClientContext& ctx) {
  const auto& trailers = ctx.GetServerTrailingMetadata();
  return trailers.find(wire::kStreamRefusedTrailer) != trailers.end();
}

}  // namespace

// One gRPC stream for its whole life: opened at the first exchange, dead
// after the first failure (the thread then opens a new one).
class ThreadStream {
 public:
  explicit ThreadStream(std::shared_ptr<v1::Cryptoki::Stub> stub)
      : stub_id_(stub.get()), stub_(std::move(stub)) {}
  ~ThreadStream() { Close(); }
  ThreadStream(const ThreadStream&) = delete;
  ThreadStream& operator=(const ThreadStream&) = delete;

  // The stub the stream was opened on (compared only, never used).
  const v1::Cryptoki::Stub* stub() const { return stub_id_; }

  bool alive() const {
    absl::MutexLock lock(&mu_);
    return !closed_;
  }

  CallStreams::Result Exchange(const v1::CallRequest& request,
                               std::chrono::system_clock::time_point deadline,
                               v1::CallResponse* response) {
    absl::MutexLock lock(&mu_);
    if (closed_) return {grpc::Status(grpc::StatusCode::UNAVAILABLE, "stream closed"), false};
    if (rw_ == nullptr) {
      ctx_ = std::make_unique<grpc::ClientContext>();
      // The stream's headers go out with its first message: opening it
      // costs no round trip of its own.
      ctx_->set_initial_metadata_corked(true);
      cq_ = std::make_unique<grpc::CompletionQueue>();
      rw_ = stub_->PrepareAsyncCallStream(ctx_.get(), cq_.get());
      rw_->StartCall(nullptr);  // corked: no tag is delivered for the start
    }
    rw_->Write(request, kWriteTag);
    rw_->Read(response, kReadTag);
    pending_ = 2;
    bool wrote = false;
    bool read = false;
    while (pending_ > 0) {
      void* tag = nullptr;
      bool ok = false;
      const auto got = cq_->AsyncNext(&tag, &ok, deadline);
      if (got != grpc::CompletionQueue::GOT_EVENT) {
        // No answer in time: give the stream up. The agent may have run the
        // call, so it is not sent again.
        TearDownLocked(/*cancel=*/true);
        return {grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "no answer in time"), true};
      }
      --pending_;
      if (tag == kWriteTag) wrote = ok;
      if (tag == kReadTag) read = ok;
    }
    if (wrote && read) return {grpc::Status::OK, true};
    // The stream ended: its status says why (not cancelled here, which could
    // replace the agent's status with CANCELLED).
    grpc::Status status = TearDownLocked(/*cancel=*/read);
    if (status.ok()) status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "stream ended");
    const bool refused = HasRefusedTrailer(*ctx_);
    return {status, wrote && !refused, refused};
  }

  // Cancels the stream, waits for gRPC to give its operations back, and lets
  // go of the channel, so that C_Finalize can tear gRPC down while the
  // thread (and this object, in its thread's slot) lives on.
  void Close() {
    absl::MutexLock lock(&mu_);
    if (rw_ != nullptr) TearDownLocked(/*cancel=*/true);
    closed_ = true;
    ctx_.reset();
    stub_.reset();
  }

 private:
  // Ends the stream and returns its status: cancels it first when it may
  // still be open (the agent's handler then returns and frees its thread).
  // Keeps ctx_ for the trailers; the stream cannot be used again.
  grpc::Status TearDownLocked(bool cancel) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (cancel) ctx_->TryCancel();
    grpc::Status status;
    rw_->Finish(&status, kFinishTag);
    ++pending_;
    cq_->Shutdown();
    void* tag = nullptr;
    bool ok = false;
    while (cq_->Next(&tag, &ok)) {
    }
    pending_ = 0;
    rw_.reset();
    cq_.reset();
    closed_ = true;
    return status;
  }

  mutable absl::Mutex mu_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  int pending_ ABSL_GUARDED_BY(mu_) = 0;
  const v1::Cryptoki::Stub* const stub_id_;
  std::shared_ptr<v1::Cryptoki::Stub> stub_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<grpc::ClientContext> ctx_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<grpc::CompletionQueue> cq_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<grpc::ClientAsyncReaderWriter<v1::CallRequest, v1::CallResponse>> rw_
      ABSL_GUARDED_BY(mu_);
};

namespace {

// The calling thread's stream. Deleted when the thread ends, which closes
// the stream, unless the stream is a forked child's copy of its parent's,
// which belongs to the parent's gRPC and is left alone.
struct ThreadSlot {
  uint64_t owner = 0;  // CallStreams::id_ the stream belongs to
  pid_t pid = 0;
  std::shared_ptr<ThreadStream> stream;
  std::chrono::steady_clock::time_point unary_until{};

  ~ThreadSlot() { Forget(); }

  void Forget() {
    if (stream != nullptr && pid != getpid()) {
      new std::shared_ptr<ThreadStream>(std::move(stream));  // the parent's: leaked
    }
    stream.reset();
  }
};

// A pthread key rather than a thread_local: the module is dlopen'ed, so a
// thread_local would live in dynamic TLS, where GCC 12's LeakSanitizer
// crashes scanning threads at exit ("Tracer caught signal 11"). The key's
// destructor runs when a thread ends (the module is linked -z nodelete, so
// it is still mapped then); the main thread's slot is closed by C_Finalize
// or the exit handler instead (CloseAll) and stays with the process.
pthread_key_t SlotKey() {
  static const pthread_key_t key = [] {
    pthread_key_t k;
    pthread_key_create(&k, [](void* slot) { delete static_cast<ThreadSlot*>(slot); });
    return k;
  }();
  return key;
}

ThreadSlot& CurrentSlot() {
  auto* slot = static_cast<ThreadSlot*>(pthread_getspecific(SlotKey()));
  if (slot == nullptr) {
    slot = new ThreadSlot;
    pthread_setspecific(SlotKey(), slot);
  }
  return *slot;
}

}  // namespace

CallStreams::CallStreams() : id_(NextId()) {}

CallStreams::~CallStreams() { CloseAll(); }

bool CallStreams::UseStream() const {
  const ThreadSlot& slot = CurrentSlot();
  return slot.owner != id_ || std::chrono::steady_clock::now() >= slot.unary_until;
}

CallStreams::Result CallStreams::Exchange(const std::shared_ptr<v1::Cryptoki::Stub>& stub,
                                          const v1::CallRequest& request,
                                          std::chrono::system_clock::time_point deadline,
                                          v1::CallResponse* response) {
  ThreadSlot& slot = CurrentSlot();
  if (slot.owner != id_ || slot.pid != getpid() || slot.stream == nullptr ||
      slot.stream->stub() != stub.get() || !slot.stream->alive()) {
    slot.Forget();
    absl::MutexLock lock(&mu_);
    if (closed_) return {grpc::Status(grpc::StatusCode::UNAVAILABLE, "finalized"), false};
    slot.owner = id_;
    slot.pid = getpid();
    slot.stream = std::make_shared<ThreadStream>(stub);
    streams_.erase(std::remove_if(streams_.begin(), streams_.end(),
                                  [](const std::weak_ptr<ThreadStream>& s) { return s.expired(); }),
                   streams_.end());
    streams_.push_back(slot.stream);
    ++opened_;
  }
  std::shared_ptr<ThreadStream> stream = slot.stream;
  Result result = stream->Exchange(request, deadline, response);
  if (result.refused) {
    slot.unary_until = std::chrono::steady_clock::now() + kUnaryAfterRefusal;
    absl::MutexLock lock(&mu_);
    ++refused_;
  }
  return result;
}

void CallStreams::CloseAll() {
  std::vector<std::shared_ptr<ThreadStream>> open;
  {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    for (const auto& weak : streams_) {
      if (auto s = weak.lock()) open.push_back(std::move(s));
    }
    streams_.clear();
  }
  // A thread still in a call holds its stream's lock until the call's
  // deadline; Close waits for it.
  for (const auto& s : open) s->Close();
}

uint64_t CallStreams::opened() const {
  absl::MutexLock lock(&mu_);
  return opened_;
}

uint64_t CallStreams::refused() const {
  absl::MutexLock lock(&mu_);
  return refused_;
}

}  // namespace hsmux::module
