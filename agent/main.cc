// hsmuxd: loads the config, logs in to every member, serves the virtual
// tokens over mTLS until SIGTERM/SIGINT.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "admin_service.h"
#include "agent.h"
#include "audit.h"
#include "config.h"
#include "log.h"
#include "metrics.h"
#include "sd_notify.h"
#include "service.h"

ABSL_FLAG(std::string, config, "/etc/hsmux/hsmuxd.yaml", "path of the agent's YAML config");
ABSL_FLAG(std::string, listen, "", "host:port to listen on instead of the config's (a standby)");

namespace {

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("hsmuxd --config /etc/hsmux/hsmuxd.yaml");
  absl::ParseCommandLine(argc, argv);
  // Debian's abseil is built with lock-order (deadlock) detection on: every
  // absl::Mutex, ours and gRPC's, then keeps a node in a global graph, which
  // showed in the agent's per-call profile (docs/decisions/0011). Tests turn
  // it back on with HSMUX_CHECK_LOCK_ORDER=1 (tests/e2e/with_agent.sh).
  const char* check_lock_order = getenv("HSMUX_CHECK_LOCK_ORDER");
  absl::SetMutexDeadlockDetectionMode(check_lock_order != nullptr &&
                                              std::string(check_lock_order) == "1"
                                          ? absl::OnDeadlockCycle::kAbort
                                          : absl::OnDeadlockCycle::kIgnore);
  using namespace hsmux::agent;  // NOLINT(google-build-using-namespace)

