// E2E: calls on one CallStream per host thread (module/call_stream.h,
// docs/decisions/0012-call-streams.md), against an agent that takes at most
// two streams (max_streams: 2, transport.cmake). Streams are counted by the
// module (HSMUX_STATS_FILE) and by the agent (`hsmuxctl status`).
#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "group_util.h"

namespace hsmux::grouptest {
namespace {

class StreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    stats_ = Env("HSMUX_TEST_DIR") + "/stream-stats-" + std::to_string(::getpid()) + ".json";
    ::setenv("HSMUX_STATS_FILE", stats_.c_str(), 1);
    config_ = Env("HSMUX_CONFIG");
    p = Module();
    ASSERT_NE(p, nullptr);
  }
  void TearDown() override {
    if (p != nullptr) p->C_Finalize(nullptr);
    ::unsetenv("HSMUX_STATS_FILE");
    ::setenv("HSMUX_CONFIG", config_.c_str(), 1);
  }

  // Initialises the module with module.yaml plus `extra` YAML lines.
  void Initialize(const std::string& extra) {
    const std::string dir = Env("HSMUX_TEST_DIR");
    const std::string path = dir + "/stream-module-" + std::to_string(++configs_) + ".yaml";
    std::ofstream(path) << ReadFile(dir + "/module.yaml") << "\n" << extra << "\n";
    ::setenv("HSMUX_CONFIG", path.c_str(), 1);
    ASSERT_EQ(p->C_Initialize(nullptr), CKR_OK);
  }

  // A number from the module's stats file (C_GetInfo writes it).
  long Stat(const std::string& key) {
    CK_INFO info;
    EXPECT_EQ(p->C_GetInfo(&info), CKR_OK);
    const std::string s = ReadFile(stats_);
    const size_t at = s.find("\"" + key + "\":");
    if (at == std::string::npos) return -1;
    return std::atol(s.c_str() + at + key.size() + 3);
  }

  // Streams the agent has open (`hsmuxctl status`), -1 on error.
  static long AgentStreams() {
    std::string out;
    if (Hsmuxctl("status", &out) != 0) return -1;
    const size_t at = out.find("call streams: ");
    return at == std::string::npos ? -1 : std::atol(out.c_str() + at + 14);
  }
  // Polls until the agent has `n` streams open (cancelled streams end on the
  // agent moments after the module let them go).
  static bool WaitAgentStreams(long n) {
    for (int i = 0; i < 200; ++i) {
      if (AgentStreams() == n) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  // Waits until every thread of `pid` is stopped (SIGSTOP takes effect
  // asynchronously: a thread running on the other CPU may finish a call).
  static bool WaitStopped(pid_t pid) {
    const std::string tasks = "/proc/" + std::to_string(pid) + "/task";
    for (int i = 0; i < 500; ++i) {
      bool all = true;
      DIR* d = ::opendir(tasks.c_str());
      if (d == nullptr) return false;
      while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] == '.') continue;
        const std::string stat = ReadFile(tasks + "/" + e->d_name + "/stat");
        const size_t paren = stat.rfind(')');
        if (paren == std::string::npos || paren + 2 >= stat.size() || stat[paren + 2] != 'T') {
          all = false;
        }
      }
      ::closedir(d);
      if (all) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }

  // A logged-in R/W session of client-1 on the hsmux slot.
  void OpenLoggedIn(CK_SESSION_HANDLE* s) {
    CK_RV rv = CKR_OK;
    *s = OpenSession(p, ClientPin(), &rv);
    ASSERT_EQ(RvStr(rv), RvStr(CKR_OK));
  }

  CK_RV Random(CK_SESSION_HANDLE s) {
    CK_BYTE buf[32];
    return p->C_GenerateRandom(s, buf, sizeof(buf));
  }

  CK_FUNCTION_LIST* p = nullptr;
  std::string stats_;
  std::string config_;  // the runner's module config
  int configs_ = 0;
};

