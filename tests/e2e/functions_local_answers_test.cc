// E2E: what the module answers without a round trip (module/local_answers.h,
// docs/decisions/0010-round-trips.md). Round trips are counted by the
// module itself (HSMUX_STATS_FILE, docs/decisions/0008); every test also
// checks that the Cryptoki answers are the ones the spec gives, above all
// that no error moves from C_*Init to the call after it.
#include <cstdlib>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>

#include "functions_util.h"

namespace hsmux::testing {
namespace {

class LocalAnswersTest : public P11Test {
 protected:
  void SetUp() override {
    stats_ = Env("HSMUX_TEST_DIR") + "/local-answers-stats-" + std::to_string(::getpid()) + ".json";
    ::setenv("HSMUX_STATS_FILE", stats_.c_str(), 1);
    P11Test::SetUp();
  }
  void TearDown() override {
    P11Test::TearDown();
    ::unsetenv("HSMUX_STATS_FILE");
  }

  // The module's transport round trips so far (C_GetInfo writes them out;
  // it is answered locally itself).
  long RoundTrips() {
    CK_INFO info;
    EXPECT_EQ(p->C_GetInfo(&info), CKR_OK);
    std::ifstream in(stats_);
    std::stringstream text;
    text << in.rdbuf();
    const std::string s = text.str();
    const size_t at = s.find("\"round_trips\":");
    if (at == std::string::npos) return -1;
    return std::atol(s.c_str() + at + 14);
  }

  // ECDSA over a fixed hash; the signature, or empty on an error (rv_out).
  Bytes SignOnce(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, CK_RV* init_rv, CK_RV* sign_rv) {
    CK_MECHANISM m = {CKM_ECDSA, nullptr, 0};
    *init_rv = p->C_SignInit(s, &m, key);
    if (*init_rv != CKR_OK) return {};
    Bytes sig(64);
    CK_ULONG n = sig.size();
    *sign_rv = p->C_Sign(s, kHash.data(), kHash.size(), sig.data(), &n);
    sig.resize(*sign_rv == CKR_OK ? n : 0);
    return sig;
  }
  // An EC key pair whose C_SignInit the agent has accepted once (so the
  // module may answer the next one itself).
  KeyPair AcceptedKey(CK_SESSION_HANDLE s) {
    KeyPair kp = GenEc(s);
    CK_RV init_rv = 0, sign_rv = 0;
    SignOnce(s, kp.priv, &init_rv, &sign_rv);
    EXPECT_EQ(RvStr(sign_rv), RvStr(CKR_OK));
    return kp;
  }
  bool Verifies(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pub, Bytes sig) {
    CK_MECHANISM m = {CKM_ECDSA, nullptr, 0};
    if (p->C_VerifyInit(s, &m, pub) != CKR_OK) return false;
    return p->C_Verify(s, kHash.data(), kHash.size(), sig.data(), sig.size()) == CKR_OK;
  }

