// Writes through hsmux reach every member (DESIGN §3), checked directly on
// member-a/b/c through SoftHSM: token keys of every kind, data objects and
// certificates; sealed replicas, no pending leftovers, the replication key
// hidden; replicas equal by function; destroy everywhere. And session
// objects: owned by the client session and instance that made them.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "group_util.h"

namespace hsmux::grouptest {
namespace {

class GroupReplication : public ::testing::Test {
 protected:
  void SetUp() override {
    p = Module();
    ASSERT_NE(p, nullptr);
    ASSERT_EQ(RvStr(p->C_Initialize(nullptr)), RvStr(CKR_OK));
    CK_RV rv;
    s = OpenSession(p, ClientPin(), &rv);
    ASSERT_EQ(RvStr(rv), RvStr(CKR_OK));
    ASSERT_TRUE(m().ok()) << m().error();
  }
  void TearDown() override {
    if (p != nullptr) p->C_Finalize(nullptr);
  }
  Members& m() { return Members::Get(); }

  CK_FUNCTION_LIST* p = nullptr;
  CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
};

struct Made {
  std::string label;
  CK_OBJECT_CLASS cls;
  Bytes id;  // empty for data objects
  CK_OBJECT_HANDLE handle;
};

TEST_F(GroupReplication, EveryKindReachesEveryMemberSealedAndEqual) {
  const std::string ec = Unique("ec"), rsa = Unique("rsa"), aes = Unique("aes"),
                    hmac = Unique("hmac"), data = Unique("data"), cert = Unique("cert");
  const Bytes ec_id = {0xec, 0x01}, rsa_id = {0x5a, 0x02}, aes_id = {0xae, 0x03},
              hmac_id = {0x4d, 0x04}, cert_id = {0xce, 0x05};
  Pair ecp, rsap;
  CK_OBJECT_HANDLE aesk = CK_INVALID_HANDLE, hmack = CK_INVALID_HANDLE;
  ASSERT_EQ(RvStr(GenEc(p, s, ec, ec_id, true, &ecp)), RvStr(CKR_OK));
  ASSERT_EQ(RvStr(GenRsa(p, s, rsa, rsa_id, &rsap)), RvStr(CKR_OK));
  ASSERT_EQ(RvStr(GenAes(p, s, aes, aes_id, true, &aesk)), RvStr(CKR_OK));
  ASSERT_EQ(RvStr(GenHmac(p, s, hmac, hmac_id, &hmack)), RvStr(CKR_OK));

  const Bytes data_value = ToBytes("group replication data " + data);
  CK_OBJECT_HANDLE datah = CK_INVALID_HANDLE, certh = CK_INVALID_HANDLE;
  {
    Attrs t;
    t.Ulong(CKA_CLASS, CKO_DATA).Bool(CKA_TOKEN, true).Bool(CKA_PRIVATE, false);
    t.Str(CKA_LABEL, data).Str(CKA_APPLICATION, "hsmux-e2e").Raw(CKA_VALUE, data_value);
    ASSERT_EQ(RvStr(p->C_CreateObject(s, t.data(), t.size(), &datah)), RvStr(CKR_OK));
  }
  Bytes cert_der, subject;
  MakeCertificate(cert, &cert_der, &subject);
  ASSERT_FALSE(cert_der.empty());
  {
    Attrs t;
    t.Ulong(CKA_CLASS, CKO_CERTIFICATE).Ulong(CKA_CERTIFICATE_TYPE, CKC_X_509);
    t.Bool(CKA_TOKEN, true).Str(CKA_LABEL, cert).Raw(CKA_ID, cert_id);
    t.Raw(CKA_SUBJECT, subject).Raw(CKA_VALUE, cert_der);
    ASSERT_EQ(RvStr(p->C_CreateObject(s, t.data(), t.size(), &certh)), RvStr(CKR_OK));
  }

  const std::vector<Made> made = {{ec, CKO_PUBLIC_KEY, ec_id, ecp.pub},
                                  {ec, CKO_PRIVATE_KEY, ec_id, ecp.priv},
                                  {rsa, CKO_PUBLIC_KEY, rsa_id, rsap.pub},
                                  {rsa, CKO_PRIVATE_KEY, rsa_id, rsap.priv},
                                  {aes, CKO_SECRET_KEY, aes_id, aesk},
                                  {hmac, CKO_SECRET_KEY, hmac_id, hmack},
                                  {data, CKO_DATA, {}, datah},
                                  {cert, CKO_CERTIFICATE, cert_id, certh}};

  // Directly on each member: once, right label and ID; keys sealed.
  std::vector<std::vector<CK_OBJECT_HANDLE>> on(3, std::vector<CK_OBJECT_HANDLE>(made.size()));
  for (size_t i = 0; i < 3; ++i) {
    SCOPED_TRACE(kMembers[i]);
    for (size_t k = 0; k < made.size(); ++k) {
      SCOPED_TRACE(made[k].label + " class " + std::to_string(made[k].cls));
      auto found = m().LabelClass(i, made[k].label, made[k].cls);
      ASSERT_EQ(found.size(), 1u);
      on[i][k] = found[0];
      EXPECT_EQ(AttrStr(m().fl(), m().s(i), found[0], CKA_LABEL), made[k].label);
      if (!made[k].id.empty()) {
        EXPECT_EQ(Hex(Attr(m().fl(), m().s(i), found[0], CKA_ID)), Hex(made[k].id));
      }
      if (made[k].cls == CKO_PRIVATE_KEY || made[k].cls == CKO_SECRET_KEY) {
        EXPECT_EQ(AttrBool(m().fl(), m().s(i), found[0], CKA_EXTRACTABLE), false)
            << "replica not sealed";
        EXPECT_EQ(AttrBool(m().fl(), m().s(i), found[0], CKA_SENSITIVE), true);
      }
      if (made[k].cls == CKO_DATA) {
        EXPECT_EQ(Hex(Attr(m().fl(), m().s(i), found[0], CKA_VALUE)), Hex(data_value));
      }
      if (made[k].cls == CKO_CERTIFICATE) {
        EXPECT_EQ(Hex(Attr(m().fl(), m().s(i), found[0], CKA_VALUE)), Hex(cert_der));
      }
    }
    EXPECT_TRUE(m().Pending(i).empty()) << "pending leftovers: " << m().Pending(i).size();
    EXPECT_EQ(m().LabelClass(i, kReplicationLabel, CKO_SECRET_KEY).size(), 1u)
        << "replication key missing";
  }
  // The replication key is hidden from clients.
  EXPECT_TRUE(FindLabel(p, s, kReplicationLabel).empty());
  {
    Attrs t;
    t.Ulong(CKA_CLASS, CKO_SECRET_KEY).Bool(CKA_WRAP, true);
    for (CK_OBJECT_HANDLE h : Find(p, s, t)) {
      EXPECT_NE(AttrStr(p, s, h, CKA_LABEL), kReplicationLabel);
    }
  }

  const size_t a = 0, b = 1, c = 2;
  auto fl = m().fl();
  // ECDSA: member-b's private key, member-a's public key (and OpenSSL).
  {
    const Bytes digest = Sha256(ToBytes("ecdsa replica check"));
    CK_RV rv;
    Bytes sig = Sign(fl, m().s(b), CKM_ECDSA, on[b][1], digest, &rv);
    ASSERT_EQ(RvStr(rv), RvStr(CKR_OK));
    EXPECT_EQ(RvStr(Verify(fl, m().s(a), CKM_ECDSA, on[a][0], digest, sig)), RvStr(CKR_OK));
    const Bytes point = EcPointOctets(Attr(fl, m().s(a), on[a][0], CKA_EC_POINT));
    EXPECT_TRUE(OpenSslVerifyEcdsa(point, digest, sig));
    // Each member's private key verifies with the (single) public point.
    for (size_t i : {a, c}) {
      Bytes si = Sign(fl, m().s(i), CKM_ECDSA, on[i][1], digest, &rv);
      EXPECT_TRUE(OpenSslVerifyEcdsa(point, digest, si)) << kMembers[i];
    }
    // And through hsmux.
    Bytes hs = Sign(p, s, CKM_ECDSA, ecp.priv, digest, &rv);
    EXPECT_EQ(RvStr(rv), RvStr(CKR_OK));
    EXPECT_TRUE(OpenSslVerifyEcdsa(point, digest, hs));
  }
  // RSA likewise.
  {
    const Bytes msg = ToBytes("rsa replica check");
    CK_RV rv;
    Bytes sig = Sign(fl, m().s(b), CKM_SHA256_RSA_PKCS, on[b][3], msg, &rv);
    ASSERT_EQ(RvStr(rv), RvStr(CKR_OK));
    EXPECT_EQ(RvStr(Verify(fl, m().s(a), CKM_SHA256_RSA_PKCS, on[a][2], msg, sig)), RvStr(CKR_OK));
    const Bytes n = Attr(fl, m().s(a), on[a][2], CKA_MODULUS);
    const Bytes e = Attr(fl, m().s(a), on[a][2], CKA_PUBLIC_EXPONENT);
    EXPECT_TRUE(OpenSslVerifyRsaSha256(n, e, msg, sig));
    for (size_t i : {a, c}) {
      EXPECT_EQ(Hex(Attr(fl, m().s(i), on[i][3], CKA_MODULUS)), Hex(n)) << kMembers[i];
      Bytes si = Sign(fl, m().s(i), CKM_SHA256_RSA_PKCS, on[i][3], msg, &rv);
      EXPECT_EQ(Hex(si), Hex(sig)) << kMembers[i];  // PKCS#1 v1.5 is deterministic
    }
  }
  // AES-ECB and HMAC: the same output on all three members, and through hsmux.
  {
    const Bytes block = ToBytes("0123456789abcdef");
    const Bytes msg = ToBytes("hmac replica check");
    CK_RV rv;
    const Bytes enc_a = EncryptEcb(fl, m().s(a), on[a][4], block, &rv);
    ASSERT_EQ(RvStr(rv), RvStr(CKR_OK));
    ASSERT_EQ(enc_a.size(), 16u);
    const Bytes mac_a = Sign(fl, m().s(a), CKM_SHA256_HMAC, on[a][5], msg, &rv);
    ASSERT_EQ(RvStr(rv), RvStr(CKR_OK));
    ASSERT_EQ(mac_a.size(), 32u);
    for (size_t i : {b, c}) {
      EXPECT_EQ(Hex(EncryptEcb(fl, m().s(i), on[i][4], block)), Hex(enc_a)) << kMembers[i];
      EXPECT_EQ(Hex(Sign(fl, m().s(i), CKM_SHA256_HMAC, on[i][5], msg)), Hex(mac_a)) << kMembers[i];
    }
    EXPECT_EQ(Hex(EncryptEcb(p, s, aesk, block)), Hex(enc_a));
    EXPECT_EQ(Hex(Sign(p, s, CKM_SHA256_HMAC, hmack, msg)), Hex(mac_a));
  }

  // Through hsmux: the weakest CKA_LOCAL / CKA_NEVER_EXTRACTABLE (DESIGN §3).
  for (CK_OBJECT_HANDLE h : {ecp.priv, rsap.priv, aesk, hmack}) {
    SCOPED_TRACE(AttrStr(p, s, h, CKA_LABEL));
    EXPECT_EQ(AttrBool(p, s, h, CKA_LOCAL), false);
    EXPECT_EQ(AttrBool(p, s, h, CKA_NEVER_EXTRACTABLE), false);
    EXPECT_EQ(AttrBool(p, s, h, CKA_EXTRACTABLE), false);
  }
  // Each object is one object through hsmux.
  for (const Made& x : made) {
    EXPECT_EQ(FindLabelClass(p, s, x.label, x.cls).size(), 1u) << x.label;
  }

  // Destroy through hsmux: gone from every member.
  for (const Made& x : made) {
    EXPECT_EQ(RvStr(p->C_DestroyObject(s, x.handle)), RvStr(CKR_OK)) << x.label;
  }
  for (size_t i = 0; i < 3; ++i) {
    for (const Made& x : made) {
      EXPECT_TRUE(m().Label(i, x.label).empty()) << kMembers[i] << " still has " << x.label;
    }
    EXPECT_TRUE(m().Pending(i).empty());
    EXPECT_EQ(m().LabelClass(i, kReplicationLabel, CKO_SECRET_KEY).size(), 1u);
  }
  for (const Made& x : made) EXPECT_TRUE(FindLabel(p, s, x.label).empty()) << x.label;
}

// A session key belongs to its session and instance: visible in the
// instance, invisible to another instance of the same client and to
// client-2, gone after C_CloseSession.
TEST_F(GroupReplication, SessionKeyBelongsToItsSessionAndInstance) {
  const std::string label = Unique("session-key");
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
  ASSERT_EQ(RvStr(GenAes(p, s, label, ToBytes(label), false, &key)), RvStr(CKR_OK));
  CK_RV rv;
  CK_SESSION_HANDLE s2 = OpenSession(p, "", &rv);
  ASSERT_EQ(RvStr(rv), RvStr(CKR_OK));
  // Visible and usable in the instance, from both sessions.
  EXPECT_EQ(FindLabel(p, s, label).size(), 1u);
  EXPECT_EQ(FindLabel(p, s2, label).size(), 1u);
  EXPECT_EQ(AttrBool(p, s2, key, CKA_TOKEN), false);
  const Bytes block = ToBytes("sessionkeyblock!");
  const Bytes enc = EncryptEcb(p, s2, key, block, &rv);
  EXPECT_EQ(RvStr(rv), RvStr(CKR_OK));
  EXPECT_EQ(enc.size(), 16u);
  // Not a token object on any member.
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(m().Label(i, label).empty()) << kMembers[i];

  // Another instance of client-1 (a new process) and client-2.
  const std::string dir = Env("HSMUX_TEST_DIR");
  const std::string c2 = WriteModuleConfig("module-client-2", "client-2.pem", "client-2.key");
  struct Who {
    const char* name;
    std::string config, pin_file;
  };
  for (const Who& w :
       {Who{"client-1, second instance", Env("HSMUX_CONFIG"), dir + "/secrets/client-pin"},
        Who{"client-2", c2, dir + "/secrets/client-2-pin"}}) {
    SCOPED_TRACE(w.name);
    Child c =
        SpawnHelper({"find", label, w.pin_file, std::to_string(key)}, {{"HSMUX_CONFIG", w.config}});
    const std::string out = ReadAll(c, 30000);
    EXPECT_EQ(WaitChild(c, 30000), 0) << out;
    EXPECT_NE(out.find("COUNT 0\n"), std::string::npos) << out;
    // The parent's handle means nothing there.
    EXPECT_NE(out.find("HANDLE_RV " + RvStr(CKR_OBJECT_HANDLE_INVALID) + "\n"), std::string::npos)
        << out;
  }

  // Closing the session that made it destroys it; the instance's other
  // session no longer sees it.
  ASSERT_EQ(RvStr(p->C_CloseSession(s)), RvStr(CKR_OK));
  s = CK_INVALID_HANDLE;
  CK_RV arv;
  Attr(p, s2, key, CKA_LABEL, &arv);
  EXPECT_EQ(RvStr(arv), RvStr(CKR_OBJECT_HANDLE_INVALID));
  EXPECT_TRUE(FindLabel(p, s2, label).empty());
  EncryptEcb(p, s2, key, block, &rv);
  EXPECT_TRUE(rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID) << RvStr(rv);
  p->C_CloseSession(s2);
}

}  // namespace
}  // namespace hsmux::grouptest
