// Routing (DESIGN §4), with HSMUX_WITH_TESTWRAP=1: equal members share the
// signatures; a slow member (latency_ms=30) gets fewer calls than each of
// the others when clients sign concurrently. Counts are the members' C_Sign
// calls from the testwrap stats.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "group_util.h"

namespace hsmux::grouptest {
namespace {

std::vector<uint64_t> SignCounts() {
  std::vector<uint64_t> out;
  for (const char* m : kMembers) out.push_back(ReadStats(m).Calls("C_Sign"));
  return out;
}

// Waits until the stats show at least `total` more C_Sign calls than `base`.
std::vector<uint64_t> DeltaAfter(const std::vector<uint64_t>& base, uint64_t total) {
  std::vector<uint64_t> d(3);
  for (int i = 0; i < 250; ++i) {
    auto now = SignCounts();
    uint64_t sum = 0;
    for (size_t k = 0; k < 3; ++k) sum += (d[k] = now[k] - base[k]);
    if (sum >= total) break;
    usleep(20 * 1000);
  }
  return d;
}

TEST(GroupRouting, EqualMembersShareAndASlowMemberGetsLess) {
  ASSERT_FALSE(Env("HSMUX_TESTWRAP_DIR").empty()) << "needs HSMUX_WITH_TESTWRAP=1";
  CK_FUNCTION_LIST* p = Module();
  ASSERT_NE(p, nullptr);
  ASSERT_EQ(RvStr(p->C_Initialize(nullptr)), RvStr(CKR_OK));
  CK_RV rv;
  CK_SESSION_HANDLE s = OpenSession(p, ClientPin(), &rv);
  ASSERT_EQ(RvStr(rv), RvStr(CKR_OK));
  const std::string label = Unique("route-ec");
  Pair k;
  ASSERT_EQ(RvStr(GenEc(p, s, label, ToBytes(label), true, &k)), RvStr(CKR_OK));
  // The key is on every member.
  ASSERT_TRUE(Members::Get().ok()) << Members::Get().error();
  for (size_t i = 0; i < 3; ++i) {
    ASSERT_EQ(Members::Get().LabelClass(i, label, CKO_PRIVATE_KEY).size(), 1u) << kMembers[i];
  }
  const Bytes point = EcPointOctets(Attr(p, s, k.pub, CKA_EC_POINT));
  usleep(100 * 1000);

  // 1. Sequential signatures spread over equal members.
  constexpr int kSequential = 300;
  auto base = SignCounts();
  for (int i = 0; i < kSequential; ++i) {
    const Bytes digest = Sha256(ToBytes("seq " + std::to_string(i)));
    Bytes sig = Sign(p, s, CKM_ECDSA, k.priv, digest, &rv);
    ASSERT_EQ(RvStr(rv), RvStr(CKR_OK)) << i;
  }
  auto d = DeltaAfter(base, kSequential);
  std::printf("[measure] equal members, %d sequential signatures: a=%llu b=%llu c=%llu\n",
              kSequential, static_cast<unsigned long long>(d[0]),
              static_cast<unsigned long long>(d[1]), static_cast<unsigned long long>(d[2]));
  EXPECT_EQ(d[0] + d[1] + d[2], static_cast<uint64_t>(kSequential));
  for (size_t i = 0; i < 3; ++i) EXPECT_GT(d[i], 0u) << kMembers[i];

  // 2. member-b slow; 8 threads sign concurrently.
  ASSERT_TRUE(TestwrapCtl("member-b", {"latency_ms=30"}));
  constexpr int kThreads = 8, kPerThread = 40;
  std::vector<CK_SESSION_HANDLE> hs;
  for (int t = 0; t < kThreads; ++t) {
    hs.push_back(OpenSession(p, "", &rv));
    ASSERT_EQ(RvStr(rv), RvStr(CKR_OK));
  }
  base = SignCounts();
  std::atomic<int> ok{0}, fail{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const Bytes digest = Sha256(ToBytes("par " + std::to_string(t * 1000 + i)));
        CK_RV r;
        Bytes sig = Sign(p, hs[t], CKM_ECDSA, k.priv, digest, &r);
        (r == CKR_OK && OpenSslVerifyEcdsa(point, digest, sig) ? ok : fail)++;
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(fail.load(), 0);
  EXPECT_EQ(ok.load(), kThreads * kPerThread);
  d = DeltaAfter(base, kThreads * kPerThread);
  std::printf(
      "[measure] member-b latency 30 ms, %d threads x %d signatures: a=%llu b=%llu "
      "c=%llu\n",
      kThreads, kPerThread, static_cast<unsigned long long>(d[0]),
      static_cast<unsigned long long>(d[1]), static_cast<unsigned long long>(d[2]));
  EXPECT_EQ(d[0] + d[1] + d[2], static_cast<uint64_t>(kThreads * kPerThread));
  EXPECT_LT(d[1], std::min(d[0], d[2]));
  TestwrapCtl("member-b", {"latency_ms=0"});
  for (CK_SESSION_HANDLE h : hs) p->C_CloseSession(h);
  p->C_DestroyObject(s, k.priv);
  p->C_DestroyObject(s, k.pub);
  p->C_Finalize(nullptr);
}

}  // namespace
}  // namespace hsmux::grouptest
