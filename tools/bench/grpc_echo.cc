// hsmux-grpc-echo: the transport floor for hsmux-bench. A unary mTLS echo with
// the channel settings of the module (module/agent_client.cc) and the server
// settings of the agent (agent/main.cc: sync server, client certificate
// required, 16 MiB messages).
//
//   hsmux-grpc-echo server --listen 127.0.0.1:0 --ca CA --cert CERT --key KEY
//       [--server-api sync|callback] [--hand-off 0|1]
//       --hand-off 1 builds every reply on a worker thread, as the agent runs
//       each member call on a member worker: with sync, the handler thread
//       waits for the worker (the agent today); with callback, the worker
//       starts the write itself (no thread waits; decision 0013).
//       prints "echo: serving on PORT", serves until SIGTERM/SIGINT; the
//       listen address may be unix:PATH (then PORT is 0)
//   hsmux-grpc-echo client --target localhost:PORT --ca CA --cert CERT --key KEY
//       [--server-name localhost] [--threads 1] [--seconds 3] [--warmup 0.5]
//       [--request-bytes 100] [--reply-bytes 100] [--shape unary|stream]
//       prints one BENCH line (op "echo"); threads share one channel, as the
//       module's threads share its one channel.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "echo.grpc.pb.h"

namespace {

using Clock = std::chrono::steady_clock;
using hsmux::bench::v1::Echo;
using hsmux::bench::v1::EchoMessage;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "hsmux-grpc-echo: cannot read %s\n", path.c_str());
    std::exit(2);
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A few worker threads taking tasks from one queue: the stand-in for the
// agent's member workers (agent/call_executor.h).
class Workers {
 public:
  explicit Workers(int n) {
    for (int i = 0; i < n; ++i) threads_.emplace_back([this] { Loop(); });
  }
  ~Workers() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  void Post(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      tasks_.push_back(std::move(task));
    }
    cv_.notify_one();
  }
  // Runs `task` on a worker and waits for it, as Member::Invoke does.
  void Run(std::function<void()> task) {
    std::mutex m;
    std::condition_variable done_cv;
    bool done = false;
    Post([&] {
      task();
      std::lock_guard<std::mutex> lock(m);
      done = true;
      done_cv.notify_one();
    });
    std::unique_lock<std::mutex> lock(m);
    done_cv.wait(lock, [&] { return done; });
  }

 private:
  void Loop() {
    while (true) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stop_ || !tasks_.empty(); });
        if (stop_) return;
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

// The echo's answer: `reply_bytes` bytes.
void Answer(const EchoMessage& req, EchoMessage* resp) {
  resp->mutable_payload()->assign(req.reply_bytes(), 'r');
}

// Callback server: `reply` runs on a worker if there are workers, else here
// on gRPC's thread.
void PostOrRun(Workers* workers, std::function<void()> reply) {
  if (workers != nullptr) {
    workers->Post(std::move(reply));
  } else {
    reply();
  }
}

class EchoService final : public Echo::Service {
 public:
  explicit EchoService(Workers* workers) : workers_(workers) {}

 private:
  grpc::Status Call(grpc::ServerContext*, const EchoMessage* req, EchoMessage* resp) override {
    Reply(*req, resp);
    return grpc::Status::OK;
  }
  grpc::Status Stream(grpc::ServerContext*,
                      grpc::ServerReaderWriter<EchoMessage, EchoMessage>* stream) override {
    EchoMessage req, resp;
    while (stream->Read(&req)) {
      Reply(req, &resp);
      if (!stream->Write(resp)) break;
    }
    return grpc::Status::OK;
  }
  void Reply(const EchoMessage& req, EchoMessage* resp) {
    auto build = [&] { Answer(req, resp); };
    if (workers_ != nullptr) {
      workers_->Run(build);
    } else {
      build();
    }
  }
  Workers* workers_;
};

// One stream on the callback API: a read is answered by a write, either
// from gRPC's own thread or, with workers, from the worker that built it.
class CallbackEchoStream final : public grpc::ServerBidiReactor<EchoMessage, EchoMessage> {
 public:
  explicit CallbackEchoStream(Workers* workers) : workers_(workers) { StartRead(&req_); }

 private:
  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status::OK);
      return;
    }
    PostOrRun(workers_, [this] {
      Answer(req_, &resp_);
      StartWrite(&resp_);
    });
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status::OK);
      return;
    }
    StartRead(&req_);
  }
  void OnDone() override { delete this; }
  Workers* workers_;
  EchoMessage req_, resp_;
};

// The echo on gRPC's callback API: no handler thread of ours; with workers,
// the worker that builds the reply also finishes the call or starts the write.
class CallbackEchoService final : public Echo::CallbackService {
 public:
  explicit CallbackEchoService(Workers* workers) : workers_(workers) {}

