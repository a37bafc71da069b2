// Discovery and the registry (DESIGN §3): after an agent restart every object
// made through hsmux is found again and usable; objects placed directly on
// members that nothing proves identical are kept apart and reported by
// `hsmuxctl status`, never merged by guess.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "group_util.h"

namespace hsmux::grouptest {
namespace {

struct Seen {
  std::vector<std::string> labels;  // sorted "class:label"
};

Seen ListAll(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s) {
  Attrs none;
  Seen out;
  for (CK_OBJECT_HANDLE h : Find(p, s, none)) {
    Bytes cls = Attr(p, s, h, CKA_CLASS);
    CK_OBJECT_CLASS c = 0;
    if (cls.size() == sizeof(c)) std::memcpy(&c, cls.data(), sizeof(c));
    out.labels.push_back(std::to_string(c) + ":" + AttrStr(p, s, h, CKA_LABEL));
  }
  std::sort(out.labels.begin(), out.labels.end());
  return out;
}

std::string Status() {
  std::string out;
  const int rc = RunCommand(
      BuildDir() + "/agent/hsmuxctl status --config '" + Env("HSMUX_TEST_DIR") + "/hsmuxd.yaml'",
      &out);
  return rc == 0 ? out : "hsmuxctl failed: " + out;
}

// "..., N unproven, M ambiguous" from hsmuxctl status.
int CountBefore(const std::string& status, const std::string& word) {
  size_t pos = status.find(" " + word);
  if (pos == std::string::npos) return -1;
  size_t start = status.rfind(' ', pos - 1);
  return std::atoi(status.c_str() + start + 1);
}

class GroupRegistry : public ::testing::Test {
 protected:
  void Init() {
    ASSERT_EQ(RvStr(p->C_Initialize(nullptr)), RvStr(CKR_OK));
    CK_RV rv;
    s = OpenSession(p, ClientPin(), &rv);
    ASSERT_EQ(RvStr(rv), RvStr(CKR_OK));
  }
  void Fini() { p->C_Finalize(nullptr); }
  CK_FUNCTION_LIST* p = Module();
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
};

TEST_F(GroupRegistry, RestartFindsEverythingAndKeepsUnprovenApart) {
  ASSERT_NE(p, nullptr);
  Members& m = Members::Get();
  ASSERT_TRUE(m.ok()) << m.error();
  // Objects of every kind through the first agent.
  ASSERT_NO_FATAL_FAILURE(Init());
  const std::string ec = Unique("ec"), rsa = Unique("rsa"), aes = Unique("aes"),
                    hmac = Unique("hmac"), data = Unique("data");
  Pair ecp, rsap;
  CK_OBJECT_HANDLE aesk, hmack, datah;
  ASSERT_EQ(RvStr(GenEc(p, s, ec, {1}, true, &ecp)), RvStr(CKR_OK));
  ASSERT_EQ(RvStr(GenRsa(p, s, rsa, {2}, &rsap)), RvStr(CKR_OK));
  ASSERT_EQ(RvStr(GenAes(p, s, aes, {3}, true, &aesk)), RvStr(CKR_OK));
  ASSERT_EQ(RvStr(GenHmac(p, s, hmac, {4}, &hmack)), RvStr(CKR_OK));
  {
    Attrs t;
    t.Ulong(CKA_CLASS, CKO_DATA).Bool(CKA_TOKEN, true).Str(CKA_LABEL, data);
    t.Raw(CKA_VALUE, ToBytes("registry data"));
    ASSERT_EQ(RvStr(p->C_CreateObject(s, t.data(), t.size(), &datah)), RvStr(CKR_OK));
  }
  const Bytes block = ToBytes("registry block!!"), msg = ToBytes("registry mac");
  const Bytes enc_before = EncryptEcb(p, s, aesk, block);
  const Bytes mac_before = Sign(p, s, CKM_SHA256_HMAC, hmack, msg);
  const Bytes point = EcPointOctets(Attr(p, s, ecp.pub, CKA_EC_POINT));
  const Seen before = ListAll(p, s);
  EXPECT_EQ(before.labels.size(), 7u);
  Fini();

  // Stop the runner's agent; start another on the same state and members.
  const pid_t first = static_cast<pid_t>(std::atoi(Env("HSMUX_AGENT_PID").c_str()));
  ASSERT_GT(first, 0);
  ASSERT_TRUE(KillAndWait(first, SIGTERM, 20000)) << "the first agent did not stop";
  {
    AgentProcess agent("hsmuxd-registry-2.log");
    ASSERT_TRUE(agent.Start()) << ReadFile(agent.log_path());
    ASSERT_NO_FATAL_FAILURE(Init());
    const Seen after = ListAll(p, s);
    EXPECT_EQ(after.labels, before.labels);
    // Usable: sign, MAC, encrypt give what they gave before.
    auto priv = FindLabelClass(p, s, ec, CKO_PRIVATE_KEY);
    ASSERT_EQ(priv.size(), 1u);
    const Bytes digest = Sha256(ToBytes("after restart"));
    CK_RV rv;
    for (int i = 0; i < 6; ++i) {  // several, so that routing visits every member
      Bytes sig = Sign(p, s, CKM_ECDSA, priv[0], digest, &rv);
      EXPECT_EQ(RvStr(rv), RvStr(CKR_OK));
      EXPECT_TRUE(OpenSslVerifyEcdsa(point, digest, sig));
    }
    auto rpriv = FindLabelClass(p, s, rsa, CKO_PRIVATE_KEY);
    auto rpub = FindLabelClass(p, s, rsa, CKO_PUBLIC_KEY);
    ASSERT_EQ(rpriv.size(), 1u);
    ASSERT_EQ(rpub.size(), 1u);
    Bytes rsig = Sign(p, s, CKM_SHA256_RSA_PKCS, rpriv[0], msg, &rv);
    EXPECT_EQ(RvStr(Verify(p, s, CKM_SHA256_RSA_PKCS, rpub[0], msg, rsig)), RvStr(CKR_OK));
    auto a2 = FindLabel(p, s, aes);
    auto h2 = FindLabel(p, s, hmac);
    ASSERT_EQ(a2.size(), 1u);
    ASSERT_EQ(h2.size(), 1u);
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(Hex(EncryptEcb(p, s, a2[0], block)), Hex(enc_before));
      EXPECT_EQ(Hex(Sign(p, s, CKM_SHA256_HMAC, h2[0], msg)), Hex(mac_before));
    }
    const std::string st = Status();
    std::printf("[status after restart, nothing foreign]\n%s\n", st.c_str());
    EXPECT_EQ(CountBefore(st, "unproven"), 0) << st;
    EXPECT_EQ(CountBefore(st, "ambiguous"), 0) << st;
    Fini();

    // Objects made directly on members, behind the agent's back:
    //  only-on-a  an AES key on member-a alone;
    //  twins      two different AES keys, same label and ID, on a and b;
    //  unprovable a generic secret (derive only: nothing to compare) on a, b, c;
    //  dup        the same AES value twice on member-a and once on member-b.
    CK_OBJECT_HANDLE h;
    const Bytes v_only = RandomBytes(32), v_twin_a = RandomBytes(32), v_twin_b = RandomBytes(32),
                v_unprov = RandomBytes(32), v_dup = RandomBytes(32);
    ASSERT_EQ(
        RvStr(m.CreateSecret(0, CKK_AES, "only-on-a", {0x0a}, v_only, true, false, false, &h)),
        RvStr(CKR_OK));
    ASSERT_EQ(RvStr(m.CreateSecret(0, CKK_AES, "twins", {0x22}, v_twin_a, true, false, false, &h)),
              RvStr(CKR_OK));
    ASSERT_EQ(RvStr(m.CreateSecret(1, CKK_AES, "twins", {0x22}, v_twin_b, true, false, false, &h)),
              RvStr(CKR_OK));
    for (size_t i = 0; i < 3; ++i) {
      ASSERT_EQ(RvStr(m.CreateSecret(i, CKK_GENERIC_SECRET, "unprovable", {0x33}, v_unprov, false,
                                     false, true, &h)),
                RvStr(CKR_OK));
    }
    for (size_t i : {0, 0, 1}) {
      ASSERT_EQ(RvStr(m.CreateSecret(i, CKK_AES, "dup", {0x44}, v_dup, true, false, false, &h)),
                RvStr(CKR_OK));
    }
    ASSERT_TRUE(agent.Stop());
  }
  {
    AgentProcess agent("hsmuxd-registry-3.log");
    ASSERT_TRUE(agent.Start()) << ReadFile(agent.log_path());
    const std::string st = Status();
    std::printf("[status with foreign objects]\n%s\n", st.c_str());
    EXPECT_GT(CountBefore(st, "unproven"), 0) << st;
    EXPECT_GT(CountBefore(st, "ambiguous"), 0) << st;
    {
      const std::string log = ReadFile(agent.log_path());
      std::printf("[agent log: registry lines]\n");
      size_t pos = 0;
      while ((pos = log.find('\n', pos)) != std::string::npos) {
        size_t end = log.find('\n', pos + 1);
        std::string line = log.substr(pos + 1, end == std::string::npos ? end : end - pos - 1);
        if (line.find("registry") != std::string::npos ||
            line.find("kept apart") != std::string::npos) {
          std::printf("  %s\n", line.c_str());
        }
        pos = end == std::string::npos ? log.size() : end;
      }
    }
    ASSERT_NO_FATAL_FAILURE(Init());
    // The objects made through hsmux are still merged: once each.
    const Seen again = ListAll(p, s);
    for (const std::string& l : before.labels) {
      EXPECT_EQ(std::count(again.labels.begin(), again.labels.end(), l), 1) << l;
    }
    // The twins are two objects, each the key of its own member.
    auto twins = FindLabel(p, s, "twins");
    ASSERT_EQ(twins.size(), 2u) << "twins merged (or lost)";
    const Bytes e0 = EncryptEcb(p, s, twins[0], block), e1 = EncryptEcb(p, s, twins[1], block);
    EXPECT_EQ(e0.size(), 16u);
    EXPECT_EQ(e1.size(), 16u);
    EXPECT_NE(Hex(e0), Hex(e1));
    const Bytes direct_a = EncryptEcb(m.fl(), m.s(0), m.Label(0, "twins").at(0), block);
    const Bytes direct_b = EncryptEcb(m.fl(), m.s(1), m.Label(1, "twins").at(0), block);
    for (int i = 0; i < 3; ++i) {  // stable: always routed to the member that holds it
      const Bytes r0 = EncryptEcb(p, s, twins[0], block), r1 = EncryptEcb(p, s, twins[1], block);
      EXPECT_EQ(Hex(r0), Hex(e0));
      EXPECT_EQ(Hex(r1), Hex(e1));
    }
    EXPECT_TRUE((Hex(e0) == Hex(direct_a) && Hex(e1) == Hex(direct_b)) ||
                (Hex(e0) == Hex(direct_b) && Hex(e1) == Hex(direct_a)));
    // only-on-a: one object, served by member-a.
    auto only = FindLabel(p, s, "only-on-a");
    ASSERT_EQ(only.size(), 1u);
    const Bytes direct_only = EncryptEcb(m.fl(), m.s(0), m.Label(0, "only-on-a").at(0), block);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(Hex(EncryptEcb(p, s, only[0], block)), Hex(direct_only));
    // Unprovable and duplicated objects are not merged.
    EXPECT_EQ(FindLabel(p, s, "unprovable").size(), 3u);
    EXPECT_EQ(FindLabel(p, s, "dup").size(), 3u);
    Fini();
    EXPECT_TRUE(agent.Stop());
  }
}

}  // namespace
}  // namespace hsmux::grouptest