  Bytes kHash = ToBytes("0123456789abcdef0123456789abcdef");
  std::string stats_;
};

TEST_F(LocalAnswersTest, SignCostsOneRoundTripOnceTheAgentAcceptedTheInit) {
  auto s = UserSession();
  KeyPair kp = GenEc(s->h());
  CK_RV init_rv = 0, sign_rv = 0;
  long before = RoundTrips();
  Bytes first = SignOnce(s->h(), kp.priv, &init_rv, &sign_rv);
  ASSERT_EQ(RvStr(init_rv), RvStr(CKR_OK));
  ASSERT_EQ(RvStr(sign_rv), RvStr(CKR_OK));
  EXPECT_EQ(RoundTrips() - before, 2) << "first use: C_SignInit and C_Sign each go to the agent";
  for (int i = 0; i < 5; ++i) {
    before = RoundTrips();
    Bytes sig = SignOnce(s->h(), kp.priv, &init_rv, &sign_rv);
    ASSERT_EQ(RvStr(init_rv), RvStr(CKR_OK));
    ASSERT_EQ(RvStr(sign_rv), RvStr(CKR_OK));
    EXPECT_EQ(RoundTrips() - before, 1) << "C_SignInit answered here, carried with C_Sign";
    EXPECT_TRUE(Verifies(s->h(), kp.pub, sig)) << "signature " << i;
  }
  // Digests the same way: the mechanism is all C_DigestInit depends on.
  CK_MECHANISM sha = {CKM_SHA256, nullptr, 0};
  for (int i = 0; i < 3; ++i) {
    before = RoundTrips();
    ASSERT_EQ(p->C_DigestInit(s->h(), &sha), CKR_OK);
    Bytes d(32);
    CK_ULONG n = d.size();
    ASSERT_EQ(p->C_Digest(s->h(), kHash.data(), kHash.size(), d.data(), &n), CKR_OK);
    EXPECT_EQ(n, 32u);
    EXPECT_EQ(RoundTrips() - before, i == 0 ? 2 : 1) << "digest " << i;
  }
}

TEST_F(LocalAnswersTest, SecondInitWhileKeptIsOperationActiveAndTheFirstGoesOn) {
  auto s = UserSession();
  KeyPair kp = AcceptedKey(s->h());
  CK_RV init_rv = 0, sign_rv = 0;
  CK_MECHANISM m = {CKM_ECDSA, nullptr, 0};
  const long before = RoundTrips();
  ASSERT_EQ(RvStr(p->C_SignInit(s->h(), &m, kp.priv)), RvStr(CKR_OK));
  EXPECT_EQ(RvStr(p->C_SignInit(s->h(), &m, kp.priv)), RvStr(CKR_OPERATION_ACTIVE));
  EXPECT_EQ(RoundTrips() - before, 0);
  // A length query keeps the operation; the real call ends it.
  CK_ULONG n = 0;
  ASSERT_EQ(RvStr(p->C_Sign(s->h(), kHash.data(), kHash.size(), nullptr, &n)), RvStr(CKR_OK));
  EXPECT_EQ(n, 64u);
  Bytes sig(n);
  ASSERT_EQ(RvStr(p->C_Sign(s->h(), kHash.data(), kHash.size(), sig.data(), &n)), RvStr(CKR_OK));
  EXPECT_TRUE(Verifies(s->h(), kp.pub, sig));
  EXPECT_EQ(RvStr(p->C_Sign(s->h(), kHash.data(), kHash.size(), sig.data(), &n)),
            RvStr(CKR_OPERATION_NOT_INITIALIZED));
}

TEST_F(LocalAnswersTest, ArgumentErrorEndsAKeptOperationWithoutARoundTrip) {
  auto s = UserSession();
  KeyPair kp = AcceptedKey(s->h());
  CK_RV init_rv = 0, sign_rv = 0;
  CK_MECHANISM m = {CKM_ECDSA, nullptr, 0};
  const long before = RoundTrips();
  ASSERT_EQ(p->C_SignInit(s->h(), &m, kp.priv), CKR_OK);
  Bytes sig(64);
  EXPECT_EQ(RvStr(p->C_Sign(s->h(), kHash.data(), kHash.size(), sig.data(), nullptr)),
            RvStr(CKR_ARGUMENTS_BAD));
  EXPECT_EQ(RoundTrips() - before, 0);
  CK_ULONG n = sig.size();
  EXPECT_EQ(RvStr(p->C_Sign(s->h(), kHash.data(), kHash.size(), sig.data(), &n)),
            RvStr(CKR_OPERATION_NOT_INITIALIZED));
  // And the next operation works.
  Bytes again = SignOnce(s->h(), kp.priv, &init_rv, &sign_rv);
  EXPECT_EQ(RvStr(sign_rv), RvStr(CKR_OK));
  EXPECT_TRUE(Verifies(s->h(), kp.pub, again));
}

// Whatever changes a C_SignInit answer reaches the module with the agent's
// next answer (the view epoch), so the error stays on C_SignInit.
TEST_F(LocalAnswersTest, InitErrorsStayOnInitAfterTheKeyChanges) {
  auto s = UserSession();
  KeyPair kp = AcceptedKey(s->h());
  CK_RV init_rv = 0, sign_rv = 0;
  // Usage switched off: CKR_KEY_FUNCTION_NOT_PERMITTED at Init.
  Attrs off;
  off.Bool(CKA_SIGN, false);
  ASSERT_EQ(p->C_SetAttributeValue(s->h(), kp.priv, off.data(), off.size()), CKR_OK);
  SignOnce(s->h(), kp.priv, &init_rv, &sign_rv);
  EXPECT_EQ(RvStr(init_rv), RvStr(CKR_KEY_FUNCTION_NOT_PERMITTED));
  // Destroyed: CKR_KEY_HANDLE_INVALID at Init.
  KeyPair other = GenEc(s->h());
  SignOnce(s->h(), other.priv, &init_rv, &sign_rv);
  ASSERT_EQ(sign_rv, CKR_OK);
  ASSERT_EQ(p->C_DestroyObject(s->h(), other.priv), CKR_OK);
  SignOnce(s->h(), other.priv, &init_rv, &sign_rv);
  EXPECT_EQ(RvStr(init_rv), RvStr(CKR_KEY_HANDLE_INVALID));
  // Another session's operation state is its own: a kept Init there does
  // not make this one's Init "active".
  Session s2(p, true);  // the instance is logged in already
  KeyPair third = GenEc(s->h());
  SignOnce(s->h(), third.priv, &init_rv, &sign_rv);
  ASSERT_EQ(sign_rv, CKR_OK);
  CK_MECHANISM m = {CKM_ECDSA, nullptr, 0};
  ASSERT_EQ(p->C_SignInit(s->h(), &m, third.priv), CKR_OK);
  EXPECT_EQ(RvStr(p->C_SignInit(s2.h(), &m, third.priv)), RvStr(CKR_OK));
  Bytes sig(64);
  CK_ULONG n = sig.size();
  EXPECT_EQ(RvStr(p->C_Sign(s2.h(), kHash.data(), kHash.size(), sig.data(), &n)), RvStr(CKR_OK));
  n = sig.size();
  EXPECT_EQ(RvStr(p->C_Sign(s->h(), kHash.data(), kHash.size(), sig.data(), &n)), RvStr(CKR_OK));
}

TEST_F(LocalAnswersTest, LogoutAndCloseAreSeenBeforeTheNextInit) {
  auto s = UserSession();
  KeyPair kp = AcceptedKey(s->h());
  CK_RV init_rv = 0, sign_rv = 0;
  // A kept Init reaches the agent before the logout does.
  CK_MECHANISM m = {CKM_ECDSA, nullptr, 0};
  ASSERT_EQ(p->C_SignInit(s->h(), &m, kp.priv), CKR_OK);
  ASSERT_EQ(p->C_Logout(s->h()), CKR_OK);
  // Not logged in: the private key is not visible to C_SignInit.
  SignOnce(s->h(), kp.priv, &init_rv, &sign_rv);
  EXPECT_NE(RvStr(init_rv), RvStr(CKR_OK)) << "the module reused an answer from before the logout";
  // A closed session is CKR_SESSION_HANDLE_INVALID at Init.
  auto s2 = UserSession();  // logs in again (the logout above)
  KeyPair kp2 = GenEc(s2->h());
  SignOnce(s2->h(), kp2.priv, &init_rv, &sign_rv);
  ASSERT_EQ(sign_rv, CKR_OK);
  const CK_SESSION_HANDLE gone = s2->h();
  ASSERT_EQ(s->Close(), CKR_OK);
  ASSERT_EQ(s2->Close(), CKR_OK);
  EXPECT_EQ(RvStr(p->C_SignInit(gone, &m, kp2.priv)), RvStr(CKR_SESSION_HANDLE_INVALID));
}

TEST_F(LocalAnswersTest, StaticInformationIsKeptAndTokenInfoIsNot) {
  CK_ULONG count = 0;
  ASSERT_EQ(p->C_GetMechanismList(kSlot, nullptr, &count), CKR_OK);
  std::vector<CK_MECHANISM_TYPE> list(count);
  long before = RoundTrips();
  ASSERT_EQ(p->C_GetMechanismList(kSlot, list.data(), &count), CKR_OK);
  CK_MECHANISM_INFO info;
  ASSERT_EQ(p->C_GetMechanismInfo(kSlot, CKM_ECDSA, &info), CKR_OK);
  EXPECT_EQ(RoundTrips() - before, 1) << "list kept; the first info asked";
  before = RoundTrips();
  CK_MECHANISM_INFO again;
  ASSERT_EQ(p->C_GetMechanismInfo(kSlot, CKM_ECDSA, &again), CKR_OK);
  EXPECT_EQ(info.flags, again.flags);
  EXPECT_EQ(info.ulMinKeySize, again.ulMinKeySize);
  EXPECT_EQ(info.ulMaxKeySize, again.ulMaxKeySize);
  EXPECT_EQ(RvStr(p->C_GetMechanismInfo(kSlot, 0x7ffffff0, &again)), RvStr(CKR_MECHANISM_INVALID));
  EXPECT_EQ(RvStr(p->C_GetMechanismList(kSlot, list.data(), nullptr)), RvStr(CKR_ARGUMENTS_BAD));
  EXPECT_EQ(RoundTrips() - before, 1) << "only the unknown mechanism went to the agent";
  // Token info carries counters and flags that change: always asked.
  CK_TOKEN_INFO ti;
  before = RoundTrips();
  ASSERT_EQ(p->C_GetTokenInfo(kSlot, &ti), CKR_OK);
  const CK_ULONG sessions = ti.ulSessionCount;
  Session s(p, false);
  ASSERT_EQ(p->C_GetTokenInfo(kSlot, &ti), CKR_OK);
  EXPECT_EQ(ti.ulSessionCount, sessions + 1);
}

TEST_F(LocalAnswersTest, ASearchCostsOneRoundTrip) {
  auto s = UserSession();
  const std::string label = UniqueLabel("find");
  for (int i = 0; i < 5; ++i) CreateData(s->h(), label, false, false, "v" + std::to_string(i));
  Attrs t;
  t.Str(CKA_LABEL, label);
  const long before = RoundTrips();
  ASSERT_EQ(p->C_FindObjectsInit(s->h(), t.data(), t.size()), CKR_OK);
  EXPECT_EQ(RvStr(p->C_FindObjectsInit(s->h(), t.data(), t.size())), RvStr(CKR_OPERATION_ACTIVE));
  std::set<CK_OBJECT_HANDLE> seen;
  CK_OBJECT_HANDLE batch[2];
  CK_ULONG got = 0;
  do {
    ASSERT_EQ(p->C_FindObjects(s->h(), batch, 2, &got), CKR_OK);
    EXPECT_LE(got, 2u);
    seen.insert(batch, batch + got);
  } while (got > 0);
  EXPECT_EQ(RvStr(p->C_FindObjects(s->h(), batch, 2, nullptr)), RvStr(CKR_ARGUMENTS_BAD));
  ASSERT_EQ(p->C_FindObjectsFinal(s->h()), CKR_OK);
  EXPECT_EQ(RoundTrips() - before, 1);
  EXPECT_EQ(seen.size(), 5u);
  for (CK_OBJECT_HANDLE h : seen) EXPECT_EQ(Attr(s->h(), h, CKA_LABEL), ToBytes(label));
  EXPECT_EQ(RvStr(p->C_FindObjects(s->h(), batch, 2, &got)), RvStr(CKR_OPERATION_NOT_INITIALIZED));
  EXPECT_EQ(RvStr(p->C_FindObjectsFinal(s->h())), RvStr(CKR_OPERATION_NOT_INITIALIZED));
  // A search on another session is its own; closing a session ends its search.
  Session other(p, false);
  ASSERT_EQ(p->C_FindObjectsInit(s->h(), t.data(), t.size()), CKR_OK);
  ASSERT_EQ(p->C_FindObjectsInit(other.h(), t.data(), t.size()), CKR_OK);
  ASSERT_EQ(p->C_FindObjects(other.h(), batch, 2, &got), CKR_OK);
  EXPECT_EQ(got, 2u);
  ASSERT_EQ(other.Close(), CKR_OK);
  ASSERT_EQ(p->C_FindObjects(s->h(), batch, 1, &got), CKR_OK);
  EXPECT_EQ(got, 1u);
  ASSERT_EQ(p->C_FindObjectsFinal(s->h()), CKR_OK);
}

TEST_F(LocalAnswersTest, ALengthQueryAndItsFetchCostOneRoundTrip) {
  auto s = UserSession();
  const std::string label = UniqueLabel("attrs");
  CK_OBJECT_HANDLE obj = CreateData(s->h(), label, false, false, "first value");
  CK_ATTRIBUTE q[2] = {{CKA_LABEL, nullptr, 0}, {CKA_VALUE, nullptr, 0}};
  long before = RoundTrips();
  ASSERT_EQ(p->C_GetAttributeValue(s->h(), obj, q, 2), CKR_OK);
  ASSERT_EQ(q[0].ulValueLen, label.size());
  ASSERT_EQ(q[1].ulValueLen, 11u);
  std::string l(q[0].ulValueLen, '\0'), v(q[1].ulValueLen, '\0');
  q[0].pValue = l.data();
  q[1].pValue = v.data();
  ASSERT_EQ(p->C_GetAttributeValue(s->h(), obj, q, 2), CKR_OK);
  EXPECT_EQ(l, label);
  EXPECT_EQ(v, "first value");
  EXPECT_EQ(RoundTrips() - before, 1);
  // Too small a buffer: the spec's answer, from the agent.
  CK_BYTE tiny[2];
  CK_ATTRIBUTE small = {CKA_VALUE, tiny, sizeof(tiny)};
  EXPECT_EQ(RvStr(p->C_GetAttributeValue(s->h(), obj, &small, 1)), RvStr(CKR_BUFFER_TOO_SMALL));
  EXPECT_EQ(small.ulValueLen, CK_UNAVAILABLE_INFORMATION);
  // A change between the query and the fetch is seen by the fetch.
  CK_ATTRIBUTE len = {CKA_LABEL, nullptr, 0};
  ASSERT_EQ(p->C_GetAttributeValue(s->h(), obj, &len, 1), CKR_OK);
  Attrs change;
  change.Str(CKA_LABEL, label + "-renamed");
  ASSERT_EQ(p->C_SetAttributeValue(s->h(), obj, change.data(), change.size()), CKR_OK);
  std::string big(128, '\0');
  CK_ATTRIBUTE fetch = {CKA_LABEL, big.data(), big.size()};
  ASSERT_EQ(p->C_GetAttributeValue(s->h(), obj, &fetch, 1), CKR_OK);
  EXPECT_EQ(big.substr(0, fetch.ulValueLen), label + "-renamed");
  // A sensitive attribute stays unavailable whichever way it is asked.
  CK_OBJECT_HANDLE aes = GenAes(s->h());
  CK_ATTRIBUTE secret = {CKA_VALUE, nullptr, 0};
  EXPECT_EQ(RvStr(p->C_GetAttributeValue(s->h(), aes, &secret, 1)), RvStr(CKR_ATTRIBUTE_SENSITIVE));
  EXPECT_EQ(secret.ulValueLen, CK_UNAVAILABLE_INFORMATION);
}

TEST_F(LocalAnswersTest, TokenObjectsFoundBringTheirAttributes) {
  auto s = UserSession();
  const std::string label = UniqueLabel("found-attrs");
  CK_OBJECT_HANDLE made = CreateData(s->h(), label, true, false, "token value");
  auto found = FindByLabel(s->h(), label);
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0], made);
  long before = RoundTrips();
  CK_OBJECT_CLASS cls = 0;
  CK_BBOOL token = CK_FALSE;
  std::string l(label.size(), '\0');
  CK_ATTRIBUTE q[3] = {{CKA_CLASS, &cls, sizeof(cls)},
                       {CKA_TOKEN, &token, sizeof(token)},
                       {CKA_LABEL, l.data(), l.size()}};
  ASSERT_EQ(p->C_GetAttributeValue(s->h(), made, q, 3), CKR_OK);
  EXPECT_EQ(cls, static_cast<CK_OBJECT_CLASS>(CKO_DATA));
  EXPECT_EQ(token, CK_TRUE);
  EXPECT_EQ(l, label);
  // The spec's answers for what the object does not have.
  CK_ATTRIBUTE bad = {CKA_MODULUS, nullptr, 0};
  EXPECT_EQ(RvStr(p->C_GetAttributeValue(s->h(), made, &bad, 1)),
            RvStr(CKR_ATTRIBUTE_TYPE_INVALID));
  EXPECT_EQ(bad.ulValueLen, CK_UNAVAILABLE_INFORMATION);
  CK_BYTE tiny[2];
  CK_ATTRIBUTE small = {CKA_LABEL, tiny, sizeof(tiny)};
  EXPECT_EQ(RvStr(p->C_GetAttributeValue(s->h(), made, &small, 1)), RvStr(CKR_BUFFER_TOO_SMALL));
  EXPECT_EQ(RoundTrips() - before, 0) << "answered from what the search brought";
  // CKA_VALUE never comes with a search.
  before = RoundTrips();
  EXPECT_EQ(Attr(s->h(), made, CKA_VALUE), ToBytes("token value"));
  EXPECT_EQ(RoundTrips() - before, 1);
  // A change is seen at once, also by a read that the search had answered.
  Attrs change;
  change.Str(CKA_LABEL, label + "-2");
  ASSERT_EQ(p->C_SetAttributeValue(s->h(), made, change.data(), change.size()), CKR_OK);
  EXPECT_EQ(Attr(s->h(), made, CKA_LABEL), ToBytes(label + "-2"));
  // A closed session's handle is refused, not answered from the cache.
  auto again = FindByLabel(s->h(), label + "-2");
  ASSERT_EQ(again.size(), 1u);
  Session other(p, false);
  const CK_SESSION_HANDLE gone = other.h();
  ASSERT_EQ(other.Close(), CKR_OK);
  CK_ATTRIBUTE c = {CKA_CLASS, &cls, sizeof(cls)};
  EXPECT_EQ(RvStr(p->C_GetAttributeValue(gone, made, &c, 1)), RvStr(CKR_SESSION_HANDLE_INVALID));
  ASSERT_EQ(p->C_DestroyObject(s->h(), made), CKR_OK);
  EXPECT_EQ(RvStr(p->C_GetAttributeValue(s->h(), made, &c, 1)), RvStr(CKR_OBJECT_HANDLE_INVALID));
}

