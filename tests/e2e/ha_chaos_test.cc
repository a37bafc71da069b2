// The chaos test of issue 4 (DESIGN §5): three members, 8 client threads
// signing (P-256 ECDSA, RSA-2048 SHA256-RSA-PKCS) and encrypting (AES-GCM
// with a caller IV) for 30 s while member a is powered off (10 s → 20 s)
// and member b hangs (15 s → 20 s); one more client creates and destroys
// token keys throughout. No client call may fail; every signature must
// verify with OpenSSL; afterwards every member holds the same objects.
//
// Runs under with_agent.sh with HSMUX_WITH_TESTWRAP=1 and quick detection
// (see ha.cmake). The figures (operations, failures, worst stall, time to
// readmit) are printed, never asserted.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>

#include "group_util.h"

namespace hsmux::grouptest {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kThreads = 8;
constexpr auto kRun = std::chrono::seconds(30);
// Multi-part HMAC operations the replay witness keeps open, and their parts.
constexpr int kWitnessOps = 10;
constexpr int kWitnessParts = 40;
constexpr auto kPowerOffA = std::chrono::seconds(10);
constexpr auto kHangB = std::chrono::seconds(15);
constexpr auto kBack = std::chrono::seconds(20);

struct Failure {
  double at_s;
  std::string who;
  std::string what;
  CK_RV rv;
};

class Recorder {
 public:
  explicit Recorder(Clock::time_point start) : start_(start) {}
  // Times `call` and records its outcome; returns its rv.
  template <typename Fn>
  CK_RV Run(const std::string& who, const std::string& what, Fn call) {
    const auto t0 = Clock::now();
    CK_RV rv = call();
    const auto t1 = Clock::now();
    const double ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
    std::lock_guard<std::mutex> l(mu_);
    ++ops_;
    if (ms > worst_ms_) {
      worst_ms_ = ms;
      worst_what_ = what + " by " + who + " at " +
                    std::to_string(std::chrono::duration<double>(t0 - start_).count()) + " s";
    }
    if (rv != CKR_OK) {
      failures_.push_back({std::chrono::duration<double>(t0 - start_).count(), who, what, rv});
    }
    return rv;
  }
  void Bad(const std::string& who, const std::string& what) {
    std::lock_guard<std::mutex> l(mu_);
    bad_.push_back(who + ": " + what);
  }
  uint64_t ops() {
    std::lock_guard<std::mutex> l(mu_);
    return ops_;
  }
  std::vector<Failure> failures() {
    std::lock_guard<std::mutex> l(mu_);
    return failures_;
  }
  std::vector<std::string> bad() {
    std::lock_guard<std::mutex> l(mu_);
    return bad_;
  }
  double worst_ms() {
    std::lock_guard<std::mutex> l(mu_);
    return worst_ms_;
  }
  std::string worst_what() {
    std::lock_guard<std::mutex> l(mu_);
    return worst_what_;
  }

