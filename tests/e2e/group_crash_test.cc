// Crash convergence (DESIGN §3), with HSMUX_WITH_TESTWRAP=1: a token key
// write that is never acknowledged — member-c hangs in the replica's unwrap
// and the agent is killed with SIGKILL while the other members hold pending
// objects — is rolled back when the agent starts again: no pending object is
// left on any member, the key exists nowhere, and the token works.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "group_util.h"

namespace hsmux::grouptest {
namespace {

TEST(GroupCrash, UnacknowledgedWriteIsRolledBackAfterKill9) {
  ASSERT_FALSE(Env("HSMUX_TESTWRAP_DIR").empty()) << "needs HSMUX_WITH_TESTWRAP=1";
  Members& m = Members::Get();
  ASSERT_TRUE(m.ok()) << m.error();
  for (size_t i = 0; i < 3; ++i) ASSERT_TRUE(m.Pending(i).empty()) << kMembers[i];

  // The writer picks the source member by rotation; when it is member-c the
  // generate itself hangs and nothing is pending elsewhere: release and retry.
  std::string label;
  Child child;
  std::vector<size_t> pending_on;
  for (int attempt = 0; attempt < 5 && pending_on.empty(); ++attempt) {
    label = Unique("crash-aes");
    ASSERT_TRUE(TestwrapCtl("member-c", {"hang=1"}));
    child = SpawnHelper({"genaes", label});
    auto started = ReadLine(child, 30000);
    ASSERT_TRUE(started.has_value() && *started == "STARTED") << started.value_or("(none)");
    for (int poll = 0; poll < 200 && pending_on.empty(); ++poll) {
      for (size_t i : {0, 1}) {
        if (!m.Pending(i).empty()) pending_on.push_back(i);
      }
      if (pending_on.empty()) usleep(25 * 1000);
    }
    if (pending_on.empty()) {
      std::printf(
          "[info] attempt %d: nothing pending on member-a/b (source was member-c); "
          "releasing and retrying\n",
          attempt);
      ASSERT_TRUE(TestwrapCtl("member-c", {"hang=0"}));
      const std::string out = ReadAll(child, 30000);
      WaitChild(child, 10000);
      std::printf("[info] released write: %s", out.c_str());
    }
  }
  ASSERT_FALSE(pending_on.empty()) << "never caught a write pending on member-a or member-b";
  // Let the write reach the hang on member-c (both a and b hold it then).
  for (int poll = 0; poll < 200; ++poll) {
    if (!m.Pending(0).empty() && !m.Pending(1).empty()) break;
    usleep(25 * 1000);
  }
  size_t pending_before = 0;
  for (size_t i = 0; i < 3; ++i) {
    auto p = m.Pending(i);
    pending_before += p.size();
    std::printf("[measure] before kill -9: %s has %zu pending object(s)\n", kMembers[i], p.size());
  }
  EXPECT_GE(pending_before, 2u);
  EXPECT_TRUE(m.Pending(2).empty());  // member-c's unwrap never ran
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(m.Label(i, label).empty()) << kMembers[i];

  // Crash: SIGKILL, then release the hang and start the agent again.
  const pid_t first = static_cast<pid_t>(std::atoi(Env("HSMUX_AGENT_PID").c_str()));
  ASSERT_GT(first, 0);
  ASSERT_TRUE(KillAndWait(first, SIGKILL, 10000));
  ASSERT_TRUE(TestwrapCtl("member-c", {"hang=0"}));
  const std::string child_out = ReadAll(child, 30000);
  WaitChild(child, 10000);
  std::printf("[info] the writing client saw: %s", child_out.c_str());
  EXPECT_EQ(child_out.find("RV " + RvStr(CKR_OK)), std::string::npos)
      << "a write the agent never finished was acknowledged";

  AgentProcess agent("hsmuxd-crash-2.log");
  ASSERT_TRUE(agent.Start()) << ReadFile(agent.log_path());
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(m.Pending(i).empty()) << kMembers[i] << " still has " << m.Pending(i).size();
    EXPECT_TRUE(m.Label(i, label).empty()) << kMembers[i] << " has the unacknowledged key";
  }
  const std::string log = ReadFile(agent.log_path());
  size_t rolled = 0;
  for (size_t pos = 0;
       (pos = log.find("rolled back an unacknowledged write", pos)) != std::string::npos; ++pos) {
    ++rolled;
  }
  std::printf("[measure] agent log: %zu 'rolled back an unacknowledged write' lines\n", rolled);
  EXPECT_EQ(rolled, pending_before);

  // The token works: the key is not visible, a new one reaches every member.
  CK_FUNCTION_LIST* p = Module();
  ASSERT_NE(p, nullptr);
  ASSERT_EQ(RvStr(p->C_Initialize(nullptr)), RvStr(CKR_OK));
  CK_RV rv;
  CK_SESSION_HANDLE s = OpenSession(p, ClientPin(), &rv);
  ASSERT_EQ(RvStr(rv), RvStr(CKR_OK));
  EXPECT_TRUE(FindLabel(p, s, label).empty());
  const std::string label2 = Unique("after-crash");
  CK_OBJECT_HANDLE k = CK_INVALID_HANDLE;
  ASSERT_EQ(RvStr(GenAes(p, s, label2, ToBytes(label2), true, &k)), RvStr(CKR_OK));
  const Bytes block = ToBytes("after the crash!");
  const Bytes enc = EncryptEcb(p, s, k, block, &rv);
  EXPECT_EQ(RvStr(rv), RvStr(CKR_OK));
  for (size_t i = 0; i < 3; ++i) {
    auto found = m.LabelClass(i, label2, CKO_SECRET_KEY);
    ASSERT_EQ(found.size(), 1u) << kMembers[i];
    EXPECT_EQ(AttrBool(m.fl(), m.s(i), found[0], CKA_EXTRACTABLE), false) << kMembers[i];
    EXPECT_EQ(Hex(EncryptEcb(m.fl(), m.s(i), found[0], block)), Hex(enc)) << kMembers[i];
    EXPECT_TRUE(m.Pending(i).empty()) << kMembers[i];
  }
  p->C_Finalize(nullptr);
  EXPECT_TRUE(agent.Stop());
}

}  // namespace
}  // namespace hsmux::grouptest