TEST_F(LocalAnswersTest, ASinglePartLengthQueryAndItsCallCostOneRoundTrip) {
  auto s = UserSession();
  KeyPair kp = AcceptedKey(s->h());
  CK_RV init_rv = 0, sign_rv = 0;
  CK_MECHANISM m = {CKM_ECDSA, nullptr, 0};
  long before = RoundTrips();
  ASSERT_EQ(p->C_SignInit(s->h(), &m, kp.priv), CKR_OK);
  CK_ULONG n = 0;
  ASSERT_EQ(RvStr(p->C_Sign(s->h(), kHash.data(), kHash.size(), nullptr, &n)), RvStr(CKR_OK));
  ASSERT_EQ(n, 64u);
  Bytes small(10);
  CK_ULONG small_n = small.size();
  EXPECT_EQ(RvStr(p->C_Sign(s->h(), kHash.data(), kHash.size(), small.data(), &small_n)),
            RvStr(CKR_BUFFER_TOO_SMALL));
  EXPECT_EQ(small_n, 64u);
  Bytes sig(n);
  ASSERT_EQ(RvStr(p->C_Sign(s->h(), kHash.data(), kHash.size(), sig.data(), &n)), RvStr(CKR_OK));
  EXPECT_EQ(RoundTrips() - before, 1);
  EXPECT_TRUE(Verifies(s->h(), kp.pub, sig));
  EXPECT_EQ(RvStr(p->C_Sign(s->h(), kHash.data(), kHash.size(), sig.data(), &n)),
            RvStr(CKR_OPERATION_NOT_INITIALIZED));

  // The call after the query signs other data: the operation starts again
  // on the agent and that data is signed.
  ASSERT_EQ(p->C_SignInit(s->h(), &m, kp.priv), CKR_OK);
  ASSERT_EQ(p->C_Sign(s->h(), kHash.data(), kHash.size(), nullptr, &n), CKR_OK);
  Bytes other = ToBytes("fedcba9876543210fedcba9876543210");
  n = sig.size();
  ASSERT_EQ(RvStr(p->C_Sign(s->h(), other.data(), other.size(), sig.data(), &n)), RvStr(CKR_OK));
  CK_MECHANISM vm = {CKM_ECDSA, nullptr, 0};
  ASSERT_EQ(p->C_VerifyInit(s->h(), &vm, kp.pub), CKR_OK);
  EXPECT_EQ(RvStr(p->C_Verify(s->h(), other.data(), other.size(), sig.data(), n)), RvStr(CKR_OK));

  // A multi-part call after a single-part query: CKR_OPERATION_ACTIVE, and
  // the operation is over; a second Init meanwhile is CKR_OPERATION_ACTIVE.
  ASSERT_EQ(p->C_SignInit(s->h(), &m, kp.priv), CKR_OK);
  ASSERT_EQ(p->C_Sign(s->h(), kHash.data(), kHash.size(), nullptr, &n), CKR_OK);
  EXPECT_EQ(RvStr(p->C_SignInit(s->h(), &m, kp.priv)), RvStr(CKR_OPERATION_ACTIVE));
  EXPECT_EQ(RvStr(p->C_SignUpdate(s->h(), kHash.data(), kHash.size())),
            RvStr(CKR_OPERATION_ACTIVE));
  EXPECT_EQ(RvStr(p->C_SignUpdate(s->h(), kHash.data(), kHash.size())),
            RvStr(CKR_OPERATION_NOT_INITIALIZED));

  // Decryption: the plaintext from the query's run is the caller's.
  const Bytes key(32, 0x42);
  CK_OBJECT_HANDLE aes = CreateSecret(s->h(), CKK_AES, key);
  Bytes iv(16, 0x01), plain = ToBytes("thirty-two bytes of plain text!!");
  CK_MECHANISM cbc = {CKM_AES_CBC, iv.data(), iv.size()};
  ASSERT_EQ(p->C_EncryptInit(s->h(), &cbc, aes), CKR_OK);
  Bytes ct(64);
  CK_ULONG ct_n = ct.size();
  ASSERT_EQ(p->C_Encrypt(s->h(), plain.data(), plain.size(), ct.data(), &ct_n), CKR_OK);
  ASSERT_EQ(p->C_DecryptInit(s->h(), &cbc, aes), CKR_OK);
  CK_ULONG pt_n = 0;
  ASSERT_EQ(p->C_Decrypt(s->h(), ct.data(), ct_n, nullptr, &pt_n), CKR_OK);
  EXPECT_GE(pt_n, plain.size());
  Bytes pt(pt_n);
  ASSERT_EQ(p->C_Decrypt(s->h(), ct.data(), ct_n, pt.data(), &pt_n), CKR_OK);
  pt.resize(pt_n);
  EXPECT_EQ(pt, plain);
}