 private:
  const Clock::time_point start_;
  std::mutex mu_;
  uint64_t ops_ = 0;
  double worst_ms_ = 0;
  std::string worst_what_;
  std::vector<Failure> failures_;
  std::vector<std::string> bad_;  // wrong results (signature, round trip)
};

Bytes GcmEncrypt(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, bool decrypt,
                 const Bytes& iv, const Bytes& in, CK_RV* rv_out) {
  CK_GCM_PARAMS gcm = {};
  gcm.pIv = const_cast<CK_BYTE*>(iv.data());
  gcm.ulIvLen = iv.size();
  gcm.ulIvBits = iv.size() * 8;
  gcm.ulTagBits = 128;
  CK_MECHANISM m = {CKM_AES_GCM, &gcm, sizeof(gcm)};
  CK_RV rv = decrypt ? p->C_DecryptInit(s, &m, key) : p->C_EncryptInit(s, &m, key);
  Bytes out(in.size() + 32);
  if (rv == CKR_OK) {
    CK_ULONG len = out.size();
    rv = decrypt ? p->C_Decrypt(s, const_cast<CK_BYTE*>(in.data()), in.size(), out.data(), &len)
                 : p->C_Encrypt(s, const_cast<CK_BYTE*>(in.data()), in.size(), out.data(), &len);
    out.resize(rv == CKR_OK ? len : 0);
  } else {
    out.clear();
  }
  *rv_out = rv;
  return out;
}

// Token objects of member i as sorted (class, label, id) tuples.
std::vector<std::tuple<CK_ULONG, std::string, std::string>> Inventory(Members& m, size_t i) {
  Attrs t;
  t.Bool(CKA_TOKEN, true);
  std::vector<std::tuple<CK_ULONG, std::string, std::string>> out;
  for (CK_OBJECT_HANDLE h : Find(m.fl(), m.s(i), t)) {
    Bytes cls = Attr(m.fl(), m.s(i), h, CKA_CLASS);
    CK_ULONG c = 0;
    if (cls.size() == sizeof(c)) std::memcpy(&c, cls.data(), sizeof(c));
    out.emplace_back(c, AttrStr(m.fl(), m.s(i), h, CKA_LABEL),
                     Hex(Attr(m.fl(), m.s(i), h, CKA_ID)));
  }
  std::sort(out.begin(), out.end());
  return out;
}

TEST(HaChaos, NoClientNoticesMemberFailures) {
  CK_FUNCTION_LIST* p = Module();
  ASSERT_NE(p, nullptr);
  ASSERT_EQ(p->C_Initialize(nullptr), CKR_OK);
  const std::string pin = ClientPin();
  CK_RV rv;
  CK_SESSION_HANDLE admin = OpenSession(p, pin, &rv);
  ASSERT_EQ(rv, CKR_OK);

  // The keys the workers use, made through hsmux (replicated to a, b, c).
  const std::string ec_label = Unique("chaos-ec"), rsa_label = Unique("chaos-rsa"),
                    aes_label = Unique("chaos-aes");
  Pair ec, rsa;
  CK_OBJECT_HANDLE aes = CK_INVALID_HANDLE;
  ASSERT_EQ(GenEc(p, admin, ec_label, ToBytes(ec_label), true, &ec), CKR_OK);
  ASSERT_EQ(GenRsa(p, admin, rsa_label, ToBytes(rsa_label), &rsa), CKR_OK);
  ASSERT_EQ(GenAes(p, admin, aes_label, ToBytes(aes_label), true, &aes), CKR_OK);
  const Bytes point = EcPointOctets(Attr(p, admin, ec.pub, CKA_EC_POINT));
  const Bytes modulus = Attr(p, admin, rsa.pub, CKA_MODULUS);
  const Bytes exponent = Attr(p, admin, rsa.pub, CKA_PUBLIC_EXPONENT);
  ASSERT_EQ(point.size(), 65u);
  ASSERT_EQ(modulus.size(), 256u);

  // The replay witness's HMAC key, from a known value so OpenSSL can check.
  const Bytes hmac_value = RandomBytes(32);
  SecretUse sign_use;
  sign_use.sign = true;
  const CK_OBJECT_HANDLE hmac = CreateTokenSecret(p, admin, CKK_GENERIC_SECRET, hmac_value,
                                                  sign_use, Unique("chaos-hmac"), &rv);
  ASSERT_EQ(rv, CKR_OK);

  std::vector<CK_SESSION_HANDLE> sessions;
  for (int t = 0; t < kThreads + 1 + kWitnessOps; ++t) {
    sessions.push_back(OpenSession(p, "", &rv));
    ASSERT_EQ(rv, CKR_OK);
  }

  const Clock::time_point start = Clock::now();
  const Clock::time_point end = start + kRun;
  Recorder rec(start);
  std::atomic<uint64_t> signatures{0}, verified{0}, roundtrips{0};

  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      const CK_SESSION_HANDLE s = sessions[t];
      const std::string who = "worker " + std::to_string(t);
      for (uint64_t n = 0; Clock::now() < end; ++n) {
        const Bytes data = ToBytes("chaos " + std::to_string(t) + "/" + std::to_string(n));
        switch ((n + t) % 3) {
          case 0: {
            const Bytes digest = Sha256(data);
            Bytes sig;
            if (rec.Run(who, "ECDSA sign", [&] {
                  CK_RV r;
                  sig = Sign(p, s, CKM_ECDSA, ec.priv, digest, &r);
                  return r;
                }) != CKR_OK) {
              break;
            }
            ++signatures;
            if (OpenSslVerifyEcdsa(point, digest, sig)) {
              ++verified;
            } else {
              rec.Bad(who, "ECDSA signature does not verify: " + Hex(sig));
            }
            break;
          }
          case 1: {
            Bytes sig;
            if (rec.Run(who, "SHA256-RSA-PKCS sign", [&] {
                  CK_RV r;
                  sig = Sign(p, s, CKM_SHA256_RSA_PKCS, rsa.priv, data, &r);
                  return r;
                }) != CKR_OK) {
              break;
            }
            ++signatures;
            if (OpenSslVerifyRsaSha256(modulus, exponent, data, sig)) {
              ++verified;
            } else {
              rec.Bad(who, "RSA signature does not verify: " + Hex(sig));
            }
            break;
          }
          default: {
            const Bytes iv = RandomBytes(12);
            Bytes ct, pt;
            if (rec.Run(who, "AES-GCM encrypt", [&] {
                  CK_RV r;
                  ct = GcmEncrypt(p, s, aes, false, iv, data, &r);
                  return r;
                }) != CKR_OK) {
              break;
            }
            if (rec.Run(who, "AES-GCM decrypt", [&] {
                  CK_RV r;
                  pt = GcmEncrypt(p, s, aes, true, iv, ct, &r);
                  return r;
                }) != CKR_OK) {
              break;
            }
            if (pt == data) {
              ++roundtrips;
            } else {
              rec.Bad(who, "AES-GCM round trip differs");
            }
            break;
          }
        }
      }
    });
  }

  // The replay witness: kWitnessOps multi-part HMAC operations kept open at
  // once (each fed a part every round, finished after kWitnessParts), so
  // that each fault finds several in progress on the failing member and the
  // agent must replay them elsewhere (DESIGN §5); every MAC is checked.
  std::atomic<uint64_t> macs{0};
  std::thread witness([&] {
    const std::string who = "replay witness";
    struct Op {
      bool active = false;
      int parts = 0;
      Bytes fed;
    };
    std::vector<Op> ops(kWitnessOps);
    CK_MECHANISM m = {CKM_SHA256_HMAC, nullptr, 0};
    for (uint64_t round = 0; Clock::now() < end; ++round) {
      for (int i = 0; i < kWitnessOps; ++i) {
        const CK_SESSION_HANDLE s = sessions[kThreads + 1 + i];
        Op& op = ops[i];
        if (!op.active) {
          if (rec.Run(who, "C_SignInit HMAC", [&] { return p->C_SignInit(s, &m, hmac); }) !=
              CKR_OK) {
            continue;
          }
          op = Op{true, 0, {}};
        }
        Bytes part = ToBytes("part " + std::to_string(round) + "/" + std::to_string(i) + ";");
        if (rec.Run(who, "C_SignUpdate HMAC",
                    [&] { return p->C_SignUpdate(s, part.data(), part.size()); }) != CKR_OK) {
          op.active = false;
          continue;
        }
        op.fed.insert(op.fed.end(), part.begin(), part.end());
        if (++op.parts < kWitnessParts) continue;
        Bytes mac(32);
        CK_ULONG len = mac.size();
        op.active = false;
        if (rec.Run(who, "C_SignFinal HMAC", [&] { return p->C_SignFinal(s, mac.data(), &len); }) !=
            CKR_OK) {
          continue;
        }
        mac.resize(len);
        Bytes expected(32);
        unsigned int elen = 0;
        HMAC(EVP_sha256(), hmac_value.data(), static_cast<int>(hmac_value.size()), op.fed.data(),
             op.fed.size(), expected.data(), &elen);
        expected.resize(elen);
        if (mac == expected) {
          ++macs;
        } else {
          rec.Bad(who, "HMAC differs after " + std::to_string(op.parts) + " parts");
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });

  // The key maker: a new token key (AES, every fourth an EC pair) and the
  // destruction of the one before, except every third, which is kept.
  std::vector<std::string> kept, destroyed;
  std::thread maker([&] {
    const CK_SESSION_HANDLE s = sessions[kThreads];
    const std::string who = "key maker";
    std::string prev_label;
    std::vector<CK_OBJECT_HANDLE> prev;
    for (int n = 0; Clock::now() < end; ++n) {
      const std::string label = Unique("chaos-made");
      std::vector<CK_OBJECT_HANDLE> made;
      if (n % 4 == 3) {
        Pair pair;
        if (rec.Run(who, "C_GenerateKeyPair EC",
                    [&] { return GenEc(p, s, label, ToBytes(label), true, &pair); }) == CKR_OK) {
          made = {pair.pub, pair.priv};
        }
      } else {
        CK_OBJECT_HANDLE k = CK_INVALID_HANDLE;
        if (rec.Run(who, "C_GenerateKey AES",
                    [&] { return GenAes(p, s, label, ToBytes(label), true, &k); }) == CKR_OK) {
          made = {k};
        }
      }
      if (!prev.empty()) {
        if (n % 3 == 0) {
          kept.push_back(prev_label);
        } else {
          bool all = true;
          for (CK_OBJECT_HANDLE h : prev) {
            all &=
                rec.Run(who, "C_DestroyObject", [&] { return p->C_DestroyObject(s, h); }) == CKR_OK;
          }
          (all ? destroyed : kept).push_back(prev_label);
        }
      }
      prev = made;
      prev_label = label;
    }
    if (!prev.empty()) kept.push_back(prev_label);
  });

  // The faults.
  std::string fault_log;
  auto at = [&](Clock::duration d) { std::this_thread::sleep_until(start + d); };
  at(kPowerOffA);
  EXPECT_TRUE(TestwrapCtl("member-a", {"power=off"}));
  at(kHangB);
  EXPECT_TRUE(TestwrapCtl("member-b", {"hang=1"}));
  std::this_thread::sleep_for(std::chrono::seconds(2));
  std::string mid;
  GroupStatus(&mid);
  at(kBack);
  EXPECT_TRUE(TestwrapCtl("member-b", {"hang=0"}));
  EXPECT_TRUE(TestwrapCtl("member-a", {"power=on"}));
  const Clock::time_point back = Clock::now();

  for (auto& w : workers) w.join();
  maker.join();
  witness.join();

  std::string status;
  const bool healthy = WaitAllHealthy(60000, &status);
  const double readmit_s = std::chrono::duration<double>(Clock::now() - back).count();
  auto members = GroupStatus(&status);
  uint64_t failovers = 0, replays = 0;
  for (const auto& [name, m] : members) {
    failovers += m.failovers;
    replays += m.replays;
  }

  // The figures.
  const auto failures = rec.failures();
  const auto bad = rec.bad();
  std::printf(
      "CHAOS operations %llu, failed %zu, wrong results %zu, signatures %llu "
      "(verified %llu), AES-GCM round trips %llu\n",
      static_cast<unsigned long long>(rec.ops()), failures.size(), bad.size(),
      static_cast<unsigned long long>(signatures.load()),
      static_cast<unsigned long long>(verified.load()),
      static_cast<unsigned long long>(roundtrips.load()));
  std::printf("CHAOS worst client-visible stall %.0f ms (%s)\n", rec.worst_ms(),
              rec.worst_what().c_str());
  std::printf("CHAOS multi-part HMACs %llu (checked with OpenSSL), replays %llu\n",
              static_cast<unsigned long long>(macs.load()),
              static_cast<unsigned long long>(replays));
  std::printf(
      "CHAOS keys kept %zu, destroyed %zu; failovers %llu; all healthy "
      "%.1f s after the "
      "faults ended\n",
      kept.size(), destroyed.size(), static_cast<unsigned long long>(failovers),
      healthy ? readmit_s : -1.0);
  std::printf("CHAOS status at 17 s:\n%s", mid.c_str());
  std::printf("CHAOS status at the end:\n%s", status.c_str());
  for (const Failure& f : failures) {
    std::printf("CHAOS FAILED at %.3f s: %s %s -> %s\n", f.at_s, f.who.c_str(), f.what.c_str(),
                RvStr(f.rv).c_str());
  }
  for (const std::string& b : bad) std::printf("CHAOS WRONG %s\n", b.c_str());
  std::fflush(stdout);

  EXPECT_TRUE(failures.empty()) << failures.size() << " client calls failed (listed above)";
  EXPECT_TRUE(bad.empty());
  EXPECT_EQ(verified.load(), signatures.load());
  EXPECT_GT(signatures.load(), 0u);
  EXPECT_GT(roundtrips.load(), 0u);
  EXPECT_GT(failovers, 0u) << status;
  EXPECT_GT(macs.load(), 0u);
  EXPECT_GT(replays, 0u) << "no multi-part operation was replayed\n" << status;
  const std::string log = ReadFile(Env("HSMUX_TEST_DIR") + "/hsmuxd.log");
  // Both faults were noticed and the members taken out (whether a client
  // call or the periodic probe noticed first is timing).
  EXPECT_NE(log.find("member a taken out"), std::string::npos);
  EXPECT_NE(log.find("member b taken out"), std::string::npos);
  EXPECT_NE(log.find(" moves off member "), std::string::npos);
  ASSERT_TRUE(healthy) << status;

  // Every member holds the same objects, and the keys work the same.
  Members& m = Members::Get();
  ASSERT_TRUE(m.ok()) << m.error();
  const auto inv_a = Inventory(m, 0);
  EXPECT_EQ(Inventory(m, 1), inv_a);
  EXPECT_EQ(Inventory(m, 2), inv_a);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(m.Pending(i).empty()) << kMembers[i];
    for (const std::string& l : kept) EXPECT_FALSE(m.Label(i, l).empty()) << kMembers[i] << l;
    for (const std::string& l : destroyed) EXPECT_TRUE(m.Label(i, l).empty()) << kMembers[i] << l;
  }
  std::vector<std::string> aes_labels = {aes_label};
  for (const std::string& l : kept) {
    if (!m.LabelClass(0, l, CKO_SECRET_KEY).empty()) aes_labels.push_back(l);
  }
  const Bytes block = ToBytes("sixteen byte blk");
  for (const std::string& l : aes_labels) {
    Bytes first;
    for (size_t i = 0; i < 3; ++i) {
      auto keys = m.LabelClass(i, l, CKO_SECRET_KEY);
      ASSERT_EQ(keys.size(), 1u) << kMembers[i] << " " << l;
      CK_RV erv;
      Bytes out = EncryptEcb(m.fl(), m.s(i), keys[0], block, &erv);
      ASSERT_EQ(erv, CKR_OK) << kMembers[i] << " " << l;
      if (i == 0) {
        first = out;
      } else {
        EXPECT_EQ(out, first) << kMembers[i] << " " << l;
      }
    }
  }
  for (CK_SESSION_HANDLE s : sessions) p->C_CloseSession(s);
  p->C_CloseSession(admin);
  p->C_Finalize(nullptr);
}

}  // namespace
}  // namespace hsmux::grouptest
