// E2E: object functions (create, find, attributes, copy, size, destroy) and
// the access rules the agent enforces for the virtual token.
#include <algorithm>

#include "functions_util.h"

namespace hsmux::testing {
namespace {

using ObjectsTest = P11Test;

TEST_F(ObjectsTest, CreateFindReadDestroyTokenAndSessionDataObjects) {
  auto s = UserSession();
  const std::string tok_label = UniqueLabel("tok"), ses_label = UniqueLabel("ses");
  CK_OBJECT_HANDLE tok = CreateData(s->h(), tok_label, true, false, "token-value");
  CK_OBJECT_HANDLE ses = CreateData(s->h(), ses_label, false, true, "session-value");
  ASSERT_NE(tok, CK_INVALID_HANDLE);
  ASSERT_NE(ses, CK_INVALID_HANDLE);
  EXPECT_NE(tok, ses);

  auto found = FindByLabel(s->h(), tok_label);
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0], tok);
  found = FindByLabel(s->h(), ses_label);
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0], ses);
  EXPECT_TRUE(FindByLabel(s->h(), UniqueLabel("none")).empty());

  EXPECT_EQ(Attr(s->h(), tok, CKA_VALUE), ToBytes("token-value"));
  EXPECT_EQ(Attr(s->h(), ses, CKA_VALUE), ToBytes("session-value"));
  EXPECT_EQ(Attr(s->h(), tok, CKA_TOKEN), Bytes{CK_TRUE});
  EXPECT_EQ(Attr(s->h(), ses, CKA_TOKEN), Bytes{CK_FALSE});
  EXPECT_EQ(UlongAttr(s->h(), tok, CKA_CLASS), CKO_DATA);

  // Several objects in one search, in batches.
  Attrs app;
  app.Ulong(CKA_CLASS, CKO_DATA).Str(CKA_APPLICATION, "hsmux-e2e");
  auto all = Find(s->h(), app);
  EXPECT_NE(std::find(all.begin(), all.end(), tok), all.end());
  EXPECT_NE(std::find(all.begin(), all.end(), ses), all.end());

  ASSERT_EQ(p->C_DestroyObject(s->h(), tok), CKR_OK);
  ASSERT_EQ(p->C_DestroyObject(s->h(), ses), CKR_OK);
  EXPECT_TRUE(FindByLabel(s->h(), tok_label).empty());
  EXPECT_TRUE(FindByLabel(s->h(), ses_label).empty());
  CK_RV rv = CKR_OK;
  Attr(s->h(), tok, CKA_VALUE, &rv);
  EXPECT_EQ(rv, CKR_OBJECT_HANDLE_INVALID);
  EXPECT_EQ(p->C_DestroyObject(s->h(), tok), CKR_OBJECT_HANDLE_INVALID);
}

TEST_F(ObjectsTest, FindObjectsStateRules) {
  Session s(p, false);
  CK_OBJECT_HANDLE h[4];
  CK_ULONG n = 0;
  EXPECT_EQ(p->C_FindObjects(s.h(), h, 4, &n), CKR_OPERATION_NOT_INITIALIZED);
  EXPECT_EQ(p->C_FindObjectsFinal(s.h()), CKR_OPERATION_NOT_INITIALIZED);
  Attrs t;
  t.Ulong(CKA_CLASS, CKO_DATA);
  ASSERT_EQ(p->C_FindObjectsInit(s.h(), t.data(), t.size()), CKR_OK);
  EXPECT_EQ(p->C_FindObjectsInit(s.h(), t.data(), t.size()), CKR_OPERATION_ACTIVE);
  EXPECT_EQ(p->C_FindObjects(s.h(), h, 4, &n), CKR_OK);
  EXPECT_EQ(p->C_FindObjects(s.h(), h, 4, nullptr), CKR_ARGUMENTS_BAD);
  EXPECT_EQ(p->C_FindObjectsFinal(s.h()), CKR_OK);
  EXPECT_EQ(p->C_FindObjects(s.h(), h, 4, &n), CKR_OPERATION_NOT_INITIALIZED);
  // An empty template matches everything visible.
  ASSERT_EQ(p->C_FindObjectsInit(s.h(), nullptr, 0), CKR_OK);
  EXPECT_EQ(p->C_FindObjectsFinal(s.h()), CKR_OK);
}

