#include "module_state.h"

#include <dlfcn.h>
#include <grpc/event_engine/event_engine.h>
#include <grpc/fork.h>
#include <grpc/grpc.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <new>
#include <thread>

#include "log.h"
#include "stats_file.h"
#include "wire/errors.h"

// Exported by Debian's libgpr: turns on gRPC's fork support before grpc_init
// reads it (the same switch as GRPC_ENABLE_FORK_SUPPORT=1).
void gpr_global_config_set_grpc_enable_fork_support(bool value);

// Exported by Debian's libgrpc (1.51; the header, default_event_engine.h, is
// not installed): the process-wide EventEngine, created on first use and
// destroyed when its last reference goes (gRPC itself keeps only a weak_ptr).
namespace grpc_event_engine::experimental {
std::shared_ptr<EventEngine> GetDefaultEventEngine();
}  // namespace grpc_event_engine::experimental

namespace hsmux::module {
namespace {

// The current state; replaced (the old one leaked) in a forked child.
std::atomic<ModuleState*>& StatePointer() {
  static auto* state = new std::atomic<ModuleState*>(nullptr);
  return *state;
}

using grpc_event_engine::experimental::EventEngine;

// The EventEngine of a C_Finalize that could not tear gRPC down because
// something of the module's still held the channel (a host thread's call
// stream, a call in flight): kept, with the pid that owns it, so that exit
// (FinalizeAtExit) or the next C_Initialize finishes the job. A forked child
// abandons its parent's (ResetInChild).
struct Lingering {
  std::mutex mu;
  std::shared_ptr<EventEngine> engine;
  pid_t pid = 0;
};
Lingering& LingeringEngine() {
  static auto* lingering = new Lingering;
  return *lingering;
}

// Waits until `engine` holds the last reference to the EventEngine: true, or
// false after `limit` in all, or after `stall` without any reference going.
bool WaitUntilLast(const std::shared_ptr<EventEngine>& engine, std::chrono::milliseconds limit,
                   std::chrono::milliseconds stall) {
  const auto start = std::chrono::steady_clock::now();
  auto last_change = start;
  long last = engine.use_count();
  while (engine.use_count() > 1) {
    const auto now = std::chrono::steady_clock::now();
    const long n = engine.use_count();
    if (n != last) {
      last = n;
      last_change = now;
    }
    if (now - start >= limit || now - last_change >= stall) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// A host that exits without C_Finalize (Java's SunPKCS11 never calls it):
// finalize here, before exit() destroys gRPC's statics and OpenSSL's state
// under gRPC's running threads (docs/sanitizers.md, "Exit"). Also finishes a
// teardown that C_Finalize had to leave (ReleaseGrpc): by now Finalize has
// closed every call stream of the instance (CloseAll), and a call that was in
// flight on another thread has had time to end and let go of the channel.
void FinalizeAtExit() {
  (void)ModuleState::Get().Finalize();
  std::shared_ptr<EventEngine> engine;
  {
    Lingering& l = LingeringEngine();
    std::lock_guard<std::mutex> lock(l.mu);
    if (l.pid != getpid()) return;
    engine = std::move(l.engine);
  }
  if (engine == nullptr) return;
  if (!WaitUntilLast(engine, std::chrono::seconds(2), std::chrono::seconds(2))) {
    LogLine("exit: gRPC still in use by another thread; not waiting longer");
  }
  engine.reset();
}

// Once per process, at the first C_Initialize: gRPC must be told about fork()
// or a child that uses it hangs (these run in every fork of the host), and
// the exit handler above.
void InstallProcessHandlers() {
  static std::once_flag once;
  std::call_once(once, [] {
#ifdef HSMUX_STATIC_MODULE
    // The module's private OpenSSL must not read the host's OPENSSL_CONF (it
    // would load engines built for the system libcrypto). Run-once, so only in
    // the static build: in the shared build it would switch off the host's.
    // Nothing but our gRPC uses this copy, so it needs no clean-up at exit
    // either (OPENSSL_cleanup frees its locks under any thread still in it).
    OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG | OPENSSL_INIT_NO_ATEXIT, nullptr);
    OPENSSL_init_ssl(OPENSSL_INIT_NO_LOAD_CONFIG, nullptr);
    // The host's own libcrypto (if one is in its global scope; Java has none)
    // loads its config now, as it did through the shared-gRPC build, instead
    // of lazily inside the host's first operation: OpenSSL 3.0 doing that in
    // the middle of EVP_PKEY_fromdata makes pkcs11-tool 0.23 fail to export
    // EC public keys ("cannot create EVP_PKEY"). Only the timing changes.
    using OpensslInit = int (*)(uint64_t, const void*);
    if (auto host_init =
            reinterpret_cast<OpensslInit>(dlsym(RTLD_DEFAULT, "OPENSSL_init_crypto"))) {
      host_init(OPENSSL_INIT_LOAD_CONFIG, nullptr);
    }
#else
    // What gRPC's TLS does at the first channel, done now so that the host's
    // OpenSSL registers its atexit clean-up before our handler below: exit
    // handlers run in reverse order, so ours runs first, while OpenSSL works.
    OPENSSL_init_ssl(0, nullptr);
#endif
    gpr_global_config_set_grpc_enable_fork_support(true);
    pthread_atfork(grpc_prefork, grpc_postfork_parent, grpc_postfork_child);
    pthread_atfork(nullptr, nullptr, &ModuleState::ResetInChild);
    // Registered after gRPC's libraries were loaded (their static destructors
    // are registered at load) and after OpenSSL's handler: runs before both.
    std::atexit(&FinalizeAtExit);
  });
}

// Gives up the module's hold on gRPC (C_Finalize). When every gRPC object in
// the process is the module's (`all_ours`), gRPC is torn down here, on the
// caller's thread, before C_Finalize returns. grpc_shutdown_blocking alone
// does not do it: Debian's gRPC 1.51 PosixEventEngine holds a grpc_init of
// its own (grpc_core::InitInternally in its constructor, ShutdownInternally in
// its destructor), and the channel's subchannels, which hold the engine, are
// freed moments later on the engine's own threads. So it waits until its
// reference to the engine is the last and drops it here: ~PosixEventEngine
// joins the engine's threads, and its grpc_shutdown, the last one, shuts gRPC
// down synchronously (executor and timer threads joined), as it runs on a
// thread of ours. Otherwise the last subchannel destroys the engine on an
// engine thread, gRPC then shuts down on a detached thread of its own, and a
// host that exits right after C_Finalize runs exit()'s handlers under gRPC's
// threads (seen under ASan: SEGV in Epoll1Poller::Shutdown on gRPC's destroyed
// fork_poller_list; OpenSSL's RAND lock freed by OPENSSL_cleanup during a TLS
// handshake; LeakSanitizer reporting the per-thread DRBGs of gRPC threads that
// ended after OPENSSL_cleanup had deleted OpenSSL's thread-local keys). When
// the references stop going (something still holds the channel: a host
// thread's call stream, a call in flight) the engine is kept for exit
// (FinalizeAtExit) instead. grpc_is_initialized() cannot tell whether the
// host uses gRPC (the engine's own grpc_init keeps it true); in a host that
// does, or in a forked child holding its parent's abandoned channel, nothing
// is waited for.
void ReleaseGrpc(std::shared_ptr<EventEngine> engine, bool all_ours) {
  grpc_shutdown_blocking();
  if (engine == nullptr || !all_ours) return;
  if (WaitUntilLast(engine, std::chrono::seconds(2), std::chrono::milliseconds(200))) {
    engine.reset();  // the teardown, here
    return;
  }
  LogLine("C_Finalize: gRPC still in use after the channel was closed; teardown left to exit");
  Lingering& l = LingeringEngine();
  std::lock_guard<std::mutex> lock(l.mu);
  l.engine = std::move(engine);
  l.pid = getpid();
}

}  // namespace

ModuleState& ModuleState::Get() {
  std::atomic<ModuleState*>& p = StatePointer();
  ModuleState* state = p.load(std::memory_order_acquire);
  if (state == nullptr) {
    auto* fresh = new ModuleState;
    if (p.compare_exchange_strong(state, fresh, std::memory_order_acq_rel)) {
      state = fresh;
    } else {
      delete fresh;  // another thread won; `state` holds its pointer
    }
  }
  return *state;
}

void ModuleState::ResetInChild() {
  // The parent's state is abandoned, never touched again: its mutex may be
  // held, or waited on (the heartbeat thread's AwaitWithTimeout), by threads
  // that do not exist in the child, and unlocking it there would wake a dead
  // waiter. Its gRPC objects belong to the parent. The child starts
  // uninitialised, as after dlopen.
  StatePointer().store(new ModuleState, std::memory_order_release);
  // Likewise the parent's lingering engine. Only this thread exists now; the
  // mutex may have been held by one that does not, so it is made anew.
  Lingering& l = LingeringEngine();
  new (&l.mu) std::mutex;
  if (l.engine != nullptr) new std::shared_ptr<EventEngine>(std::move(l.engine));
  l.pid = 0;
}

absl::Status ModuleState::Initialize() {
  InstallProcessHandlers();
  absl::MutexLock lock(&mu_);
  const pid_t me = getpid();
  if (initialized_ && pid_ == me) {
    return wire::CkError(CKR_CRYPTOKI_ALREADY_INITIALIZED, "already initialised");
  }
  if (initialized_ && pid_ != me) {
    // A forked child: the parent's channel and thread are not ours. Leak them.
    new std::shared_ptr<AgentClient>(std::move(client_));
    new std::shared_ptr<grpc_event_engine::experimental::EventEngine>(std::move(engine_));
    heartbeat_.release();  // NOLINT(bugprone-unused-return-value): abandoned on purpose
    initialized_ = false;
  }
  // Nothing in this process uses gRPC but what an earlier C_Finalize left:
  // every gRPC object from here on is the module's, and Finalize may wait for
  // them (ReleaseGrpc). False in a forked child, whose parent's abandoned
  // channel holds gRPC.
  bool lingering = false;
  {
    Lingering& l = LingeringEngine();
    std::lock_guard<std::mutex> lock(l.mu);
    lingering = l.pid == me && l.engine != nullptr;
  }
  const bool grpc_all_ours = lingering || !grpc_is_initialized();
  HSMUX_ASSIGN_OR_RETURN(ModuleConfig config, LoadModuleConfig());
  SetLogFile(config.log_file);
  RouteGrpcLogs();
  auto client_or = AgentClient::Create(config);
  if (!client_or.ok()) {
    LogLine(std::string("C_Initialize: ") + std::string(client_or.status().message()));
    return client_or.status();
  }
  // The module's own reference to gRPC, given back by Finalize, and to its
  // EventEngine, so that Finalize destroys the engine (ReleaseGrpc).
  grpc_init();
  engine_ = grpc_event_engine::experimental::GetDefaultEventEngine();
  if (lingering) {  // the same engine (it lives): engine_ holds it now
    Lingering& l = LingeringEngine();
    std::lock_guard<std::mutex> lock(l.mu);
    l.engine.reset();
  }
  client_ = std::shared_ptr<AgentClient>(std::move(*client_or));
  config_ = std::move(config);
  pid_ = me;
  grpc_all_ours_ = grpc_all_ours;
  initialized_ = true;
  stop_heartbeat_ = false;
  ++generation_;
  // Register the instance now if an agent answers; if none does,
  // C_Initialize still succeeds and each call answers CKR_DEVICE_ERROR.
  auto client = client_;
  heartbeat_ = std::make_unique<std::thread>(
      [this, client, secs = config_.heartbeat_seconds] { HeartbeatLoop(client, secs); });
  return absl::OkStatus();
}

void ModuleState::HeartbeatLoop(std::shared_ptr<AgentClient> client, uint32_t seconds) {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stop = [this] { return stop_heartbeat_; };
      mu_.AwaitWithTimeout(absl::Condition(&stop), absl::Seconds(seconds));
      if (stop_heartbeat_) return;
    }
    client->Heartbeat();
  }
}