  auto config = LoadAgentConfig(absl::GetFlag(FLAGS_config));
  if (!config.ok()) {
    LogError(absl::StrCat("bad config: ", config.status().message()));
    return 2;
  }
  if (!absl::GetFlag(FLAGS_listen).empty()) config->listen = absl::GetFlag(FLAGS_listen);
  const std::string listen = config->listen;
  const std::string listen_unix = config->listen_unix;
  const std::string state_dir = config->state_dir;
  const std::string audit_log = config->audit_log;
  const std::string metrics_listen = config->metrics_listen;
  const uint32_t max_concurrent_calls = config->max_concurrent_calls;
  // One agent serves a state directory at a time (until a shared state
  // store exists): a standby started on the same directory waits here and
  // takes over when the active agent is gone (DESIGN §5).
  ::mkdir(config->state_dir.c_str(), 0700);
  const std::string lock_path = config->state_dir + "/hsmuxd.lock";
  const int lock_fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd < 0) {
    LogError(absl::StrCat("cannot open ", lock_path));
    return 1;
  }
  if (::flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    LogInfo(absl::StrCat("standby: another agent serves ", config->state_dir,
                         "; waiting to take over"));
    std::fprintf(stderr, "hsmuxd: standby\n");
    std::fflush(stderr);
    if (::flock(lock_fd, LOCK_EX) != 0) return 1;
    LogInfo("standby: taking over");
  }
  // From here on, signals are taken by a waiting thread, not by handlers
  // (blocked before any thread starts, so every thread inherits the mask).
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  const std::string admin_socket = AdminSocketPath(config->state_dir);
  const TlsConfig tls = config->tls;
  auto agent = Agent::Start(std::move(*config));
  if (!agent.ok()) {
    LogError(absl::StrCat("cannot start: ", agent.status().message()));
    return 1;
  }

  grpc::SslServerCredentialsOptions ssl(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  if (!ReadFile(tls.ca_file, &ssl.pem_root_certs) || !ReadFile(tls.cert_file, &pair.cert_chain) ||
      !ReadFile(tls.key_file, &pair.private_key)) {
    LogError("cannot read the TLS files named in the config");
    return 2;
  }
  ssl.pem_key_cert_pairs.push_back(pair);
  // The files are read above only to fail early and clearly; the listener
  // watches them and takes new certificates, keys and CAs within
  // kTlsReloadSeconds, without a restart (DESIGN §6). TLS 1.2 or later,
  // gRPC's default modern ciphers; a client certificate from the CA is
  // required.
  constexpr unsigned int kTlsReloadSeconds = 10;
  auto certificates = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      tls.key_file, tls.cert_file, tls.ca_file, kTlsReloadSeconds);
  grpc::experimental::TlsServerCredentialsOptions tls_options(certificates);
  tls_options.watch_root_certs();
  tls_options.watch_identity_key_cert_pairs();
  tls_options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);

  const std::string audit_path = audit_log.empty() ? state_dir + "/audit.log" : audit_log;
  if (!OpenAuditLog(audit_path)) {
    LogError(absl::StrCat("cannot open the audit log ", audit_path));
    return 1;
  }
  auto metrics = std::make_shared<AgentMetrics>(**agent);
  (*agent)->set_call_counter(
      [metrics](const std::string& identity, CK_RV rv) { metrics->CountCall(identity, rv); });
  std::unique_ptr<prometheus::Exposer> exposer;
  if (!metrics_listen.empty() && metrics_listen != "off") {
    exposer = StartMetrics(metrics_listen, metrics);
  }

  // The standard gRPC health service: SERVING while a member is healthy.
  grpc::EnableDefaultHealthCheckService(true);
  CryptokiService service(**agent);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(listen, grpc::experimental::TlsServerCredentials(tls_options));
  if (!listen_unix.empty()) {
    // Same mTLS as the TCP port: the socket's file mode keeps no one out,
    // the client certificate does.
    ::unlink(listen_unix.c_str());
    builder.AddListeningPort("unix:" + listen_unix,
                             grpc::experimental::TlsServerCredentials(tls_options));
  }
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(16 << 20);
  // At most this many calls run at once; more wait, then get
  // RESOURCE_EXHAUSTED (the module answers CKR_DEVICE_MEMORY).
  grpc::ResourceQuota quota("hsmuxd");
  quota.SetMaxThreads(static_cast<int>(max_concurrent_calls) + 8);
  builder.SetResourceQuota(quota);
  builder.SetMaxSendMessageSize(16 << 20);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) {
    LogError(absl::StrCat("cannot listen on ", listen));
    return 1;
  }
  // The admin socket: only the service user may open it.
  AdminService admin(**agent);
  ::unlink(admin_socket.c_str());
  grpc::ServerBuilder admin_builder;
  admin_builder.AddListeningPort("unix:" + admin_socket, grpc::InsecureServerCredentials());
  admin_builder.RegisterService(&admin);
  const mode_t old_umask = ::umask(0077);
  std::unique_ptr<grpc::Server> admin_server = admin_builder.BuildAndStart();
  ::umask(old_umask);
  if (admin_server == nullptr) {
    LogError(absl::StrCat("cannot open the admin socket ", admin_socket));
    return 1;
  }
  ::chmod(admin_socket.c_str(), 0600);
  if (!listen_unix.empty()) ::chmod(listen_unix.c_str(), 0666);
  std::fprintf(stderr, "hsmuxd: serving on %s\n", listen.c_str());
  std::fflush(stderr);
  SdNotify("READY=1");  // systemd Type=notify; nothing without $NOTIFY_SOCKET

  std::atomic<bool> stopping{false};
  std::thread reaper([&] {
    while (!stopping.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      (*agent)->ReapExpired();
      if (auto* health = server->GetHealthCheckService()) {
        health->SetServingStatus((*agent)->AnyMemberHealthy());
      }
    }
  });

  int sig = 0;
  sigwait(&signals, &sig);
  LogInfo(absl::StrCat("signal ", sig, ": shutting down"));
  stopping = true;
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  admin_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  ::unlink(admin_socket.c_str());
  if (!listen_unix.empty()) ::unlink(listen_unix.c_str());
  reaper.join();
  LogInfo("stopped");
  // Member workers and monitor threads may still be inside vendor calls (a
  // hung HSM): tearing the agent down under them would crash. Everything
  // durable is already in the state store (SQLite, synchronous=FULL), so
  // leave without running destructors.
  std::fflush(stderr);
  ::_exit(0);
}
