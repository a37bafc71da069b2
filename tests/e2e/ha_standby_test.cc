// Several agents (DESIGN §5, issue 4 item 6): a standby hsmuxd started on the
// same state directory waits for the directory lock ("hsmuxd: standby") and
// takes over when the serving agent dies; a module configured with both
// endpoints reaches it from a fresh process and sees the keys. Sessions of
// the dead agent are gone (CKR_SESSION_HANDLE_INVALID, or CKR_DEVICE_ERROR
// while the process's module still talks to the dead endpoint).
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "group_util.h"

namespace hsmux::grouptest {
namespace {

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a = {};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  close(fd);
  return port;
}

bool WaitForLog(const std::string& path, const std::string& line, int timeout_ms) {
  for (int waited = 0; waited < timeout_ms; waited += 50) {
    const std::string log = ReadFile(path);
    if (log.rfind(line, 0) == 0 || log.find("\n" + line) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

TEST(HaStandby, StandbyTakesOverTheStateDirectory) {
  const std::string dir = Env("HSMUX_TEST_DIR");
  const int port2 = FreePort();
  ASSERT_GT(port2, 0);
  // A module config listing both agents.
  const std::string both = dir + "/module-both.yaml";
  {
    std::ofstream out(both);
    out << "agents: [\"localhost:" << Env("HSMUX_AGENT_PORT") << "\", \"localhost:" << port2
        << "\"]\n"
        << "tls: {ca: \"" << dir << "/pki/ca.pem\", cert: \"" << dir << "/pki/client.pem\", key: \""
        << dir << "/pki/client.key\", server_name: localhost}\n"
        << "slots: [1]\n"
        << "timeouts: {call_ms: 20000, connect_ms: 3000}\n"
        << "heartbeat_seconds: 10\n"
        << "log_file: \"" << dir << "/module-both.log\"\n";
  }
  ASSERT_EQ(setenv("HSMUX_CONFIG", both.c_str(), 1), 0);

  // This process works through the first agent and makes a key there.
  CK_FUNCTION_LIST* p = Module();
  ASSERT_NE(p, nullptr);
  ASSERT_EQ(p->C_Initialize(nullptr), CKR_OK);
  CK_RV rv;
  CK_SESSION_HANDLE old_session = OpenSession(p, ClientPin(), &rv);
  ASSERT_EQ(rv, CKR_OK);
  const std::string label = Unique("standby-ec");
  Pair ec;
  ASSERT_EQ(GenEc(p, old_session, label, ToBytes(label), true, &ec), CKR_OK);
  const Bytes point = EcPointOctets(Attr(p, old_session, ec.pub, CKA_EC_POINT));

  // The standby: same config and state directory, another port.
  const std::string standby_log = dir + "/hsmuxd-standby.log";
  const std::string cmd = "exec " + Env("HSMUX_AGENT_START") +
                          " --listen 127.0.0.1:" + std::to_string(port2) + " >'" + standby_log +
                          "' 2>&1";
  const pid_t parent = getpid();
  const pid_t standby = fork();
  if (standby == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  ASSERT_GT(standby, 0);
  struct Stop {
    pid_t pid;
    ~Stop() {
      if (!KillAndWait(pid, SIGTERM, 20000)) KillAndWait(pid, SIGKILL, 5000);
      int st;
      waitpid(pid, &st, 0);
    }
  } stop{standby};
  ASSERT_TRUE(WaitForLog(standby_log, "hsmuxd: standby", 30000)) << ReadFile(standby_log);
  EXPECT_FALSE(WaitForLog(standby_log, "hsmuxd: serving on", 500));

  // The serving agent dies.
  const pid_t first = static_cast<pid_t>(std::stol(Env("HSMUX_AGENT_PID")));
  ASSERT_TRUE(KillAndWait(first, SIGKILL, 10000));
  const auto killed = std::chrono::steady_clock::now();
  ASSERT_TRUE(WaitForLog(standby_log, "hsmuxd: serving on", 60000)) << ReadFile(standby_log);
  std::printf("STANDBY serving %.2f s after the first agent was killed\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count());

  // A fresh process (new C_Initialize/C_OpenSession) reaches the standby
  // (the first endpoint refuses, the module moves to the second) and sees
  // the key.
  Child c =
      SpawnHelper({"find", label, dir + "/secrets/client-pin", "0"}, {{"HSMUX_CONFIG", both}});
  const std::string got = ReadAll(c, 60000);
  EXPECT_EQ(WaitChild(c, 10000), 0) << got;
  EXPECT_NE(got.find("COUNT 2\n"), std::string::npos) << got;

  // Signing with the key in another fresh process works too.
  Child s = SpawnHelper({"sign", label, "2", "5", "2"}, {{"HSMUX_CONFIG", both}});
  const std::string signed_out = ReadAll(s, 60000);
  EXPECT_EQ(WaitChild(s, 10000), 0) << signed_out;
  EXPECT_NE(signed_out.find("RESULT ok=10 fail=0"), std::string::npos) << signed_out;

  // The old session of this (already initialised) process.
  CK_SESSION_INFO info;
  const CK_RV old_rv = p->C_GetSessionInfo(old_session, &info);
  std::printf("STANDBY old session handle answers %s\n", RvStr(old_rv).c_str());
  EXPECT_TRUE(old_rv == CKR_SESSION_HANDLE_INVALID || old_rv == CKR_DEVICE_ERROR) << RvStr(old_rv);
  const Bytes digest = Sha256(ToBytes("old process"));
  CK_RV sign_rv;
  Sign(p, old_session, CKM_ECDSA, ec.priv, digest, &sign_rv);
  std::printf("STANDBY old session C_SignInit/C_Sign answers %s\n", RvStr(sign_rv).c_str());
  EXPECT_NE(sign_rv, CKR_OK);
  // A new session in the same process: reported, not asserted (the module
  // may still be bound to the dead endpoint).
  CK_RV new_rv;
  CK_SESSION_HANDLE fresh = OpenSession(p, ClientPin(), &new_rv);
  std::printf("STANDBY new C_OpenSession/C_Login in the old process answers %s\n",
              RvStr(new_rv).c_str());
  if (new_rv == CKR_OK) {
    auto found = FindLabel(p, fresh, label);
    std::printf("STANDBY ... and finds %zu objects\n", found.size());
    p->C_CloseSession(fresh);
  }
  // After C_Finalize + C_Initialize the old process moves too.
  p->C_Finalize(nullptr);
  ASSERT_EQ(p->C_Initialize(nullptr), CKR_OK);
  CK_SESSION_HANDLE again = OpenSession(p, ClientPin(), &rv);
  std::printf("STANDBY after C_Finalize/C_Initialize in the old process: %s\n", RvStr(rv).c_str());
  EXPECT_EQ(rv, CKR_OK);
  if (rv == CKR_OK) {
    EXPECT_EQ(FindLabel(p, again, label).size(), 2u);
    p->C_CloseSession(again);
  }
  p->C_Finalize(nullptr);
}

}  // namespace
}  // namespace hsmux::grouptest