absl::Status ModuleState::Finalize() {
  std::shared_ptr<AgentClient> client;
  std::unique_ptr<std::thread> heartbeat;
  std::shared_ptr<EventEngine> engine;
  bool grpc_all_ours = false;
  {
    absl::MutexLock lock(&mu_);
    if (!initialized_ || pid_ != getpid()) {
      return wire::CkError(CKR_CRYPTOKI_NOT_INITIALIZED, "not initialised");
    }
    initialized_ = false;
    stop_heartbeat_ = true;
    client = std::move(client_);
    heartbeat = std::move(heartbeat_);
    engine = std::move(engine_);
    grpc_all_ours = grpc_all_ours_;
  }
  if (heartbeat != nullptr && heartbeat->joinable()) {
    if (heartbeat->get_id() == std::this_thread::get_id()) {
      heartbeat->detach();
    } else {
      heartbeat->join();
    }
  }
  if (client != nullptr) {
    client->Close();
    WriteStatsFile(client->stats());  // HSMUX_STATS_FILE only (docs/decisions/0008)
  }
  client.reset();  // the channel, unless a call on another thread still holds it
  ReleaseGrpc(std::move(engine), grpc_all_ours);
  return absl::OkStatus();
}

bool ModuleState::Initialized() const {
  absl::MutexLock lock(&mu_);
  return initialized_ && pid_ == getpid();
}

absl::StatusOr<std::shared_ptr<AgentClient>> ModuleState::Client() const {
  absl::MutexLock lock(&mu_);
  if (!initialized_ || pid_ != getpid()) {
    return wire::CkError(CKR_CRYPTOKI_NOT_INITIALIZED, "not initialised");
  }
  return client_;
}

bool ModuleState::HasSlot(CK_SLOT_ID slot) const {
  absl::MutexLock lock(&mu_);
  return std::find(config_.slots.begin(), config_.slots.end(), slot) != config_.slots.end();
}

std::vector<uint64_t> ModuleState::Slots() const {
  absl::MutexLock lock(&mu_);
  return config_.slots;
}

CK_RV ModuleState::BlockUntilFinalized() {
  absl::MutexLock lock(&mu_);
  const uint64_t gen = generation_;
  const pid_t me = getpid();
  auto done = [this, gen, me] { return !initialized_ || generation_ != gen || pid_ != me; };
  mu_.Await(absl::Condition(&done));
  return CKR_CRYPTOKI_NOT_INITIALIZED;
}

}  // namespace hsmux::module