 private:
  grpc::ServerUnaryReactor* Call(grpc::CallbackServerContext* ctx, const EchoMessage* req,
                                 EchoMessage* resp) override {
    auto* reactor = ctx->DefaultReactor();
    PostOrRun(workers_, [req, resp, reactor] {
      Answer(*req, resp);
      reactor->Finish(grpc::Status::OK);
    });
    return reactor;
  }
  grpc::ServerBidiReactor<EchoMessage, EchoMessage>* Stream(grpc::CallbackServerContext*) override {
    return new CallbackEchoStream(workers_);
  }
  Workers* workers_;
};

std::atomic<bool> g_stop{false};

int Server(const std::string& listen, const std::string& ca, const std::string& cert,
           const std::string& key, const std::string& api, bool hand_off) {
  grpc::SslServerCredentialsOptions ssl(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  ssl.pem_root_certs = ReadFile(ca);
  ssl.pem_key_cert_pairs.push_back({ReadFile(key), ReadFile(cert)});
  std::unique_ptr<Workers> workers;
  if (hand_off) workers = std::make_unique<Workers>(4);
  EchoService service(workers.get());
  CallbackEchoService callback_service(workers.get());
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, grpc::SslServerCredentials(ssl), &port);
  if (api == "callback") {
    builder.RegisterService(&callback_service);
  } else {
    builder.RegisterService(&service);
  }
  builder.SetMaxReceiveMessageSize(16 << 20);
  builder.SetMaxSendMessageSize(16 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) {
    std::fprintf(stderr, "hsmux-grpc-echo: cannot listen on %s\n", listen.c_str());
    return 1;
  }
  std::printf("echo: serving on %d\n", port);
  std::fflush(stdout);
  signal(SIGTERM, [](int) { g_stop = true; });
  signal(SIGINT, [](int) { g_stop = true; });
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  return 0;
}

