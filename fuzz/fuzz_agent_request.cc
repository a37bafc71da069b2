// libFuzzer target: the agent's request decoding and dispatch
// (agent/call_context.cc argument readers, agent/dispatch.cc and the
// handlers behind it) with a real agent core over ONE SoftHSMv2 token.
//
// Set-up (once, in LLVMFuzzerInitialize): a temporary directory with a
// SoftHSM config and one token made by softhsm2-util, a state directory, and
// an AgentConfig built in code (one group on slot 1 with replication
// "none", one client whose PIN hash uses the cheapest scrypt cost so that
// C_Login stays fast). Agent::Start loads the token as a real member.
//
// Input: up to 8 CallRequests, each as a 2-byte little-endian length and
// that many protobuf bytes. Each input runs in a fresh instance
// (Agent::OpenInstance), closed at the end, so sessions and session objects
// do not pile up between inputs. Handles are random per run, which a fuzzer
// cannot guess: a ulong argument of the form 0xFFFFFFFFFFFFFFxx is replaced
// by the xx-th (modulo) ulong the agent answered earlier in the same input
// (session handles, object handles). Key generation asking for more than
// 2048 bits is skipped (it only makes SoftHSM slow, not the agent
// interesting). The fuzz PIN is "fuzz-user-pin": no secret.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <openssl/evp.h>

#include "agent.h"
#include "wire/function_table.h"

namespace {

using hsmux::agent::Agent;
using hsmux::agent::AgentConfig;
using hsmux::agent::ClientConfig;
using hsmux::agent::GroupAccess;
using hsmux::agent::GroupConfig;
using hsmux::agent::MemberConfig;
using hsmux::wire::F;

constexpr char kUserPin[] = "fuzz-user-pin";
constexpr char kSoPin[] = "fuzz-so-pin";
constexpr uint64_t kHandleRefMask = 0xFFFFFFFFFFFFFF00ULL;

Agent* g_agent = nullptr;
const ClientConfig* g_client = nullptr;

std::string B64(const unsigned char* p, size_t n) {
  std::string out(4 * ((n + 2) / 3) + 1, '\0');
  int w = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), p, static_cast<int>(n));
  out.resize(w);
  while (!out.empty() && out.back() == '=') out.pop_back();
  return out;
}

// "scrypt$10$1$1$salt$hash": the lowest cost pin_hash.cc accepts.
std::string CheapPinHash(const std::string& pin) {
  const unsigned char salt[16] = {'h', 's', 'm', 'u', 'x', '-', 'f', 'u',
                                  'z', 'z', '-', 's', 'a', 'l', 't', '!'};
  unsigned char key[32];
  if (EVP_PBE_scrypt(pin.data(), pin.size(), salt, sizeof salt, 1 << 10, 1, 1, 0, key,
                     sizeof key) != 1) {
    std::fprintf(stderr, "fuzz_agent_request: scrypt failed\n");
    std::abort();
  }
  return "scrypt$10$1$1$" + B64(salt, sizeof salt) + "$" + B64(key, sizeof key);
}

void Die(const std::string& what) {
  std::fprintf(stderr, "fuzz_agent_request: %s\n", what.c_str());
  std::exit(1);
}

