// The member session pool bounds what members see (DESIGN §4), run with
// HSMUX_WITH_TESTWRAP=1 and "pool_max_sessions: 4;pool_min_sessions: 1":
// 10 client processes x 100 logged-in sessions signing, while another
// process holds 50 sessions with a stalled C_SignInit. Every member's
// testwrap stats must show at most 4 open sessions, and every signature must
// succeed (nobody starves; the stalled operations complete afterwards).
#include <gtest/gtest.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "group_util.h"

namespace hsmux::grouptest {
namespace {

constexpr int kClients = 10;
constexpr int kSessionsPerClient = 100;
constexpr int kSignsPerSession = 3;
constexpr int kThreadsPerClient = 4;
constexpr int kStalled = 50;
constexpr uint64_t kPoolMax = 4;

int Field(const std::string& line, const std::string& key) {
  const std::string needle = key + "=";
  size_t pos = line.find(needle);
  return pos == std::string::npos ? -1 : std::atoi(line.c_str() + pos + needle.size());
}

TEST(GroupPool, ThousandSessionsNeedNoMoreMemberSessionsThanPoolMax) {
  ASSERT_FALSE(Env("HSMUX_TESTWRAP_DIR").empty()) << "needs HSMUX_WITH_TESTWRAP=1";
  CK_FUNCTION_LIST* p = Module();
  ASSERT_NE(p, nullptr);
  ASSERT_EQ(RvStr(p->C_Initialize(nullptr)), RvStr(CKR_OK));
  const std::string label = Unique("pool-ec");
  {
    CK_RV rv;
    CK_SESSION_HANDLE s = OpenSession(p, ClientPin(), &rv);
    ASSERT_EQ(RvStr(rv), RvStr(CKR_OK));
    Pair k;
    ASSERT_EQ(RvStr(GenEc(p, s, label, ToBytes(label), true, &k)), RvStr(CKR_OK));
  }
  ASSERT_EQ(RvStr(p->C_Finalize(nullptr)), RvStr(CKR_OK));

  Child staller = SpawnHelper({"stall", label, std::to_string(kStalled)});
  auto ready = ReadLine(staller, 60000);
  ASSERT_TRUE(ready.has_value() && *ready == "READY") << ready.value_or("(no output)");

  // A little latency on every member, so that the signing clients keep every
  // pooled session busy and the pool's bound is what limits the sessions.
  for (const char* member : kMembers) ASSERT_TRUE(TestwrapCtl(member, {"latency_ms=2"}));
  std::vector<Child> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(
        SpawnHelper({"sign", label, std::to_string(kSessionsPerClient),
                     std::to_string(kSignsPerSession), std::to_string(kThreadsPerClient)}));
  }
  int total_ok = 0;
  for (int i = 0; i < kClients; ++i) {
    const std::string out = ReadAll(clients[i], 120000);
    const int rc = WaitChild(clients[i], 10000);
    EXPECT_EQ(rc, 0) << "client " << i << ": " << out;
    EXPECT_EQ(Field(out, "ok"), kSessionsPerClient * kSignsPerSession)
        << "client " << i << ": " << out;
    EXPECT_EQ(Field(out, "fail"), 0) << "client " << i << ": " << out;
    total_ok += std::max(Field(out, "ok"), 0);
  }
  for (const char* member : kMembers) TestwrapCtl(member, {"latency_ms=0"});
  // Release the stalled sessions: their operations complete.
  close(staller.in_fd);
  staller.in_fd = -1;
  const std::string stall_out = ReadAll(staller, 60000);
  EXPECT_EQ(WaitChild(staller, 10000), 0) << stall_out;
  EXPECT_EQ(Field(stall_out, "ok"), kStalled) << stall_out;

  // The stats file is rewritten within ~20 ms of a change.
  usleep(300 * 1000);
  for (const char* member : kMembers) {
    Stats st = ReadStats(member);
    ASSERT_TRUE(st.ok) << member << ": no stats";
    const uint64_t max_open = st.Get("max_open_sessions");
    std::printf(
        "[measure] %s: max_open_sessions=%llu sessions_opened=%llu C_Sign=%llu "
        "C_SignInit=%llu\n",
        member, static_cast<unsigned long long>(max_open),
        static_cast<unsigned long long>(st.Get("sessions_opened")),
        static_cast<unsigned long long>(st.Calls("C_Sign")),
        static_cast<unsigned long long>(st.Calls("C_SignInit")));
    EXPECT_LE(max_open, kPoolMax) << member << ": " << st.raw;
    EXPECT_GE(max_open, 1u) << member;
  }
  std::printf("[measure] signatures ok: %d of %d, stalled completed: %d\n", total_ok,
              kClients * kSessionsPerClient * kSignsPerSession, Field(stall_out, "ok"));
}

}  // namespace
}  // namespace hsmux::grouptest
