// A raw hsmux.v1 gRPC client for the mTLS refusal test (surface_test.cc).
// A separate program because the generated protobuf code cannot be
// registered twice in one process: the module under test (the shared-gRPC
// development build) carries its own copy of hsmux/v1/cryptoki.proto.
//
//   e2e_surface_raw_client cert|no-cert PID_MARKER
//
// Calls hsmux.v1.Cryptoki/Open on localhost:$HSMUX_AGENT_PORT trusting
// $HSMUX_TEST_DIR/pki/ca.pem, with client-1's certificate or with none; the
// request's pid is PID_MARKER, which the agent logs for every Open it serves.
// Exit: 0 Open served (and the instance closed again), 3 Open failed, 2 usage.
#include <grpc/event_engine/event_engine.h>
#include <grpc/grpc.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>

#include "hsmux/v1/cryptoki.grpc.pb.h"

// Exported by Debian's libgrpc 1.51 (its header is not installed); see
// module/module_state.cc, ReleaseGrpc.
namespace grpc_event_engine::experimental {
std::shared_ptr<EventEngine> GetDefaultEventEngine();
}  // namespace grpc_event_engine::experimental

namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::chrono::system_clock::time_point In5s() {
  return std::chrono::system_clock::now() + std::chrono::seconds(5);
}

int Run(int argc, char** argv) {
  const char* dir = std::getenv("HSMUX_TEST_DIR");
  const char* port = std::getenv("HSMUX_AGENT_PORT");
  if (argc != 3 || dir == nullptr || port == nullptr) {
    std::cerr << "usage: HSMUX_TEST_DIR=.. HSMUX_AGENT_PORT=.. " << argv[0]
              << " cert|no-cert PID_MARKER\n";
    return 2;
  }
  const bool with_cert = std::string(argv[1]) == "cert";
  const std::string pki = std::string(dir) + "/pki/";
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ReadFile(pki + "ca.pem");
  if (with_cert) {
    ssl.pem_cert_chain = ReadFile(pki + "client.pem");
    ssl.pem_private_key = ReadFile(pki + "client.key");
  }
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("localhost");
  auto channel =
      grpc::CreateCustomChannel(std::string("localhost:") + port, grpc::SslCredentials(ssl), args);
  auto stub = hsmux::v1::Cryptoki::NewStub(channel);

  hsmux::v1::OpenRequest req;
  req.set_pid(static_cast<uint32_t>(std::strtoul(argv[2], nullptr, 10)));
  req.set_host("surface-raw-client");
  req.set_module_version("raw");
  hsmux::v1::OpenResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(In5s());
  const grpc::Status st = stub->Open(&ctx, req, &resp);
  if (!st.ok()) {
    std::cout << "Open failed: code " << st.error_code() << ": " << st.error_message() << "\n";
    return 3;
  }
  std::cout << "Open served: instance " << resp.instance_id() << "\n";
  hsmux::v1::CloseRequest close;
  close.set_instance_id(resp.instance_id());
  hsmux::v1::CloseResponse closed;
  grpc::ClientContext cctx;
  cctx.set_deadline(In5s());
  (void)stub->Close(&cctx, close, &closed);
  return 0;
}

}  // namespace

// gRPC is torn down, its threads joined, before exit() runs static
// destructors and OpenSSL's clean-up under them (as the module's C_Finalize
// does; docs/sanitizers.md, "Exit").
int main(int argc, char** argv) {
  grpc_init();
  auto engine = grpc_event_engine::experimental::GetDefaultEventEngine();
  const int rc = Run(argc, argv);  // its channel is gone when it returns
  grpc_shutdown_blocking();
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (engine.use_count() > 1 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  engine.reset();
  return rc;
}