TEST_F(StreamTest, EachThreadCallsOnItsStreamAndGivesItBackWhenItEnds) {
  Initialize("");
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  ASSERT_NO_FATAL_FAILURE(OpenLoggedIn(&s));
  ASSERT_EQ(RvStr(Random(s)), RvStr(CKR_OK));
  EXPECT_EQ(Stat("streams_opened"), 1);  // this thread's
  ASSERT_TRUE(WaitAgentStreams(1)) << AgentStreams();
  // Ten threads one after another, each with its own stream, each closed
  // when its thread ends: the agent (two places) never refuses one.
  for (int i = 0; i < 10; ++i) {
    CK_RV thread_rv = CKR_GENERAL_ERROR;
    std::thread([&] { thread_rv = Random(s); }).join();
    EXPECT_EQ(RvStr(thread_rv), RvStr(CKR_OK)) << "thread " << i;
    ASSERT_TRUE(WaitAgentStreams(1)) << "thread " << i << "'s stream is still open";
  }
  EXPECT_EQ(Stat("streams_opened"), 11);
  EXPECT_EQ(Stat("streams_refused"), 0);
  // Calls on the stream are round trips like any other.
  const long before = Stat("round_trips");
  for (int i = 0; i < 5; ++i) ASSERT_EQ(RvStr(Random(s)), RvStr(CKR_OK));
  EXPECT_EQ(Stat("round_trips") - before, 5);
  // C_Finalize closes every stream.
  EXPECT_EQ(p->C_Finalize(nullptr), CKR_OK);
  EXPECT_TRUE(WaitAgentStreams(0)) << AgentStreams();
}

TEST_F(StreamTest, ThreadsBeyondTheAgentsStreamLimitAreServedByUnaryCalls) {
  Initialize("");
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  ASSERT_NO_FATAL_FAILURE(OpenLoggedIn(&s));
  ASSERT_EQ(RvStr(Random(s)), RvStr(CKR_OK));
  // Four threads alive at once, each calling: with this thread's stream the
  // agent's two places are full after the first, so at least three threads
  // are refused a stream and send unary calls. Every call works.
  constexpr int kThreads = 4;
  std::mutex mu;
  std::condition_variable cv;
  int called = 0;
  bool release = false;
  std::vector<CK_RV> rvs(kThreads, CKR_GENERAL_ERROR), again(kThreads, CKR_GENERAL_ERROR);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      rvs[i] = Random(s);
      std::unique_lock<std::mutex> lock(mu);
      ++called;
      cv.notify_all();
      cv.wait(lock, [&] { return release; });
      lock.unlock();
      again[i] = Random(s);  // a refused thread stays on unary calls for a while
    });
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return called == kThreads; });
  }
  EXPECT_LE(AgentStreams(), 2);
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  for (auto& t : threads) t.join();
  for (int i = 0; i < kThreads; ++i) {
    EXPECT_EQ(RvStr(rvs[i]), RvStr(CKR_OK)) << i;
    EXPECT_EQ(RvStr(again[i]), RvStr(CKR_OK)) << i;
  }
  EXPECT_GE(Stat("streams_refused"), kThreads - 1);
  // Refused streams were never read by the agent, so nothing ran twice and
  // the count of round trips is one per call plus one resend per refusal.
}

