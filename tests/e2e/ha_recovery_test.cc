// Recovery (DESIGN §5, issue 4 item 4): a member that comes back is caught up
// from the journal (keys created while it was down are on it afterwards, keys
// destroyed are gone) and readmitted by itself; `hsmuxctl drain` keeps every
// call off a member and `hsmuxctl readmit` brings it back caught up. Members
// are checked directly through SoftHSM and through the testwrap stats.
// `hsmuxctl status` lists a member's failure and the calls it failed under
// "recent errors", without key labels or PINs.
#include <gtest/gtest.h>

#include <chrono>
#include <ctime>
#include <sstream>
#include <thread>
#include <vector>

#include "group_util.h"
#include "ha_fixture.h"

namespace hsmux::grouptest {
namespace {

class HaRecovery : public HaTest {
 protected:
  // A drained member stays out until readmitted by hand.
  void BeforeHealthyWait() override {
    std::string out;
    for (const char* m : {"a", "b", "c"}) {
      if (GroupStatus()[m].state == "DRAINED") {
        Hsmuxctl(std::string("readmit --slot 1 --member ") + m, &out);
      }
    }
  }

  // AES-ECB of one block with the key `label` on member i (direct).
  static Bytes EcbOn(size_t i, const std::string& label, CK_RV* rv) {
    Members& m = Members::Get();
    auto keys = m.LabelClass(i, label, CKO_SECRET_KEY);
    if (keys.size() != 1) {
      *rv = CKR_KEY_HANDLE_INVALID;
      return {};
    }
    return EncryptEcb(m.fl(), m.s(i), keys[0], ToBytes("one block, 16 b."), rv);
  }
  CK_RV SignOnce(CK_OBJECT_HANDLE priv, const Bytes& point, const std::string& what) {
    const Bytes digest = Sha256(ToBytes(what));
    CK_RV rv;
    Bytes sig = Sign(p_, s_, CKM_ECDSA, priv, digest, &rv);
    if (rv == CKR_OK && !OpenSslVerifyEcdsa(point, digest, sig)) return CKR_SIGNATURE_INVALID;
    return rv;
  }
};

TEST_F(HaRecovery, CatchUpAfterPowerOff) {
  Members& m = Members::Get();
  ASSERT_TRUE(m.ok()) << m.error();
  // Made before the outage, destroyed during it.
  const std::string doomed = Unique("recover-doomed");
  CK_OBJECT_HANDLE doomed_h;
  ASSERT_EQ(GenAes(p_, s_, doomed, ToBytes(doomed), true, &doomed_h), CKR_OK);
  const std::string doomed_ec = Unique("recover-doomed-ec");
  Pair doomed_pair;
  ASSERT_EQ(GenEc(p_, s_, doomed_ec, ToBytes(doomed_ec), true, &doomed_pair), CKR_OK);
  for (size_t i = 0; i < 3; ++i) ASSERT_EQ(m.Label(i, doomed).size(), 1u) << kMembers[i];

  ASSERT_TRUE(TestwrapCtl("member-c", {"power=off"}));
  ASSERT_TRUE(WaitMemberState("c", "OUT", 10000));

  const std::string made = Unique("recover-made");
  CK_OBJECT_HANDLE made_h;
  ASSERT_EQ(GenAes(p_, s_, made, ToBytes(made), true, &made_h), CKR_OK);
  const std::string made_ec = Unique("recover-made-ec");
  Pair made_pair;
  ASSERT_EQ(GenEc(p_, s_, made_ec, ToBytes(made_ec), true, &made_pair), CKR_OK);
  ASSERT_EQ(p_->C_DestroyObject(s_, doomed_h), CKR_OK);
  ASSERT_EQ(p_->C_DestroyObject(s_, doomed_pair.priv), CKR_OK);
  ASSERT_EQ(p_->C_DestroyObject(s_, doomed_pair.pub), CKR_OK);
  // While it is out, member-c (read directly, not through the agent) has
  // missed both.
  EXPECT_TRUE(m.Label(2, made).empty());
  EXPECT_EQ(m.Label(2, doomed).size(), 1u);
  EXPECT_EQ(m.Label(2, doomed_ec).size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(m.Label(i, made).size(), 1u) << kMembers[i];
    EXPECT_TRUE(m.Label(i, doomed).empty()) << kMembers[i];
  }

  ASSERT_TRUE(TestwrapCtl("member-c", {"power=on"}));
  const auto back = std::chrono::steady_clock::now();
  std::string raw;
  ASSERT_TRUE(WaitAllHealthy(30000, &raw)) << raw;
  std::printf("RECOVERY member-c readmitted %.2f s after power on\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - back).count());
  // Caught up: the new keys are on it (and work the same), the destroyed gone.
  EXPECT_EQ(m.Label(2, made).size(), 1u);
  // One of each half (the halves share a fingerprint: the journal must not
  // mix them up).
  EXPECT_EQ(m.LabelClass(2, made_ec, CKO_PUBLIC_KEY).size(), 1u);
  EXPECT_EQ(m.LabelClass(2, made_ec, CKO_PRIVATE_KEY).size(), 1u);
  EXPECT_TRUE(m.Label(2, doomed).empty());
  EXPECT_TRUE(m.Label(2, doomed_ec).empty());
  EXPECT_TRUE(m.Pending(2).empty());
  CK_RV rv0, rv2;
  const Bytes on_a = EcbOn(0, made, &rv0), on_c = EcbOn(2, made, &rv2);
  ASSERT_EQ(rv0, CKR_OK);
  ASSERT_EQ(rv2, CKR_OK);
  EXPECT_EQ(on_a, on_c);
  // And it serves the key made while it was out: with a and b off, only c can.
  const Bytes point = EcPointOctets(Attr(p_, s_, made_pair.pub, CKA_EC_POINT));
  ASSERT_TRUE(TestwrapCtl("member-a", {"power=off"}));
  ASSERT_TRUE(TestwrapCtl("member-b", {"power=off"}));
  for (int i = 0; i < 5; ++i) EXPECT_EQ(SignOnce(made_pair.priv, point, "on c"), CKR_OK) << i;
}

TEST_F(HaRecovery, DrainAndReadmitByHand) {
  Members& m = Members::Get();
  ASSERT_TRUE(m.ok()) << m.error();
  const std::string label = Unique("drain-ec");
  Pair ec;
  ASSERT_EQ(GenEc(p_, s_, label, ToBytes(label), true, &ec), CKR_OK);
  const Bytes point = EcPointOctets(Attr(p_, s_, ec.pub, CKA_EC_POINT));

  std::string out;
  ASSERT_EQ(Hsmuxctl("drain --slot 1 --member b", &out), 0) << out;
  auto st = GroupStatus(&out);
  EXPECT_EQ(st["b"].state, "DRAINED") << out;
  // Let the drain's own session closes settle, then nothing more may reach b.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const uint64_t calls_b = ReadStats("member-b").Get("total_calls");
  const uint64_t calls_a = ReadStats("member-a").Get("total_calls");

  for (int i = 0; i < 30; ++i) {
    EXPECT_EQ(SignOnce(ec.priv, point, "drained " + std::to_string(i)), CKR_OK) << i;
  }
  const std::string while_drained = Unique("drain-made");
  CK_OBJECT_HANDLE k;
  ASSERT_EQ(GenAes(p_, s_, while_drained, ToBytes(while_drained), true, &k), CKR_OK);
  // Longer than the probe interval (200 ms): the monitor leaves a drained
  // member alone too.
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  EXPECT_EQ(ReadStats("member-b").Get("total_calls"), calls_b) << ReadStats("member-b").raw;
  EXPECT_GT(ReadStats("member-a").Get("total_calls"), calls_a);
  EXPECT_TRUE(m.Label(1, while_drained).empty());
  EXPECT_EQ(GroupStatus()["b"].state, "DRAINED");

  ASSERT_EQ(Hsmuxctl("readmit --slot 1 --member b", &out), 0) << out;
  st = GroupStatus(&out);
  EXPECT_EQ(st["b"].state, "healthy") << out;
  EXPECT_EQ(m.Label(1, while_drained).size(), 1u);
  CK_RV rv0, rv1;
  const Bytes on_a = EcbOn(0, while_drained, &rv0), on_b = EcbOn(1, while_drained, &rv1);
  ASSERT_EQ(rv0, CKR_OK);
  ASSERT_EQ(rv1, CKR_OK);
  EXPECT_EQ(on_a, on_b);
  // Calls reach b again.
  const uint64_t signs_b = ReadStats("member-b").Calls("C_Sign");
  for (int i = 0; i < 30; ++i) {
    EXPECT_EQ(SignOnce(ec.priv, point, "readmitted " + std::to_string(i)), CKR_OK) << i;
  }
  bool grew = false;
  for (int waited = 0; waited < 2000 && !grew; waited += 50) {
    grew = ReadStats("member-b").Calls("C_Sign") > signs_b;
    if (!grew) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(grew) << ReadStats("member-b").raw;
}

// The recent-error lines of `hsmuxctl status` stamped at or after `since`
// ("2026-01-31T12:00:00Z": the same format sorts as text).
std::vector<std::string> RecentErrorLines(const std::string& status, const std::string& since) {
  std::vector<std::string> lines;
  std::istringstream in(status);
  bool in_errors = false;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("recent errors", 0) == 0) {
      in_errors = true;
      continue;
    }
    if (!in_errors || line.rfind("  ", 0) != 0) continue;
    if (line.substr(2, since.size()) >= since) lines.push_back(line.substr(2));
  }
  return lines;
}

std::string UtcNow() {
  const std::time_t t = std::time(nullptr);
  std::tm tm_utc{};
  gmtime_r(&t, &tm_utc);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm_utc);
  return buf;
}

bool AnyContains(const std::vector<std::string>& lines, const std::string& a,
                 const std::string& b = "") {
  for (const std::string& l : lines) {
    if (l.find(a) != std::string::npos && l.find(b) != std::string::npos) return true;
  }
  return false;
}

TEST_F(HaRecovery, StatusListsRecentErrors) {
  const std::string since = UtcNow();
  const std::string label = Unique("errors-ec");
  Pair ec;
  ASSERT_EQ(GenEc(p_, s_, label, ToBytes(label), true, &ec), CKR_OK);
  const Bytes point = EcPointOctets(Attr(p_, s_, ec.pub, CKA_EC_POINT));

  // A member fails under calls: it is taken out, the calls move on.
  ASSERT_TRUE(TestwrapCtl("member-b", {"power=off"}));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(SignOnce(ec.priv, point, "b off"), CKR_OK) << i;
  ASSERT_TRUE(WaitMemberState("b", "OUT", 10000));
  std::string out;
  ASSERT_EQ(Hsmuxctl("status", &out), 0) << out;
  std::vector<std::string> lines = RecentErrorLines(out, since);
  EXPECT_TRUE(AnyContains(lines, " member_out hsmux-demo/b: taken out: ")) << out;

  // No member left: the client's call answers CKR_DEVICE_ERROR, and says so.
  ASSERT_TRUE(TestwrapCtl("member-a", {"power=off"}));
  ASSERT_TRUE(TestwrapCtl("member-c", {"power=off"}));
  EXPECT_EQ(SignOnce(ec.priv, point, "all off"), CKR_DEVICE_ERROR);
  ASSERT_EQ(Hsmuxctl("status", &out), 0) << out;
  lines = RecentErrorLines(out, since);
  EXPECT_TRUE(AnyContains(lines, " call: C_Sign", " answered CKR_DEVICE_ERROR to cn:client-1"))
      << out;
  EXPECT_TRUE(AnyContains(lines, " member_out hsmux-demo/a: taken out: ")) << out;
  // Bounded, and nothing secret: no key label, no PIN.
  EXPECT_LE(lines.size(), 20u) << out;
  EXPECT_EQ(out.find(label), std::string::npos) << out;
  EXPECT_EQ(out.find(ClientPin()), std::string::npos);
  EXPECT_EQ(out.find(FirstLine(Env("HSMUX_TEST_DIR") + "/secrets/member-pin")), std::string::npos);
}

}  // namespace
}  // namespace hsmux::grouptest