TEST_F(ObjectsTest, GetAttributeValueLengthsAndErrors) {
  auto s = UserSession();
  const std::string label = UniqueLabel("attrs");
  CK_OBJECT_HANDLE obj = CreateData(s->h(), label, false, false, "0123456789");

  // Length query.
  CK_ATTRIBUTE q[] = {{CKA_LABEL, nullptr, 0}, {CKA_VALUE, nullptr, 0}, {CKA_CLASS, nullptr, 0}};
  ASSERT_EQ(p->C_GetAttributeValue(s->h(), obj, q, 3), CKR_OK);
  EXPECT_EQ(q[0].ulValueLen, label.size());
  EXPECT_EQ(q[1].ulValueLen, 10u);
  EXPECT_EQ(q[2].ulValueLen, sizeof(CK_ULONG));

  // One buffer too small: CKR_BUFFER_TOO_SMALL, that attribute is
  // CK_UNAVAILABLE_INFORMATION, the others are still filled.
  char lbuf[128], vbuf[4];
  CK_ULONG cls = 0;
  CK_ATTRIBUTE r[] = {{CKA_LABEL, lbuf, sizeof(lbuf)},
                      {CKA_VALUE, vbuf, sizeof(vbuf)},
                      {CKA_CLASS, &cls, sizeof(cls)}};
  EXPECT_EQ(p->C_GetAttributeValue(s->h(), obj, r, 3), CKR_BUFFER_TOO_SMALL);
  EXPECT_EQ(r[0].ulValueLen, label.size());
  EXPECT_EQ(std::string(lbuf, label.size()), label);
  EXPECT_EQ(r[1].ulValueLen, CK_UNAVAILABLE_INFORMATION);
  EXPECT_EQ(r[2].ulValueLen, sizeof(CK_ULONG));
  EXPECT_EQ(cls, CKO_DATA);

  // An attribute the object does not have.
  CK_ATTRIBUTE inv[] = {{CKA_MODULUS, nullptr, 0}, {CKA_CLASS, &cls, sizeof(cls)}};
  EXPECT_EQ(p->C_GetAttributeValue(s->h(), obj, inv, 2), CKR_ATTRIBUTE_TYPE_INVALID);
  EXPECT_EQ(inv[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
  EXPECT_EQ(inv[1].ulValueLen, sizeof(CK_ULONG));

  // The value of a sensitive key.
  CK_OBJECT_HANDLE key = GenAes(s->h(), false, true);
  CK_ULONG vlen = 0;
  CK_BYTE kbuf[64];
  CK_ATTRIBUTE sens[] = {{CKA_VALUE, kbuf, sizeof(kbuf)}, {CKA_VALUE_LEN, &vlen, sizeof(vlen)}};
  EXPECT_EQ(p->C_GetAttributeValue(s->h(), key, sens, 2), CKR_ATTRIBUTE_SENSITIVE);
  EXPECT_EQ(sens[0].ulValueLen, CK_UNAVAILABLE_INFORMATION);
  EXPECT_EQ(sens[1].ulValueLen, sizeof(CK_ULONG));
  EXPECT_EQ(vlen, 32u);
  EXPECT_EQ(Attr(s->h(), key, CKA_SENSITIVE), Bytes{CK_TRUE});
  EXPECT_EQ(Attr(s->h(), key, CKA_ALWAYS_SENSITIVE), Bytes{CK_TRUE});
  EXPECT_EQ(Attr(s->h(), key, CKA_LOCAL), Bytes{CK_TRUE});

  EXPECT_EQ(p->C_GetAttributeValue(s->h(), 0x7ffffff1, q, 1), CKR_OBJECT_HANDLE_INVALID);
}

TEST_F(ObjectsTest, SetAttributeValueCopyObjectGetObjectSize) {
  auto s = UserSession();
  const std::string label = UniqueLabel("set"), relabel = UniqueLabel("relabel"),
                    copy_label = UniqueLabel("copy");
  CK_OBJECT_HANDLE obj = CreateData(s->h(), label, true, false, "payload");
  Attrs set;
  set.Str(CKA_LABEL, relabel);
  ASSERT_EQ(p->C_SetAttributeValue(s->h(), obj, set.data(), set.size()), CKR_OK);
  EXPECT_EQ(Attr(s->h(), obj, CKA_LABEL), ToBytes(relabel));
  EXPECT_TRUE(FindByLabel(s->h(), label).empty());
  EXPECT_EQ(FindByLabel(s->h(), relabel), std::vector<CK_OBJECT_HANDLE>{obj});

  Attrs ct;
  ct.Str(CKA_LABEL, copy_label).Bool(CKA_TOKEN, false);
  CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;
  ASSERT_EQ(p->C_CopyObject(s->h(), obj, ct.data(), ct.size(), &copy), CKR_OK);
  EXPECT_NE(copy, obj);
  EXPECT_EQ(Attr(s->h(), copy, CKA_VALUE), ToBytes("payload"));
  EXPECT_EQ(Attr(s->h(), copy, CKA_LABEL), ToBytes(copy_label));
  EXPECT_EQ(Attr(s->h(), copy, CKA_TOKEN), Bytes{CK_FALSE});
  EXPECT_EQ(Attr(s->h(), obj, CKA_LABEL), ToBytes(relabel));  // original unchanged

  CK_ULONG size = 0;
  ASSERT_EQ(p->C_GetObjectSize(s->h(), obj, &size), CKR_OK);
  EXPECT_NE(size, 0u);
  EXPECT_EQ(p->C_GetObjectSize(s->h(), 0x7ffffff2, &size), CKR_OBJECT_HANDLE_INVALID);
  EXPECT_EQ(p->C_GetObjectSize(s->h(), obj, nullptr), CKR_ARGUMENTS_BAD);

  ASSERT_EQ(p->C_DestroyObject(s->h(), copy), CKR_OK);
  ASSERT_EQ(p->C_DestroyObject(s->h(), obj), CKR_OK);
  EXPECT_EQ(p->C_GetObjectSize(s->h(), obj, &size), CKR_OBJECT_HANDLE_INVALID);
}

TEST_F(ObjectsTest, ReadOnlySessionCannotWriteTokenObjects) {
  auto rw = UserSession();
  Session ro(p, false);
  ASSERT_EQ(ro.open_rv(), CKR_OK);
  CK_RV rv = CKR_OK;
  CreateData(ro.h(), UniqueLabel("ro-tok"), true, false, "x", &rv);
  EXPECT_EQ(rv, CKR_SESSION_READ_ONLY);
  // Session objects are fine in a R/O session.
  CK_OBJECT_HANDLE ses = CreateData(ro.h(), UniqueLabel("ro-ses"), false, false, "x", &rv);
  EXPECT_EQ(rv, CKR_OK);
  // A token object made elsewhere cannot be changed or destroyed from R/O.
  CK_OBJECT_HANDLE tok = CreateData(rw->h(), UniqueLabel("rw-tok"), true, false);
  Attrs set;
  set.Str(CKA_LABEL, "changed");
  EXPECT_EQ(p->C_SetAttributeValue(ro.h(), tok, set.data(), set.size()), CKR_SESSION_READ_ONLY);
  EXPECT_EQ(p->C_DestroyObject(ro.h(), tok), CKR_SESSION_READ_ONLY);
  // Nor generated as a token key.
  CK_MECHANISM m = {CKM_AES_KEY_GEN, nullptr, 0};
  Attrs kt;
  kt.Ulong(CKA_VALUE_LEN, 32).Bool(CKA_TOKEN, true);
  CK_OBJECT_HANDLE k = CK_INVALID_HANDLE;
  EXPECT_EQ(p->C_GenerateKey(ro.h(), &m, kt.data(), kt.size(), &k), CKR_SESSION_READ_ONLY);
  EXPECT_EQ(p->C_DestroyObject(ro.h(), ses), CKR_OK);
  EXPECT_EQ(p->C_DestroyObject(rw->h(), tok), CKR_OK);
}

TEST_F(ObjectsTest, PrivateObjectsNeedLogin) {
  const std::string priv_label = UniqueLabel("priv"), pub_label = UniqueLabel("pub");
  Session s(p, true);
  ASSERT_EQ(s.Login(), CKR_OK);
  CK_OBJECT_HANDLE priv = CreateData(s.h(), priv_label, true, true, "secret");
  CK_OBJECT_HANDLE pub = CreateData(s.h(), pub_label, true, false, "public");
  ASSERT_EQ(p->C_Logout(s.h()), CKR_OK);

  // Before login: the private object is invisible and unusable...
  EXPECT_TRUE(FindByLabel(s.h(), priv_label).empty());
  EXPECT_EQ(FindByLabel(s.h(), pub_label), std::vector<CK_OBJECT_HANDLE>{pub});
  Attrs priv_only;
  priv_only.Bool(CKA_PRIVATE, true).Str(CKA_LABEL, priv_label);
  EXPECT_TRUE(Find(s.h(), priv_only).empty());
  CK_RV rv = CKR_OK;
  Bytes v = Attr(s.h(), priv, CKA_VALUE, &rv);
  EXPECT_NE(rv, CKR_OK);
  EXPECT_TRUE(v.empty());
  // ...and cannot be created.
  CreateData(s.h(), UniqueLabel("priv2"), false, true, "x", &rv);
  EXPECT_EQ(rv, CKR_USER_NOT_LOGGED_IN);
  CreateData(s.h(), UniqueLabel("priv3"), true, true, "x", &rv);
  EXPECT_EQ(rv, CKR_USER_NOT_LOGGED_IN);

  ASSERT_EQ(s.Login(), CKR_OK);
  EXPECT_EQ(FindByLabel(s.h(), priv_label).size(), 1u);
  EXPECT_EQ(Attr(s.h(), priv, CKA_VALUE), ToBytes("secret"));
  EXPECT_EQ(p->C_DestroyObject(s.h(), priv), CKR_OK);
  EXPECT_EQ(p->C_DestroyObject(s.h(), pub), CKR_OK);
}

TEST_F(ObjectsTest, SessionObjectsVanishWithTheirSession) {
  auto keep = UserSession();
  const std::string label = UniqueLabel("vanish");
  CK_OBJECT_HANDLE obj;
  {
    Session s(p, false);
    obj = CreateData(s.h(), label, false, false, "short-lived");
    // Visible and usable from every session of the application.
    EXPECT_EQ(FindByLabel(keep->h(), label), std::vector<CK_OBJECT_HANDLE>{obj});
    EXPECT_EQ(Attr(keep->h(), obj, CKA_VALUE), ToBytes("short-lived"));
  }
  EXPECT_TRUE(FindByLabel(keep->h(), label).empty());
  CK_RV rv = CKR_OK;
  Attr(keep->h(), obj, CKA_VALUE, &rv);
  EXPECT_EQ(rv, CKR_OBJECT_HANDLE_INVALID);
}

TEST_F(ObjectsTest, WrapTemplateNestedCreateAndRead) {
  auto s = UserSession();
  Attrs inner;
  inner.Ulong(CKA_CLASS, CKO_SECRET_KEY).Ulong(CKA_KEY_TYPE, CKK_AES).Bool(CKA_EXTRACTABLE, true);
  CK_MECHANISM m = {CKM_AES_KEY_GEN, nullptr, 0};
  Attrs t;
  t.Ulong(CKA_VALUE_LEN, 32)
      .Bool(CKA_TOKEN, false)
      .Bool(CKA_WRAP, true)
      .Bool(CKA_UNWRAP, true)
      .Nested(CKA_WRAP_TEMPLATE, inner);
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
  ASSERT_EQ(p->C_GenerateKey(s->h(), &m, t.data(), t.size(), &key), CKR_OK);

  // Outer length query: three CK_ATTRIBUTEs.
  CK_ATTRIBUTE a = {CKA_WRAP_TEMPLATE, nullptr, 0};
  ASSERT_EQ(p->C_GetAttributeValue(s->h(), key, &a, 1), CKR_OK);
  ASSERT_EQ(a.ulValueLen, 3 * sizeof(CK_ATTRIBUTE));
  // Inner length query: types and lengths.
  std::vector<CK_ATTRIBUTE> elems(3, CK_ATTRIBUTE{0, nullptr, 0});
  a.pValue = elems.data();
  ASSERT_EQ(p->C_GetAttributeValue(s->h(), key, &a, 1), CKR_OK);
  std::vector<Bytes> bufs(3);
  for (size_t i = 0; i < 3; ++i) {
    ASSERT_NE(elems[i].ulValueLen, CK_UNAVAILABLE_INFORMATION);
    bufs[i].resize(elems[i].ulValueLen);
    elems[i].pValue = bufs[i].data();
  }
  ASSERT_EQ(p->C_GetAttributeValue(s->h(), key, &a, 1), CKR_OK);
  bool saw_class = false, saw_type = false, saw_extractable = false;
  for (const CK_ATTRIBUTE& e : elems) {
    CK_ULONG u = 0;
    if (e.type == CKA_CLASS || e.type == CKA_KEY_TYPE) {
      ASSERT_EQ(e.ulValueLen, sizeof(CK_ULONG));
      std::memcpy(&u, e.pValue, sizeof(u));
    }
    if (e.type == CKA_CLASS) saw_class = u == CKO_SECRET_KEY;
    if (e.type == CKA_KEY_TYPE) saw_type = u == CKK_AES;
    if (e.type == CKA_EXTRACTABLE) {
      saw_extractable = e.ulValueLen == 1 && *static_cast<CK_BBOOL*>(e.pValue) == CK_TRUE;
    }
  }
  EXPECT_TRUE(saw_class);
  EXPECT_TRUE(saw_type);
  EXPECT_TRUE(saw_extractable);

  // Too few elements: CKR_BUFFER_TOO_SMALL.
  CK_ATTRIBUTE two[2] = {};
  CK_ATTRIBUTE small = {CKA_WRAP_TEMPLATE, two, sizeof(two)};
  EXPECT_EQ(p->C_GetAttributeValue(s->h(), key, &small, 1), CKR_BUFFER_TOO_SMALL);
  EXPECT_EQ(small.ulValueLen, CK_UNAVAILABLE_INFORMATION);
}

TEST_F(ObjectsTest, AllowedMechanismsReadBackAndEnforced) {
  auto s = UserSession();
  CK_MECHANISM m = {CKM_AES_KEY_GEN, nullptr, 0};
  const std::vector<CK_MECHANISM_TYPE> allowed = {CKM_AES_CBC_PAD, CKM_AES_GCM};
  Attrs t;
  t.Ulong(CKA_VALUE_LEN, 32)
      .Bool(CKA_TOKEN, false)
      .Bool(CKA_ENCRYPT, true)
      .Bool(CKA_DECRYPT, true)
      .Mechs(CKA_ALLOWED_MECHANISMS, allowed);
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
  ASSERT_EQ(p->C_GenerateKey(s->h(), &m, t.data(), t.size(), &key), CKR_OK);
  CK_ATTRIBUTE a = {CKA_ALLOWED_MECHANISMS, nullptr, 0};
  ASSERT_EQ(p->C_GetAttributeValue(s->h(), key, &a, 1), CKR_OK);
  ASSERT_EQ(a.ulValueLen, allowed.size() * sizeof(CK_MECHANISM_TYPE));
  std::vector<CK_MECHANISM_TYPE> got(allowed.size());
  a.pValue = got.data();
  ASSERT_EQ(p->C_GetAttributeValue(s->h(), key, &a, 1), CKR_OK);
  std::sort(got.begin(), got.end());
  std::vector<CK_MECHANISM_TYPE> want = allowed;
  std::sort(want.begin(), want.end());
  EXPECT_EQ(got, want);
  // A mechanism outside the list is refused.
  CK_MECHANISM ecb = {CKM_AES_ECB, nullptr, 0};
  EXPECT_EQ(p->C_EncryptInit(s->h(), &ecb, key), CKR_MECHANISM_INVALID);
  CK_BYTE iv[16] = {};
  CK_MECHANISM cbc = {CKM_AES_CBC_PAD, iv, sizeof(iv)};
  EXPECT_EQ(p->C_EncryptInit(s->h(), &cbc, key), CKR_OK);
}

TEST_F(ObjectsTest, CopyObjectFollowsSessionAndLoginRules) {
  const std::string label = UniqueLabel("copy-rules");
  Session ro(p, false);
  CK_OBJECT_HANDLE pub = CreateData(ro.h(), label, false, false, "v");
  Attrs to_token;
  to_token.Bool(CKA_TOKEN, true);
  CK_OBJECT_HANDLE out = CK_INVALID_HANDLE;
  EXPECT_EQ(p->C_CopyObject(ro.h(), pub, to_token.data(), to_token.size(), &out),
            CKR_SESSION_READ_ONLY);
  Attrs to_private;
  to_private.Bool(CKA_PRIVATE, true);
  EXPECT_EQ(p->C_CopyObject(ro.h(), pub, to_private.data(), to_private.size(), &out),
            CKR_USER_NOT_LOGGED_IN);
  EXPECT_EQ(p->C_CopyObject(ro.h(), 0x7ffffffa, nullptr, 0, &out), CKR_OBJECT_HANDLE_INVALID);
  // No copy was left behind.
  EXPECT_EQ(FindByLabel(ro.h(), label), std::vector<CK_OBJECT_HANDLE>{pub});
  // An empty template copies as is (hsmux once passed members a NULL
  // template here, which SoftHSM refuses with CKR_ARGUMENTS_BAD).
  CK_ATTRIBUTE empty[1] = {};
  ASSERT_EQ(p->C_CopyObject(ro.h(), pub, empty, 0, &out), CKR_OK);
  EXPECT_NE(out, pub);
  EXPECT_EQ(FindByLabel(ro.h(), label).size(), 2u);
  EXPECT_EQ(Attr(ro.h(), out, CKA_VALUE), ToBytes("v"));
  // An empty template for a new object lacks CKA_CLASS.
  EXPECT_EQ(p->C_CreateObject(ro.h(), empty, 0, &out), CKR_TEMPLATE_INCOMPLETE);
}

// Handles belong to one instance (one C_Initialize): after C_Finalize and
// C_Initialize, the old session and object handles mean nothing.
TEST_F(ObjectsTest, HandlesDoNotSurviveReinitialize) {
  const std::string label = UniqueLabel("reinit");
  CK_SESSION_HANDLE old_session;
  CK_OBJECT_HANDLE tok;
  {
    auto s = UserSession();
    old_session = s->h();
    tok = CreateData(s->h(), label, true, false, "persisted");
    s->Forget();
  }
  ASSERT_EQ(p->C_Finalize(nullptr), CKR_OK);
  ASSERT_EQ(p->C_Initialize(nullptr), CKR_OK);
  CK_SESSION_INFO info;
  EXPECT_EQ(p->C_GetSessionInfo(old_session, &info), CKR_SESSION_HANDLE_INVALID);
  Session s(p, true);
  CK_RV rv = CKR_OK;
  Attr(s.h(), tok, CKA_VALUE, &rv);
  EXPECT_EQ(rv, CKR_OBJECT_HANDLE_INVALID);
  // The token object itself persists, under a handle of the new instance.
  auto found = FindByLabel(s.h(), label);
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(Attr(s.h(), found[0], CKA_VALUE), ToBytes("persisted"));
  EXPECT_EQ(p->C_DestroyObject(s.h(), found[0]), CKR_OK);
}

}  // namespace
}  // namespace hsmux::testing
