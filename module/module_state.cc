#include "module_state.h"

#include <dlfcn.h>
#include <grpc/fork.h>
#include <grpc/grpc.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <mutex>

#include "log.h"
#include "stats_file.h"
#include "wire/errors.h"

// Exported by Debian's libgpr: turns on gRPC's fork support before grpc_init
// reads it (the same switch as GRPC_ENABLE_FORK_SUPPORT=1).
void gpr_global_config_set_grpc_enable_fork_support(bool value);

namespace hsmux::module {
namespace {

// The current state; replaced (the old one leaked) in a forked child.
std::atomic<ModuleState*>& StatePointer() {
  static auto* state = new std::atomic<ModuleState*>(nullptr);
  return *state;
}

// gRPC must be told about fork() or a child that uses it hangs; these run in
// every fork of the host once the module was initialised.
void InstallForkHandlers() {
  static std::once_flag once;
  std::call_once(once, [] {
#ifdef HSMUX_STATIC_MODULE
    // The module's private OpenSSL must not read the host's OPENSSL_CONF (it
    // would load engines built for the system libcrypto). Run-once, so only in
    // the static build: in the shared build it would switch off the host's.
    OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG, nullptr);
    OPENSSL_init_ssl(OPENSSL_INIT_NO_LOAD_CONFIG, nullptr);
    // The host's own libcrypto (if one is in its global scope; Java has none)
    // loads its config now, as it did through the shared-gRPC build, instead
    // of lazily inside the host's first operation: OpenSSL 3.0 doing that in
    // the middle of EVP_PKEY_fromdata makes pkcs11-tool 0.23 fail to export
    // EC public keys ("cannot create EVP_PKEY"). Only the timing changes.
    using OpensslInit = int (*)(uint64_t, const void*);
    if (auto host_init = reinterpret_cast<OpensslInit>(dlsym(RTLD_DEFAULT, "OPENSSL_init_crypto"))) {
      host_init(OPENSSL_INIT_LOAD_CONFIG, nullptr);
    }
#endif
    gpr_global_config_set_grpc_enable_fork_support(true);
    pthread_atfork(grpc_prefork, grpc_postfork_parent, grpc_postfork_child);
    pthread_atfork(nullptr, nullptr, &ModuleState::ResetInChild);
  });
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
}

absl::Status ModuleState::Initialize() {
  InstallForkHandlers();
  absl::MutexLock lock(&mu_);
  const pid_t me = getpid();
  if (initialized_ && pid_ == me) {
    return wire::CkError(CKR_CRYPTOKI_ALREADY_INITIALIZED, "already initialised");
  }
  if (initialized_ && pid_ != me) {
    // A forked child: the parent's channel and thread are not ours. Leak them.
    new std::shared_ptr<AgentClient>(std::move(client_));
    heartbeat_.release();  // NOLINT(bugprone-unused-return-value): abandoned on purpose
    initialized_ = false;
  }
  HSMUX_ASSIGN_OR_RETURN(ModuleConfig config, LoadModuleConfig());
  SetLogFile(config.log_file);
  RouteGrpcLogs();
  auto client_or = AgentClient::Create(config);
  if (!client_or.ok()) {
    LogLine(std::string("C_Initialize: ") + std::string(client_or.status().message()));
    return client_or.status();
  }
  client_ = std::shared_ptr<AgentClient>(std::move(*client_or));
  config_ = std::move(config);
  pid_ = me;
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
  {
    absl::MutexLock lock(&mu_);
    if (!initialized_ || pid_ != getpid()) {
      return wire::CkError(CKR_CRYPTOKI_NOT_INITIALIZED, "not initialised");
    }
    initialized_ = false;
    stop_heartbeat_ = true;
    client = std::move(client_);
    heartbeat = std::move(heartbeat_);
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
    WriteStatsFile(client->round_trips());  // HSMUX_STATS_FILE only (docs/decisions/0008)
  }
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