int Client(const std::string& target, const std::string& ca, const std::string& cert,
           const std::string& key, const std::string& server_name, int threads, double seconds,
           double warmup, int request_bytes, int reply_bytes, const std::string& shape) {
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ReadFile(ca);
  ssl.pem_cert_chain = ReadFile(cert);
  ssl.pem_private_key = ReadFile(key);
  grpc::ChannelArguments args;  // as module/agent_client.cc
  if (!server_name.empty()) args.SetSslTargetNameOverride(server_name);
  args.SetMaxReceiveMessageSize(16 << 20);
  args.SetMaxSendMessageSize(16 << 20);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  auto channel = grpc::CreateCustomChannel(target, grpc::SslCredentials(ssl), args);
  auto stub = Echo::NewStub(channel);

  std::atomic<int> phase{0};
  std::atomic<uint64_t> errors{0};
  std::vector<std::vector<uint32_t>> lat(threads);
  std::vector<std::thread> ts;
  for (int i = 0; i < threads; ++i) {
    ts.emplace_back([&, i] {
      EchoMessage req;
      req.set_payload(std::string(request_bytes, 'q'));
      req.set_reply_bytes(reply_bytes);
      lat[i].reserve(1 << 16);
      // A stream per thread, as the module keeps one. It waits for the
      // channel to connect (the first calls fall in the warm-up), and a
      // stream that breaks is counted as an error and replaced, as the module
      // replaces it.
      std::unique_ptr<grpc::ClientContext> stream_ctx;
      std::unique_ptr<grpc::ClientReaderWriter<EchoMessage, EchoMessage>> stream;
      auto open_stream = [&] {
        stream.reset();
        stream_ctx = std::make_unique<grpc::ClientContext>();
        stream_ctx->set_wait_for_ready(true);
        stream_ctx->set_deadline(std::chrono::system_clock::now() +
                                 std::chrono::duration_cast<std::chrono::seconds>(
                                     std::chrono::duration<double>(warmup + seconds + 10)));
        stream = stub->Stream(stream_ctx.get());
      };
      if (shape == "stream") open_stream();
      while (true) {
        const int p0 = phase.load();
        if (p0 == 2) break;
        const auto t0 = Clock::now();
        EchoMessage resp;
        grpc::Status st;
        if (stream != nullptr) {
          if (!stream->Write(req) || !stream->Read(&resp)) {
            st = stream->Finish();  // the stream is over: its status says why
            if (st.ok())
              st = grpc::Status(grpc::StatusCode::UNKNOWN, "the server ended the stream");
            open_stream();
          }
        } else {
          grpc::ClientContext ctx;  // a deadline per call, as the module sets
          ctx.set_wait_for_ready(true);
          ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
          st = stub->Call(&ctx, req, &resp);
        }
        const auto t1 = Clock::now();
        if (!st.ok() || static_cast<int>(resp.payload().size()) != reply_bytes) {
          if (errors++ == 0)
            std::fprintf(stderr, "hsmux-grpc-echo: call failed: status %d: %s\n",
                         static_cast<int>(st.error_code()), st.error_message().c_str());
          continue;
        }
        if (p0 == 1 && phase.load() == 1)
          lat[i].push_back(static_cast<uint32_t>(
              std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count()));
      }
      if (stream != nullptr) {
        stream->WritesDone();
        (void)stream->Finish();
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(warmup));
  const auto m0 = Clock::now();
  phase = 1;
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  phase = 2;
  const auto m1 = Clock::now();
  for (auto& t : ts) t.join();
  std::vector<uint32_t> all;
  for (auto& l : lat) all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  auto pct = [&](double q) {
    if (all.empty()) return 0.0;
    size_t i = std::min(all.size() - 1, static_cast<size_t>(q * (all.size() - 1) + 0.5));
    return all[i] / 1000.0;
  };
  double mean = 0;
  for (uint32_t v : all) mean += v / 1000.0;
  if (!all.empty()) mean /= all.size();
  const double elapsed = std::chrono::duration<double>(m1 - m0).count();
  std::printf("grpc-echo threads=%d ops=%zu %.1f ops/s p50 %.1f us p99 %.1f us errors %llu\n",
              threads, all.size(), all.size() / elapsed, pct(0.5), pct(0.99),
              static_cast<unsigned long long>(errors.load()));
  std::printf(
      "BENCH "
      "{\"module\":\"grpc-echo-%s\",\"token\":\"\",\"op\":\"echo\",\"threads\":%d,\"seconds\":%.2f,"
      "\"ops\":%zu,\"errors\":%llu,\"ops_per_s\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"mean_us\":%"
      ".1f,"
      "\"round_trips_per_op\":1,\"request_bytes\":%d,\"reply_bytes\":%d}\n",
      shape.c_str(), threads, elapsed, all.size(), static_cast<unsigned long long>(errors.load()),
      all.size() / elapsed, pct(0.5), pct(0.99), mean, request_bytes, reply_bytes);
  return (errors == 0 && !all.empty()) ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: hsmux-grpc-echo server|client [options] (see the source header)\n");
    return 2;
  }
  const std::string mode = argv[1];
  std::string listen = "127.0.0.1:0", target, ca, cert, key, server_name = "localhost";
  std::string shape = "unary", api = "sync", hand_off = "0";
  int threads = 1, request_bytes = 100, reply_bytes = 100;
  double seconds = 3, warmup = 0.5;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "hsmux-grpc-echo: %s needs a value\n", a.c_str());
      return 2;
    }
    std::string v = argv[++i];
    if (a == "--listen")
      listen = v;
    else if (a == "--target")
      target = v;
    else if (a == "--ca")
      ca = v;
    else if (a == "--cert")
      cert = v;
    else if (a == "--key")
      key = v;
    else if (a == "--server-name")
      server_name = v;
    else if (a == "--threads")
      threads = std::stoi(v);
    else if (a == "--seconds")
      seconds = std::stod(v);
    else if (a == "--warmup")
      warmup = std::stod(v);
    else if (a == "--request-bytes")
      request_bytes = std::stoi(v);
    else if (a == "--reply-bytes")
      reply_bytes = std::stoi(v);
    else if (a == "--shape")
      shape = v;
    else if (a == "--server-api")
      api = v;
    else if (a == "--hand-off")
      hand_off = v;
    else {
      std::fprintf(stderr, "hsmux-grpc-echo: unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  if (ca.empty() || cert.empty() || key.empty()) {
    std::fprintf(stderr, "hsmux-grpc-echo: --ca, --cert and --key are required\n");
    return 2;
  }
  if ((shape != "unary" && shape != "stream") || (api != "sync" && api != "callback") ||
      (hand_off != "0" && hand_off != "1")) {
    std::fprintf(stderr,
                 "hsmux-grpc-echo: --shape unary|stream, --server-api sync|callback, "
                 "--hand-off 0|1\n");
    return 2;
  }
  int rc = 2;
  if (mode == "server") {
    rc = Server(listen, ca, cert, key, api, hand_off == "1");
  } else if (mode == "client" && !target.empty()) {
    rc = Client(target, ca, cert, key, server_name, threads, seconds, warmup, request_bytes,
                reply_bytes, shape);
  } else {
    std::fprintf(stderr, "hsmux-grpc-echo: server, or client with --target\n");
  }
  // Leave without exit handlers. gRPC 1.51's own threads outlive the last
  // channel and server (its event engine holds a grpc_init of its own; the
  // module waits for them in C_Finalize, module/module_state.cc). At exit,
  // LeakSanitizer would report their per-thread OpenSSL state, and in the
  // ASan build it also drops this process's buffered output.
  std::fflush(stdout);
  std::fflush(stderr);
  _exit(rc);
}