void Setup() {
  const char* tmp = getenv("TMPDIR");
  std::string tmpl = std::string(tmp != nullptr && *tmp ? tmp : "/tmp") + "/hsmux-fuzz-agent-XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) Die("mkdtemp failed");
  const std::string base = tmpl;
  const std::string conf = base + "/softhsm2.conf";
  if (system(("mkdir -p " + base + "/tokens " + base + "/state").c_str()) != 0) Die("mkdir");
  FILE* f = std::fopen(conf.c_str(), "w");
  if (f == nullptr) Die("cannot write " + conf);
  std::fprintf(f,
               "directories.tokendir = %s/tokens\nobjectstore.backend = file\n"
               "log.level = ERROR\nslots.removable = false\n",
               base.c_str());
  std::fclose(f);
  setenv("SOFTHSM2_CONF", conf.c_str(), 1);
  const std::string init = "softhsm2-util --init-token --free --label fuzz-member --so-pin " +
                           std::string(kSoPin) + " --pin " + kUserPin + " >/dev/null";
  if (system(init.c_str()) != 0) Die("softhsm2-util --init-token failed");

  const char* lib = getenv("HSMUX_FUZZ_SOFTHSM_LIB");
  AgentConfig config;
  config.listen = "127.0.0.1:0";  // never listened on: no gRPC server here
  config.state_dir = base + "/state";
  config.lease_seconds = 3600;
  config.max_sessions_per_instance = 64;
  config.max_pin_failures = 1000000000;  // a wrong PIN must not lock the fuzzer out
  GroupConfig group;
  group.slot_id = 1;
  group.label = "fuzz";
  group.serial = "FUZZ0001";
  group.replication = "none";
  group.probe_interval_ms = 60000;
  group.pool_min_sessions = 1;
  group.pool_max_sessions = 4;
  group.pool_wait_ms = 1000;
  MemberConfig member;
  member.name = "m";
  member.library = lib != nullptr ? lib : "/usr/lib/softhsm/libsofthsm2.so";
  member.token_label = "fuzz-member";
  member.pin = kUserPin;
  group.members.push_back(member);
  config.groups.push_back(group);
  ClientConfig client;
  client.common_name = "fuzz-client";
  client.groups.push_back(GroupAccess{1, CheapPinHash(kUserPin)});
  config.clients.push_back(client);

  auto agent = Agent::Start(std::move(config));
  if (!agent.ok()) Die("Agent::Start: " + agent.status().ToString());
  g_agent = agent->release();  // lives for the whole process
  g_client = &g_agent->config().clients[0];
}

// Skips key generation that only makes SoftHSM slow.
bool TooExpensive(const hsmux::v1::CallRequest& req) {
  const F f = static_cast<F>(req.function());
  if (f != F::kGenerateKey && f != F::kGenerateKeyPair) return false;
  for (const auto& arg : req.args()) {
    if (arg.has_mechanism()) {
      const uint64_t t = arg.mechanism().type();
      if (t == CKM_DSA_PARAMETER_GEN || t == CKM_DH_PKCS_PARAMETER_GEN ||
          t == CKM_DH_PKCS_KEY_PAIR_GEN || t == CKM_DSA_KEY_PAIR_GEN) {
        return true;
      }
    }
    if (!arg.has_attributes()) continue;
    for (const auto& a : arg.attributes().attributes()) {
      if ((a.type() == CKA_MODULUS_BITS || a.type() == CKA_PRIME_BITS ||
           a.type() == CKA_SUB_PRIME_BITS || a.type() == CKA_VALUE_BITS) &&
          a.has_ulong() && a.ulong() > 2048) {
        return true;
      }
    }
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  Setup();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<hsmux::v1::CallRequest> calls;
  while (size >= 2 && calls.size() < 8) {
    size_t len = data[0] | (size_t{data[1]} << 8);
    data += 2;
    size -= 2;
    if (len > size) len = size;
    hsmux::v1::CallRequest req;
    // A chunk that does not parse is skipped, not the whole input: the
    // agent's gRPC layer never hands such bytes to Agent::Call.
    if (req.ParseFromArray(data, static_cast<int>(len))) calls.push_back(std::move(req));
    data += len;
    size -= len;
  }
  if (calls.empty()) return 0;

  auto instance = g_agent->OpenInstance(g_client, "CN=fuzz-client");
  std::vector<uint64_t> answered;
  for (hsmux::v1::CallRequest& req : calls) {
    for (auto& arg : *req.mutable_args()) {
      if (arg.kind_case() == hsmux::v1::Value::kUlong &&
          (arg.ulong() & kHandleRefMask) == kHandleRefMask && !answered.empty()) {
        arg.set_ulong(answered[(arg.ulong() & 0xff) % answered.size()]);
      }
    }
    if (TooExpensive(req)) continue;
    req.set_instance_id(instance->id);
    hsmux::v1::CallResponse resp;
    g_agent->Call(instance, req, resp);
    for (const auto& r : resp.results()) {
      if (r.kind_case() == hsmux::v1::Value::kUlong) answered.push_back(r.ulong());
      if (r.kind_case() == hsmux::v1::Value::kUlongs) {
        for (uint64_t v : r.ulongs().values()) answered.push_back(v);
      }
    }
  }
  g_agent->CloseInstance(instance->id, instance->identity);
  return 0;
}
