// Single calls on a failing member (DESIGN §5, docs/ha-contract.md). A
// search on attributes the registry does not keep, C_WrapKey,
// C_GenerateRandom and C_SeedRandom run on one member with the call deadline
// and are retried on another after a device failure. Writes that start from
// an existing object (C_CopyObject, C_UnwrapKey, C_DeriveKey of token
// objects) run on a member holding it and are not retried: the client gets
// that member's rv and no member keeps anything of the write. An attribute
// change a member missed after another took it is caught up when the member
// comes back. Members fail through tests/testwrap (injected rv, hang,
// power-off); where the calls went is read from its per-member counters.
#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "group_util.h"
#include "ha_fixture.h"

namespace hsmux::grouptest {
namespace {

std::string RvArg(CK_RV rv) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "0x%lx", static_cast<unsigned long>(rv));
  return buf;
}

uint64_t Sum(const std::map<size_t, uint64_t>& m) {
  uint64_t n = 0;
  for (const auto& [i, v] : m) n += v;
  return n;
}

uint64_t TotalFailovers() { return Failovers(0) + Failovers(1) + Failovers(2); }

// AES-256 key wrap with padding (RFC 5649, CKM_AES_KEY_WRAP_PAD) by OpenSSL.
Bytes WrapPad(const Bytes& kek, const Bytes& key) {
  EVP_CIPHER_CTX* c = EVP_CIPHER_CTX_new();
  EVP_CIPHER_CTX_set_flags(c, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
  Bytes out(key.size() + 16);
  int n = 0, f = 0;
  EVP_EncryptInit_ex(c, EVP_aes_256_wrap_pad(), nullptr, kek.data(), nullptr);
  EVP_EncryptUpdate(c, out.data(), &n, key.data(), static_cast<int>(key.size()));
  EVP_EncryptFinal_ex(c, out.data() + n, &f);
  EVP_CIPHER_CTX_free(c);
  out.resize(n + f);
  return out;
}

// AES-256-ECB without padding by OpenSSL.
Bytes Ecb(const Bytes& key, const Bytes& in) {
  EVP_CIPHER_CTX* c = EVP_CIPHER_CTX_new();
  EVP_CIPHER_CTX_set_padding(c, 0);
  Bytes out(in.size() + 16);
  int n = 0, f = 0;
  EVP_EncryptInit_ex(c, EVP_aes_256_ecb(), nullptr, key.data(), nullptr);
  EVP_CIPHER_CTX_set_padding(c, 0);
  EVP_EncryptUpdate(c, out.data(), &n, in.data(), static_cast<int>(in.size()));
  EVP_EncryptFinal_ex(c, out.data() + n, &f);
  EVP_CIPHER_CTX_free(c);
  out.resize(n + f);
  return out;
}

class HaFailover : public HaTest {
 protected:
  // Makes `members` answer `rv` to every call of `fn` until cleared; the
  // probe (C_GetTokenInfo, C_GetSessionInfo) still passes, so they stay in.
  static void Fail(const std::vector<size_t>& members, const std::string& fn, CK_RV rv) {
    for (size_t i : members) {
      ASSERT_TRUE(TestwrapCtl(kMembers[i],
                              {"fail_rv=" + RvArg(rv), "fail_functions=" + fn, "fail_count=-1"}));
    }
  }

  // Runs `call` (which asserts its own result) until the members have
  // answered one of its attempts with an injected fault, at most 12 times:
  // routing rotates among equal members, so one of the first few calls
  // lands on a failing member first. Returns how many calls ran.
  template <typename Call>
  static int UntilOneMoved(Call call) {
    const uint64_t injected = Sum(InjectedFailures());
    for (int n = 1; n <= 12; ++n) {
      call();
      if (::testing::Test::HasFatalFailure()) return n;
      if (Sum(InjectedFailures()) > injected) return n;
    }
    return 12;
  }
  // Injected faults since `before` (InjectedFailures()), per member.
  static std::map<size_t, uint64_t> Since(const std::map<size_t, uint64_t>& before) {
    std::map<size_t, uint64_t> d = InjectedFailures();
    for (auto& [i, v] : d) v -= before.at(i);
    return d;
  }

  // Every member holds the same token objects (read directly), none pending.
  static void ExpectMembersAlike() {
    Members& m = Members::Get();
    ASSERT_TRUE(m.ok()) << m.error();
    std::vector<std::string> labels[3];
    for (size_t i = 0; i < 3; ++i) {
      labels[i] = m.AllLabels(i);
      std::sort(labels[i].begin(), labels[i].end());
      EXPECT_TRUE(m.Pending(i).empty()) << kMembers[i];
    }
    EXPECT_EQ(labels[0], labels[1]);
    EXPECT_EQ(labels[0], labels[2]);
  }

  // The label is on no member (read directly).
  static void ExpectNowhere(const std::string& label) {
    Members& m = Members::Get();
    ASSERT_TRUE(m.ok()) << m.error();
    for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(m.Label(i, label).empty()) << kMembers[i];
  }
  // The label is on every member (read directly), once.
  static void ExpectEverywhere(const std::string& label) {
    Members& m = Members::Get();
    ASSERT_TRUE(m.ok()) << m.error();
    for (size_t i = 0; i < 3; ++i) EXPECT_EQ(m.Label(i, label).size(), 1u) << kMembers[i];
  }
};

// ---- Retried: the same call runs again on another member ----

// A search naming a key value (which the registry does not keep) runs on a
// member; members a and b fail it, so it ends on c, and every search finds
// the key. With all three failing: CKR_DEVICE_ERROR.
TEST_F(HaFailover, SearchOnUnkeptAttributeMovesToAnotherMember) {
  const Bytes value = RandomBytes(32);
  const std::string label = Unique("search-key");
  SecretUse use;
  use.encrypt = true;
  use.extractable = true;
  CK_RV rv;
  const CK_OBJECT_HANDLE key = CreateTokenSecret(p_, s_, CKK_AES, value, use, label, &rv);
  ASSERT_EQ(rv, CKR_OK);
  auto search = [&](CK_RV* out_rv) {
    Attrs t;
    t.Raw(CKA_VALUE, value).Bool(CKA_TOKEN, true).Str(CKA_LABEL, label);
    return Find(p_, s_, t, out_rv);
  };
  // Without a fault: a member search that finds it.
  auto before = CallCounts("C_FindObjectsInit");
  auto found = search(&rv);
  ASSERT_EQ(rv, CKR_OK);
  EXPECT_EQ(found, std::vector<CK_OBJECT_HANDLE>{key});
  ASSERT_EQ(GrewOn("C_FindObjectsInit", before).size(), 1u) << "not a member search";

  Fail({0, 1}, "C_FindObjectsInit", CKR_DEVICE_ERROR);
  const uint64_t failovers = TotalFailovers();
  const auto injected_before = InjectedFailures();
  before = CallCounts("C_FindObjectsInit");
  const int runs = UntilOneMoved([&] {
    auto f = search(&rv);
    ASSERT_EQ(rv, CKR_OK);
    EXPECT_EQ(f, std::vector<CK_OBJECT_HANDLE>{key});
  });
  const auto injected = Since(injected_before);
  EXPECT_GT(injected.at(0) + injected.at(1), 0u) << "no search tried a failing member in " << runs;
  EXPECT_EQ(injected.at(2), 0u);
  EXPECT_TRUE(GrewOn("C_FindObjectsInit", before).count(2)) << "c answered no search";
  EXPECT_GT(TotalFailovers(), failovers);
  // The members only failed searches: probed, and still in.
  auto st = GroupStatus();
  for (const char* m : {"a", "b", "c"}) EXPECT_EQ(st[m].state, "healthy") << m;
  std::printf("FAILOVER search: %d searches, %lu failed on a/b and moved\n", runs,
              static_cast<unsigned long>(injected.at(0) + injected.at(1)));

  // No member left to search.
  Fail({2}, "C_FindObjectsInit", CKR_DEVICE_ERROR);
  search(&rv);
  EXPECT_EQ(rv, static_cast<CK_RV>(CKR_DEVICE_ERROR));
}

// C_WrapKey (AES key wrap with padding) moves off members that fail it; the
// wrapped key is what OpenSSL computes.
TEST_F(HaFailover, WrapKeyMovesToAnotherMember) {
  const Bytes kek_value = RandomBytes(32), key_value = RandomBytes(32);
  SecretUse wrap_use;
  wrap_use.wrap = true;
  SecretUse key_use;
  key_use.encrypt = true;
  key_use.extractable = true;
  CK_RV rv;
  const CK_OBJECT_HANDLE kek =
      CreateTokenSecret(p_, s_, CKK_AES, kek_value, wrap_use, Unique("wrap-kek"), &rv);
  ASSERT_EQ(rv, CKR_OK);
  const CK_OBJECT_HANDLE key =
      CreateTokenSecret(p_, s_, CKK_AES, key_value, key_use, Unique("wrap-target"), &rv);
  ASSERT_EQ(rv, CKR_OK);
  const Bytes expected = WrapPad(kek_value, key_value);
  ASSERT_EQ(expected.size(), 40u);
  auto wrap = [&](CK_RV* out_rv) {
    CK_MECHANISM m = {CKM_AES_KEY_WRAP_PAD, nullptr, 0};
    Bytes out(64);
    CK_ULONG len = out.size();
    *out_rv = p_->C_WrapKey(s_, &m, kek, key, out.data(), &len);
    out.resize(*out_rv == CKR_OK ? len : 0);
    return out;
  };
  Fail({0, 1}, "C_WrapKey", CKR_DEVICE_ERROR);
  const uint64_t failovers = TotalFailovers();
  const auto injected_before = InjectedFailures();
  auto before = CallCounts("C_WrapKey");
  const int runs = UntilOneMoved([&] {
    const Bytes w = wrap(&rv);
    ASSERT_EQ(rv, CKR_OK);
    EXPECT_EQ(Hex(w), Hex(expected));
  });
  const auto injected = Since(injected_before);
  EXPECT_GT(injected.at(0) + injected.at(1), 0u) << "no wrap tried a failing member in " << runs;
  EXPECT_EQ(injected.at(2), 0u);
  EXPECT_TRUE(GrewOn("C_WrapKey", before).count(2));
  EXPECT_GT(TotalFailovers(), failovers);

  Fail({2}, "C_WrapKey", CKR_DEVICE_ERROR);
  wrap(&rv);
  EXPECT_EQ(rv, static_cast<CK_RV>(CKR_DEVICE_ERROR));
}

// C_GenerateRandom and C_SeedRandom move off members that fail them.
TEST_F(HaFailover, RandomMovesToAnotherMember) {
  Fail({0, 1}, "C_GenerateRandom,C_SeedRandom", CKR_DEVICE_ERROR);
  uint64_t failovers = TotalFailovers();
  auto injected_before = InjectedFailures();
  auto before = CallCounts("C_GenerateRandom");
  std::set<Bytes> seen;
  int runs = UntilOneMoved([&] {
    Bytes r(32, 0);
    ASSERT_EQ(p_->C_GenerateRandom(s_, r.data(), r.size()), CKR_OK);
    EXPECT_NE(r, Bytes(32, 0));
    EXPECT_TRUE(seen.insert(r).second) << "the same random bytes twice";
  });
  auto injected = Since(injected_before);
  EXPECT_GT(injected.at(0) + injected.at(1), 0u) << "no call tried a failing member in " << runs;
  EXPECT_EQ(injected.at(2), 0u);
  EXPECT_TRUE(GrewOn("C_GenerateRandom", before).count(2));
  EXPECT_GT(TotalFailovers(), failovers);

  // The same for C_SeedRandom.
  failovers = TotalFailovers();
  injected_before = InjectedFailures();
  before = CallCounts("C_SeedRandom");
  const Bytes seed = ToBytes("seed material");
  runs = UntilOneMoved([&] {
    ASSERT_EQ(p_->C_SeedRandom(s_, const_cast<CK_BYTE*>(seed.data()), seed.size()), CKR_OK);
  });
  injected = Since(injected_before);
  EXPECT_GT(injected.at(0) + injected.at(1), 0u) << "no seed tried a failing member in " << runs;
  EXPECT_EQ(injected.at(2), 0u);
  EXPECT_TRUE(GrewOn("C_SeedRandom", before).count(2));
  EXPECT_GT(TotalFailovers(), failovers);

  // No member left.
  Fail({2}, "C_GenerateRandom,C_SeedRandom", CKR_DEVICE_ERROR);
  Bytes r(32);
  EXPECT_EQ(p_->C_GenerateRandom(s_, r.data(), r.size()), static_cast<CK_RV>(CKR_DEVICE_ERROR));
  EXPECT_EQ(p_->C_SeedRandom(s_, const_cast<CK_BYTE*>(seed.data()), seed.size()),
            static_cast<CK_RV>(CKR_DEVICE_ERROR));
}

// A member that does not answer in time is not asked again within the call
// (its hung worker still owns the call's buffers): CKR_DEVICE_ERROR, from
// the one member tried. Every member hangs, so whichever is picked hangs.
TEST_F(HaFailover, RandomTimeOutIsNotRetried) {
  // Idle pooled sessions on every member first: a member that hangs while
  // its session is being opened fails the acquisition, not the call, and
  // the call moves on (no worker holds its buffers yet).
  for (int i = 0; i < 6; ++i) {
    Bytes warm(8);
    ASSERT_EQ(p_->C_GenerateRandom(s_, warm.data(), warm.size()), CKR_OK);
  }
  const auto before = CallCounts("C_GenerateRandom");
  ASSERT_TRUE(TestwrapCtl(kMembers[0], {"--no-wait", "hang=1"}));
  ASSERT_TRUE(TestwrapCtl(kMembers[1], {"--no-wait", "hang=1"}));
  ASSERT_TRUE(TestwrapCtl(kMembers[2], {"hang=1"}));
  Bytes r(32);
  EXPECT_EQ(p_->C_GenerateRandom(s_, r.data(), r.size()), static_cast<CK_RV>(CKR_DEVICE_ERROR));
  EXPECT_EQ(GrewOn("C_GenerateRandom", before).size(), 1u) << "asked another member too";
}

// ---- Not retried: writes from an existing object ----

// Every member fails the call with CKR_DEVICE_MEMORY: the client gets it
// from the one member that was asked (not retried), and no member keeps any
// part of the write. Once the fault is gone the same call works and the new
// object is on every member.
TEST_F(HaFailover, CopyObjectSourceFailsNotRetried) {
  const std::string label = Unique("copy-src"), copy_label = Unique("copy-dst");
  Attrs data;
  data.Ulong(CKA_CLASS, CKO_DATA).Bool(CKA_TOKEN, true).Bool(CKA_PRIVATE, true);
  data.Str(CKA_LABEL, label).Str(CKA_APPLICATION, "ha").Str(CKA_VALUE, "copied around");
  CK_OBJECT_HANDLE src = CK_INVALID_HANDLE;
  ASSERT_EQ(p_->C_CreateObject(s_, data.data(), data.size(), &src), CKR_OK);
  auto copy = [&](CK_OBJECT_HANDLE* out) {
    Attrs t;
    t.Str(CKA_LABEL, copy_label);
    return p_->C_CopyObject(s_, src, t.data(), t.size(), out);
  };
  Fail({0, 1, 2}, "C_CopyObject", CKR_DEVICE_MEMORY);
  const auto injected_before = InjectedFailures();
  const auto before = CallCounts("C_CopyObject");
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  EXPECT_EQ(copy(&h), static_cast<CK_RV>(CKR_DEVICE_MEMORY));
  EXPECT_EQ(GrewOn("C_CopyObject", before).size(), 1u) << "retried on another member";
  EXPECT_EQ(Sum(Since(injected_before)), 1u);
  ExpectNowhere(copy_label);
  ExpectMembersAlike();

  for (const char* m : kMembers) ASSERT_TRUE(TestwrapCtl(m, {"--clear"}));
  ASSERT_EQ(copy(&h), CKR_OK);
  EXPECT_EQ(AttrStr(p_, s_, h, CKA_VALUE), "copied around");
  ExpectEverywhere(copy_label);
  ExpectMembersAlike();
}

// The source member does not answer in time: CKR_DEVICE_ERROR, not retried.
// Every member hangs (whichever is the source); powering them off ends the
// hung calls, and once they are back (caught up) none has the copy.
TEST_F(HaFailover, CopyObjectSourceTimesOutNotRetried) {
  const std::string label = Unique("copy-src"), copy_label = Unique("copy-dst");
  Attrs data;
  data.Ulong(CKA_CLASS, CKO_DATA).Bool(CKA_TOKEN, true).Bool(CKA_PRIVATE, true);
  data.Str(CKA_LABEL, label).Str(CKA_VALUE, "never copied");
  CK_OBJECT_HANDLE src = CK_INVALID_HANDLE;
  ASSERT_EQ(p_->C_CreateObject(s_, data.data(), data.size(), &src), CKR_OK);
  const auto before = CallCounts("C_CopyObject");
  // The monitor's probes hang too and take the members out after
  // probe_timeout_ms (500 ms); the copy starts well before that.
  ASSERT_TRUE(TestwrapCtl(kMembers[0], {"--no-wait", "hang=1"}));
  ASSERT_TRUE(TestwrapCtl(kMembers[1], {"--no-wait", "hang=1"}));
  ASSERT_TRUE(TestwrapCtl(kMembers[2], {"hang=1"}));
  Attrs t;
  t.Str(CKA_LABEL, copy_label);
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  EXPECT_EQ(p_->C_CopyObject(s_, src, t.data(), t.size(), &h),
            static_cast<CK_RV>(CKR_DEVICE_ERROR));
  EXPECT_EQ(GrewOn("C_CopyObject", before).size(), 1u) << "retried on another member";
  for (const char* m : kMembers) ASSERT_TRUE(TestwrapCtl(m, {"power=off"}));
  ExpectNowhere(copy_label);
  for (const char* m : kMembers) ASSERT_TRUE(TestwrapCtl(m, {"--clear"}));
  std::string raw;
  ASSERT_TRUE(WaitAllHealthy(30000, &raw)) << raw;
  ExpectNowhere(copy_label);
  ExpectMembersAlike();
}

TEST_F(HaFailover, UnwrapKeySourceFailsNotRetried) {
  const Bytes kek_value = RandomBytes(32), key_value = RandomBytes(32);
  SecretUse wrap_use;
  wrap_use.wrap = true;
  CK_RV rv;
  const CK_OBJECT_HANDLE kek =
      CreateTokenSecret(p_, s_, CKK_AES, kek_value, wrap_use, Unique("unwrap-kek"), &rv);
  ASSERT_EQ(rv, CKR_OK);
  Bytes blob = WrapPad(kek_value, key_value);
  const std::string label = Unique("unwrapped");
  auto unwrap = [&](CK_OBJECT_HANDLE* out) {
    CK_MECHANISM m = {CKM_AES_KEY_WRAP_PAD, nullptr, 0};
    Attrs t;
    t.Ulong(CKA_CLASS, CKO_SECRET_KEY).Ulong(CKA_KEY_TYPE, CKK_AES).Bool(CKA_TOKEN, true);
    t.Bool(CKA_PRIVATE, true).Bool(CKA_SENSITIVE, true).Bool(CKA_ENCRYPT, true);
    t.Bool(CKA_DECRYPT, true).Str(CKA_LABEL, label).Raw(CKA_ID, ToBytes(label));
    return p_->C_UnwrapKey(s_, &m, kek, blob.data(), blob.size(), t.data(), t.size(), out);
  };
  Fail({0, 1, 2}, "C_UnwrapKey", CKR_DEVICE_MEMORY);
  const auto injected_before = InjectedFailures();
  const auto before = CallCounts("C_UnwrapKey");
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  EXPECT_EQ(unwrap(&h), static_cast<CK_RV>(CKR_DEVICE_MEMORY));
  EXPECT_EQ(GrewOn("C_UnwrapKey", before).size(), 1u) << "retried on another member";
  EXPECT_EQ(Sum(Since(injected_before)), 1u);
  ExpectNowhere(label);
  ExpectMembersAlike();

  for (const char* m : kMembers) ASSERT_TRUE(TestwrapCtl(m, {"--clear"}));
  ASSERT_EQ(unwrap(&h), CKR_OK);
  const Bytes block = RandomBytes(16);
  EXPECT_EQ(Hex(EncryptEcb(p_, s_, h, block)), Hex(Ecb(key_value, block)));
  ExpectEverywhere(label);
  ExpectMembersAlike();
}

TEST_F(HaFailover, DeriveKeySourceFailsNotRetried) {
  const Bytes base_value = RandomBytes(32), derive_data = RandomBytes(32);
  SecretUse derive_use;
  derive_use.derive = true;
  CK_RV rv;
  const CK_OBJECT_HANDLE base =
      CreateTokenSecret(p_, s_, CKK_AES, base_value, derive_use, Unique("derive-base"), &rv);
  ASSERT_EQ(rv, CKR_OK);
  const std::string label = Unique("derived");
  auto derive = [&](CK_OBJECT_HANDLE* out) {
    CK_KEY_DERIVATION_STRING_DATA params = {const_cast<CK_BYTE*>(derive_data.data()),
                                            static_cast<CK_ULONG>(derive_data.size())};
    CK_MECHANISM m = {CKM_AES_ECB_ENCRYPT_DATA, &params, sizeof(params)};
    Attrs t;
    t.Ulong(CKA_CLASS, CKO_SECRET_KEY).Ulong(CKA_KEY_TYPE, CKK_AES).Bool(CKA_TOKEN, true);
    t.Ulong(CKA_VALUE_LEN, 32).Bool(CKA_PRIVATE, true).Bool(CKA_SENSITIVE, true);
    t.Bool(CKA_ENCRYPT, true).Bool(CKA_DECRYPT, true).Str(CKA_LABEL, label);
    t.Raw(CKA_ID, ToBytes(label));
    return p_->C_DeriveKey(s_, &m, base, t.data(), t.size(), out);
  };
  Fail({0, 1, 2}, "C_DeriveKey", CKR_DEVICE_MEMORY);
  const auto injected_before = InjectedFailures();
  const auto before = CallCounts("C_DeriveKey");
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  EXPECT_EQ(derive(&h), static_cast<CK_RV>(CKR_DEVICE_MEMORY));
  EXPECT_EQ(GrewOn("C_DeriveKey", before).size(), 1u) << "retried on another member";
  EXPECT_EQ(Sum(Since(injected_before)), 1u);
  ExpectNowhere(label);
  ExpectMembersAlike();

  for (const char* m : kMembers) ASSERT_TRUE(TestwrapCtl(m, {"--clear"}));
  ASSERT_EQ(derive(&h), CKR_OK);
  // The derived key is AES-ECB(base, data).
  const Bytes block = RandomBytes(16);
  EXPECT_EQ(Hex(EncryptEcb(p_, s_, h, block)), Hex(Ecb(Ecb(base_value, derive_data), block)));
  ExpectEverywhere(label);
  ExpectMembersAlike();
}

// ---- C_SetAttributeValue: a member fails after another took the change ----

// Members take attribute changes in order a, b, c. b hangs: a has taken the
// change, b's time-out leaves it to catch-up, c takes it; the client gets
// CKR_OK. b (powered off, which ends its hung call) still has the old
// values; when it comes back, catch-up gives it the new ones.
TEST_F(HaFailover, SetAttributeValueCaughtUpOnAMemberThatFailed) {
  Members& m = Members::Get();
  ASSERT_TRUE(m.ok()) << m.error();
  const std::string label = Unique("set-attr"), renamed = Unique("set-attr-renamed");
  SecretUse use;
  use.encrypt = true;
  CK_RV rv;
  const CK_OBJECT_HANDLE key = CreateTokenSecret(p_, s_, CKK_AES, RandomBytes(32), use, label, &rv);
  ASSERT_EQ(rv, CKR_OK);
  auto derive_on = [&](size_t i, const std::string& l) -> std::optional<bool> {
    auto h = m.LabelClass(i, l, CKO_SECRET_KEY);
    if (h.size() != 1) return std::nullopt;
    return AttrBool(m.fl(), m.s(i), h[0], CKA_DERIVE);
  };
  for (size_t i = 0; i < 3; ++i) ASSERT_EQ(derive_on(i, label), false) << kMembers[i];

  const auto before = CallCounts("C_SetAttributeValue");
  ASSERT_TRUE(TestwrapCtl("member-b", {"hang=1"}));
  Attrs change;
  change.Str(CKA_LABEL, renamed).Bool(CKA_DERIVE, true);
  EXPECT_EQ(p_->C_SetAttributeValue(s_, key, change.data(), change.size()), CKR_OK);
  // b was asked (after a took it) and did not answer.
  EXPECT_TRUE(GrewOn("C_SetAttributeValue", before, 3).count(1));
  ASSERT_TRUE(WaitMemberState("b", "OUT", 10000));
  ASSERT_TRUE(TestwrapCtl("member-b", {"power=off"}));
  // The client sees the change.
  EXPECT_EQ(AttrStr(p_, s_, key, CKA_LABEL), renamed);
  EXPECT_EQ(AttrBool(p_, s_, key, CKA_DERIVE), true);
  // a and c have it, b not (read directly).
  EXPECT_EQ(derive_on(0, renamed), true);
  EXPECT_EQ(derive_on(2, renamed), true);
  EXPECT_EQ(derive_on(1, label), false);
  EXPECT_TRUE(m.Label(1, renamed).empty());

  ASSERT_TRUE(TestwrapCtl("member-b", {"--clear"}));
  std::string raw;
  ASSERT_TRUE(WaitAllHealthy(30000, &raw)) << raw;
  EXPECT_EQ(derive_on(1, renamed), true) << "b not caught up";
  EXPECT_TRUE(m.Label(1, label).empty());
  ExpectMembersAlike();
}

// A member that answers a device error to the change after another member
// took it, but then passes the probe, must not keep serving the old values:
// it is taken out and caught up.
TEST_F(HaFailover, SetAttributeValueMissedByAMemberThatPassesTheProbe) {
  Members& m = Members::Get();
  ASSERT_TRUE(m.ok()) << m.error();
  const std::string label = Unique("set-attr-probe"), renamed = Unique("set-attr-probe-renamed");
  SecretUse use;
  use.encrypt = true;
  CK_RV rv;
  const CK_OBJECT_HANDLE key = CreateTokenSecret(p_, s_, CKK_AES, RandomBytes(32), use, label, &rv);
  ASSERT_EQ(rv, CKR_OK);
  ASSERT_TRUE(TestwrapCtl("member-b", {"fail_rv=" + RvArg(CKR_DEVICE_ERROR),
                                       "fail_functions=C_SetAttributeValue", "fail_count=1"}));
  Attrs change;
  change.Str(CKA_LABEL, renamed);
  EXPECT_EQ(p_->C_SetAttributeValue(s_, key, change.data(), change.size()), CKR_OK);
  EXPECT_EQ(AttrStr(p_, s_, key, CKA_LABEL), renamed);
  // Out at once (it passes probes, so only the missed write takes it out),
  // then back by itself, caught up.
  std::string raw;
  ASSERT_TRUE(WaitAllHealthy(30000, &raw)) << raw;
  EXPECT_EQ(m.Label(1, renamed).size(), 1u) << "b not caught up";
  EXPECT_TRUE(m.Label(1, label).empty()) << "b still serves the old label";
  ExpectMembersAlike();
}

}  // namespace
}  // namespace hsmux::grouptest