TEST_F(StreamTest, HungAgentAnswersDeviceErrorAndTheNextCallUsesANewStream) {
  Initialize("timeouts:\n  call_ms: 1500");
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  ASSERT_NO_FATAL_FAILURE(OpenLoggedIn(&s));
  ASSERT_EQ(RvStr(Random(s)), RvStr(CKR_OK));
  const pid_t agent = static_cast<pid_t>(std::atol(Env("HSMUX_AGENT_PID").c_str()));
  ASSERT_GT(agent, 0);
  ASSERT_EQ(::kill(agent, SIGSTOP), 0);
  if (!WaitStopped(agent)) {
    ::kill(agent, SIGCONT);
    FAIL() << "the agent did not stop";
  }
  // The message's own deadline ends the wait (not the stream's, which has
  // none): CKR_DEVICE_ERROR, as for a unary call.
  const CK_RV hung = Random(s);
  ASSERT_EQ(::kill(agent, SIGCONT), 0);
  EXPECT_EQ(RvStr(hung), RvStr(CKR_DEVICE_ERROR));
  // The stream was given up; the next call opens a new one and works.
  EXPECT_EQ(RvStr(Random(s)), RvStr(CKR_OK));
  EXPECT_EQ(Stat("streams_opened"), 2);
}

TEST_F(StreamTest, UnaryTransportOpensNoStream) {
  Initialize("transport: unary");
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  ASSERT_NO_FATAL_FAILURE(OpenLoggedIn(&s));
  for (int i = 0; i < 3; ++i) ASSERT_EQ(RvStr(Random(s)), RvStr(CKR_OK));
  EXPECT_EQ(Stat("streams_opened"), 0);
  EXPECT_EQ(AgentStreams(), 0);
}

// module.yaml with the agent's Unix socket (listen_unix) instead of its port,
// and the client certificate and key named `cert_stem` (.pem/.key) in pki/.
std::string UnixModuleConfig(const std::string& cert_stem) {
  const std::string dir = Env("HSMUX_TEST_DIR");
  std::string text = ReadFile(dir + "/module.yaml");
  const auto swap = [&text](const std::string& from, const std::string& to) {
    const size_t at = text.find(from);
    if (at != std::string::npos) text.replace(at, from.size(), to);
  };
  const size_t at = text.find("agents: [");
  text.replace(at, text.find('\n', at) - at, "agents: [\"unix:" + Env("HSMUX_AGENT_UNIX") + "\"]");
  swap("/pki/client.pem", "/pki/" + cert_stem + ".pem");
  swap("/pki/client.key", "/pki/" + cert_stem + ".key");
  const std::string path = dir + "/stream-module-unix-" + cert_stem + ".yaml";
  std::ofstream(path) << text;
  return path;
}

TEST_F(StreamTest, UnixSocketListenerServesTheModuleWithTheSameCertificateChecks) {
  ::setenv("HSMUX_CONFIG", UnixModuleConfig("client").c_str(), 1);
  ASSERT_EQ(p->C_Initialize(nullptr), CKR_OK);
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
  ASSERT_NO_FATAL_FAILURE(OpenLoggedIn(&s));
  for (int i = 0; i < 3; ++i) ASSERT_EQ(RvStr(Random(s)), RvStr(CKR_OK));
  EXPECT_EQ(Stat("streams_opened"), 1);
  ASSERT_EQ(p->C_Finalize(nullptr), CKR_OK);
  // A client certificate from another CA is refused on the socket as on the
  // port: the file mode of the socket lets anyone connect, TLS does not.
  ::setenv("HSMUX_CONFIG", UnixModuleConfig("rogue-client").c_str(), 1);
  ASSERT_EQ(p->C_Initialize(nullptr), CKR_OK);
  CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
  EXPECT_EQ(RvStr(p->C_OpenSession(kSlot, CKF_SERIAL_SESSION, nullptr, nullptr, &h)),
            RvStr(CKR_DEVICE_ERROR));
}

TEST_F(StreamTest, BadTransportValueIsAConfigError) {
  const std::string dir = Env("HSMUX_TEST_DIR");
  const std::string path = dir + "/stream-module-bad.yaml";
  std::ofstream(path) << ReadFile(dir + "/module.yaml") << "\ntransport: carrier-pigeon\n";
  ::setenv("HSMUX_CONFIG", path.c_str(), 1);
  EXPECT_EQ(RvStr(p->C_Initialize(nullptr)), RvStr(CKR_GENERAL_ERROR));
}

}  // namespace
}  // namespace hsmux::grouptest