// parameter_checks: deferred (module config, off by default): an AES-GCM
// C_EncryptInit is answered in the module once the agent accepted that
// mechanism and key; a parameter the member refuses is then reported by the
// next call, which is the documented price of the option.
TEST_F(LocalAnswersTest, DeferredParameterChecksAreOptIn) {
  const Bytes key_value(32, 0x17);
  Bytes iv(12, 0x01), data = ToBytes("sixteen byte blk");
  auto gcm = [&](Bytes& nonce, CK_ULONG tag_bits) {
    auto* params = new CK_GCM_PARAMS{};
    params->pIv = nonce.data();
    params->ulIvLen = nonce.size();
    params->ulIvBits = nonce.size() * 8;
    params->ulTagBits = tag_bits;
    return std::unique_ptr<CK_GCM_PARAMS>(params);
  };
  auto run = [&](CK_OBJECT_HANDLE key, CK_SESSION_HANDLE s, CK_ULONG tag_bits, CK_RV* init_rv) {
    auto params = gcm(iv, tag_bits);
    CK_MECHANISM m = {CKM_AES_GCM, params.get(), sizeof(CK_GCM_PARAMS)};
    *init_rv = p->C_EncryptInit(s, &m, key);
    if (*init_rv != CKR_OK) return *init_rv;
    Bytes out(64);
    CK_ULONG n = out.size();
    return p->C_Encrypt(s, data.data(), data.size(), out.data(), &n);
  };
  CK_RV init_rv = 0;
  {
    // Default (at_init): a refused parameter fails C_EncryptInit.
    auto s = UserSession();
    CK_OBJECT_HANDLE key = CreateSecret(s->h(), CKK_AES, key_value);
    ASSERT_EQ(RvStr(run(key, s->h(), 128, &init_rv)), RvStr(CKR_OK));
    const CK_RV bad = run(key, s->h(), 200, &init_rv);
    EXPECT_NE(RvStr(init_rv), RvStr(CKR_OK)) << "tag of 200 bits accepted";
    EXPECT_EQ(RvStr(bad), RvStr(init_rv));
    const long before = RoundTrips();
    ASSERT_EQ(RvStr(run(key, s->h(), 128, &init_rv)), RvStr(CKR_OK));
    EXPECT_EQ(RoundTrips() - before, 2) << "a parameter Init is a round trip by default";
  }
  // The same with parameter_checks: deferred.
  ASSERT_EQ(p->C_Finalize(nullptr), CKR_OK);
  const std::string config = Env("HSMUX_TEST_DIR") + "/module-deferred.yaml";
  {
    std::ifstream in(Env("HSMUX_CONFIG"));
    std::stringstream text;
    text << in.rdbuf() << "parameter_checks: deferred\n";
    std::ofstream(config) << text.str();
  }
  const std::string saved = Env("HSMUX_CONFIG");
  ::setenv("HSMUX_CONFIG", config.c_str(), 1);
  ASSERT_EQ(p->C_Initialize(nullptr), CKR_OK);
  ::setenv("HSMUX_CONFIG", saved.c_str(), 1);
  auto s = UserSession();
  CK_OBJECT_HANDLE key = CreateSecret(s->h(), CKK_AES, key_value);
  ASSERT_EQ(RvStr(run(key, s->h(), 128, &init_rv)), RvStr(CKR_OK));  // accepted once
  long before = RoundTrips();
  ASSERT_EQ(RvStr(run(key, s->h(), 128, &init_rv)), RvStr(CKR_OK));
  EXPECT_EQ(RoundTrips() - before, 1) << "Init answered here, carried with C_Encrypt";
  // A refused parameter: C_EncryptInit says CKR_OK, C_Encrypt reports it and
  // the operation is over.
  const CK_RV late = run(key, s->h(), 200, &init_rv);
  EXPECT_EQ(RvStr(init_rv), RvStr(CKR_OK));
  EXPECT_NE(RvStr(late), RvStr(CKR_OK));
  Bytes out(64);
  CK_ULONG n = out.size();
  EXPECT_EQ(RvStr(p->C_Encrypt(s->h(), data.data(), data.size(), out.data(), &n)),
            RvStr(CKR_OPERATION_NOT_INITIALIZED));
  ASSERT_EQ(RvStr(run(key, s->h(), 128, &init_rv)), RvStr(CKR_OK));
}

}  // namespace
}  // namespace hsmux::testing
