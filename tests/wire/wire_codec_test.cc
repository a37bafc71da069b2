// Unit tests of the wire codecs: attribute templates, C_GetAttributeValue
// answers, and mechanism parameters, without any token.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "wire/attribute_codec.h"
#include "wire/attribute_kinds.h"
#include "wire/errors.h"
#include "wire/mechanism_codec.h"

namespace hsmux::wire {
namespace {

// ------------------------------------------------------------------ kinds --

TEST(AttributeKinds, Table) {
  EXPECT_EQ(KindOf(CKA_CLASS), AttributeKind::kUlong);
  EXPECT_EQ(KindOf(CKA_KEY_TYPE), AttributeKind::kUlong);
  EXPECT_EQ(KindOf(CKA_VALUE_LEN), AttributeKind::kUlong);
  EXPECT_EQ(KindOf(CKA_MODULUS_BITS), AttributeKind::kUlong);
  EXPECT_EQ(KindOf(CKA_NAME_HASH_ALGORITHM), AttributeKind::kUlong);
  EXPECT_EQ(KindOf(CKA_PIXEL_X), AttributeKind::kUlong);
  EXPECT_EQ(KindOf(CKA_OTP_LENGTH), AttributeKind::kUlong);
  EXPECT_EQ(KindOf(CKA_TOKEN), AttributeKind::kBool);
  EXPECT_EQ(KindOf(CKA_ALWAYS_AUTHENTICATE), AttributeKind::kBool);
  EXPECT_EQ(KindOf(CKA_COLOR), AttributeKind::kBool);
  EXPECT_EQ(KindOf(CKA_OTP_USER_FRIENDLY_MODE), AttributeKind::kBool);
  EXPECT_EQ(KindOf(CKA_START_DATE), AttributeKind::kDate);
  EXPECT_EQ(KindOf(CKA_WRAP_TEMPLATE), AttributeKind::kTemplate);
  EXPECT_EQ(KindOf(CKA_UNWRAP_TEMPLATE), AttributeKind::kTemplate);
  EXPECT_EQ(KindOf(CKA_DERIVE_TEMPLATE), AttributeKind::kTemplate);
  EXPECT_EQ(KindOf(CKA_ALLOWED_MECHANISMS), AttributeKind::kMechanisms);
  EXPECT_EQ(KindOf(CKA_LABEL), AttributeKind::kBytes);
  EXPECT_EQ(KindOf(CKA_OTP_SERVICE_LOGO_TYPE), AttributeKind::kBytes);
  EXPECT_EQ(KindOf(0x7777), AttributeKind::kBytes);
  EXPECT_EQ(KindOf(CKA_VENDOR_DEFINED | CKA_CLASS), AttributeKind::kBytes);
  EXPECT_EQ(AttributeName(CKA_WRAP_TEMPLATE), "CKA_WRAP_TEMPLATE");
  EXPECT_EQ(AttributeName(0x7777), "CKA_0x7777");
}

// -------------------------------------------------------------- templates --

TEST(AttributeCodec, RoundTripAllKinds) {
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  char label[] = "my key";
  unsigned char date[8] = {'2', '0', '2', '4', '0', '1', '3', '1'};
  CK_MECHANISM_TYPE mechs[] = {CKM_AES_GCM, CKM_AES_CBC_PAD, CKM_SHA256_HMAC};
  CK_KEY_TYPE inner_type = CKK_AES;
  CK_ATTRIBUTE inner[] = {{CKA_KEY_TYPE, &inner_type, sizeof(inner_type)},
                          {CKA_EXTRACTABLE, &yes, sizeof(yes)}};
  unsigned char vendor[] = {1, 2, 3};
  CK_ATTRIBUTE tmpl[] = {
      {CKA_CLASS, &cls, sizeof(cls)},
      {CKA_TOKEN, &no, sizeof(no)},
      {CKA_LABEL, label, 6},
      {CKA_START_DATE, date, sizeof(date)},
      {CKA_END_DATE, nullptr, 0},
      {CKA_ALLOWED_MECHANISMS, mechs, sizeof(mechs)},
      {CKA_WRAP_TEMPLATE, inner, sizeof(inner)},
      {CKA_VENDOR_DEFINED | 5, vendor, sizeof(vendor)},
  };
  v1::AttributeList wire;
  ASSERT_TRUE(EncodeTemplate(tmpl, 8, &wire).ok());
  ASSERT_EQ(wire.attributes_size(), 8);
  EXPECT_EQ(wire.attributes(0).ulong(), CKO_SECRET_KEY);
  EXPECT_FALSE(wire.attributes(1).boolean());
  EXPECT_TRUE(wire.attributes(1).has_boolean());
  EXPECT_EQ(wire.attributes(2).bytes(), "my key");
  EXPECT_EQ(wire.attributes(3).bytes().size(), 8u);
  EXPECT_TRUE(wire.attributes(4).has_bytes());
  EXPECT_EQ(wire.attributes(5).mechanisms().values_size(), 3);
  EXPECT_EQ(wire.attributes(6).nested().attributes_size(), 2);
  EXPECT_EQ(wire.attributes(7).bytes(), std::string("\1\2\3", 3));

  auto decoded = NativeTemplate::Decode(wire);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  // Moving the template must keep every pointer valid.
  std::vector<NativeTemplate> holder;
  holder.push_back(std::move(decoded).value());
  holder.emplace_back();
  NativeTemplate t = std::move(holder[0]);
  ASSERT_EQ(t.size(), 8u);
  CK_ATTRIBUTE* a = t.data();
  for (CK_ULONG i = 0; i < 8; ++i) EXPECT_EQ(a[i].type, tmpl[i].type);
  ASSERT_EQ(a[0].ulValueLen, sizeof(CK_ULONG));
  EXPECT_EQ(*static_cast<CK_ULONG*>(a[0].pValue), CKO_SECRET_KEY);
  ASSERT_EQ(a[1].ulValueLen, 1u);
  EXPECT_EQ(*static_cast<CK_BBOOL*>(a[1].pValue), CK_FALSE);
  EXPECT_EQ(std::string(static_cast<char*>(a[2].pValue), a[2].ulValueLen), "my key");
  EXPECT_EQ(std::memcmp(a[3].pValue, date, 8), 0);
  EXPECT_EQ(a[4].ulValueLen, 0u);
  ASSERT_EQ(a[5].ulValueLen, sizeof(mechs));
  EXPECT_EQ(std::memcmp(a[5].pValue, mechs, sizeof(mechs)), 0);
  ASSERT_EQ(a[6].ulValueLen, 2 * sizeof(CK_ATTRIBUTE));
  auto* n = static_cast<CK_ATTRIBUTE*>(a[6].pValue);
  EXPECT_EQ(n[0].type, CKA_KEY_TYPE);
  EXPECT_EQ(*static_cast<CK_ULONG*>(n[0].pValue), CKK_AES);
  EXPECT_EQ(n[1].type, CKA_EXTRACTABLE);
  EXPECT_EQ(*static_cast<CK_BBOOL*>(n[1].pValue), CK_TRUE);
  EXPECT_EQ(a[7].ulValueLen, 3u);
}

TEST(AttributeCodec, KeepsOrderAndEmptyTemplate) {
  v1::AttributeList wire;
  EXPECT_TRUE(EncodeTemplate(nullptr, 0, &wire).ok());
  auto t = NativeTemplate::Decode(wire);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->size(), 0u);
  EXPECT_NE(t->data(), nullptr);  // members refuse a NULL template
}

TEST(AttributeCodec, BadArguments) {
  v1::AttributeList wire;
  EXPECT_EQ(GetCkRv(EncodeTemplate(nullptr, 1, &wire)), CKR_ARGUMENTS_BAD);
  CK_ATTRIBUTE null_value{CKA_LABEL, nullptr, 4};
  EXPECT_EQ(GetCkRv(EncodeTemplate(&null_value, 1, &wire)), CKR_ARGUMENTS_BAD);
}

TEST(AttributeCodec, TypedLengthsChecked) {
  unsigned char buf[64] = {};
  struct Case {
    CK_ATTRIBUTE_TYPE type;
    CK_ULONG len;
    bool ok;
  } cases[] = {
      {CKA_CLASS, sizeof(CK_ULONG), true},
      {CKA_CLASS, 3, false},
      {CKA_CLASS, sizeof(CK_ULONG) + 1, false},
      {CKA_VALUE_LEN, 4, sizeof(CK_ULONG) == 4},
      {CKA_TOKEN, 1, true},
      {CKA_TOKEN, 2, false},
      {CKA_SENSITIVE, sizeof(CK_ULONG), false},
      {CKA_WRAP_TEMPLATE, sizeof(CK_ATTRIBUTE) + 1, false},
      {CKA_ALLOWED_MECHANISMS, sizeof(CK_MECHANISM_TYPE) * 2, true},
      {CKA_ALLOWED_MECHANISMS, sizeof(CK_MECHANISM_TYPE) + 3, false},
      {CKA_LABEL, 3, true},
  };
  for (const Case& c : cases) {
    CK_ATTRIBUTE a{c.type, buf, c.len};
    v1::AttributeList wire;
    absl::Status s = EncodeTemplate(&a, 1, &wire);
    if (c.ok) {
      EXPECT_TRUE(s.ok()) << AttributeName(c.type) << " len " << c.len;
    } else {
      EXPECT_EQ(GetCkRv(s), CKR_ATTRIBUTE_VALUE_INVALID) << AttributeName(c.type) << " " << c.len;
    }
  }
  // A ULONG attribute with NULL and length 0 is not a CK_ULONG either.
  CK_ATTRIBUTE empty_class{CKA_CLASS, nullptr, 0};
  v1::AttributeList wire;
  EXPECT_EQ(GetCkRv(EncodeTemplate(&empty_class, 1, &wire)), CKR_ATTRIBUTE_VALUE_INVALID);
}

TEST(AttributeCodec, NestedErrorsPropagate) {
  CK_ULONG three_bytes = 0;
  CK_ATTRIBUTE inner{CKA_CLASS, &three_bytes, 3};
  CK_ATTRIBUTE outer{CKA_DERIVE_TEMPLATE, &inner, sizeof(inner)};
  v1::AttributeList wire;
  EXPECT_EQ(GetCkRv(EncodeTemplate(&outer, 1, &wire)), CKR_ATTRIBUTE_VALUE_INVALID);
  CK_ATTRIBUTE empty{CKA_UNWRAP_TEMPLATE, nullptr, 0};
  wire.Clear();
  ASSERT_TRUE(EncodeTemplate(&empty, 1, &wire).ok());
  EXPECT_TRUE(wire.attributes(0).has_nested());
  auto t = NativeTemplate::Decode(wire);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->data()[0].ulValueLen, 0u);
}

TEST(AttributeCodec, DecodeRejectsMalformedWire) {
  auto rv_of = [](const v1::AttributeList& l) {
    return GetCkRv(NativeTemplate::Decode(l).status());
  };
  v1::AttributeList l;
  auto* a = l.add_attributes();
  a->set_type(CKA_CLASS);
  a->set_bytes("abcd");
  EXPECT_EQ(rv_of(l), CKR_TEMPLATE_INCONSISTENT);

  l.Clear();
  a = l.add_attributes();
  a->set_type(CKA_LABEL);
  a->mutable_nested();
  EXPECT_EQ(rv_of(l), CKR_TEMPLATE_INCONSISTENT);

  l.Clear();
  l.add_attributes()->set_type(CKA_LABEL);  // no value at all
  EXPECT_EQ(rv_of(l), CKR_TEMPLATE_INCONSISTENT);

  l.Clear();
  a = l.add_attributes();
  a->set_type(CKA_TOKEN);
  a->set_ulong(1);
  EXPECT_EQ(rv_of(l), CKR_TEMPLATE_INCONSISTENT);

  // Five levels of nesting.
  l.Clear();
  v1::AttributeList* level = &l;
  for (int i = 0; i < 5; ++i) {
    a = level->add_attributes();
    a->set_type(CKA_WRAP_TEMPLATE);
    level = a->mutable_nested();
  }
  EXPECT_EQ(rv_of(l), CKR_ARGUMENTS_BAD);
}

TEST(AttributeCodec, EncodeNativeValue) {
  CK_ULONG bits = 2048;
  CK_BBOOL t = CK_TRUE;
  CK_MECHANISM_TYPE m[] = {CKM_RSA_PKCS};
  CK_ATTRIBUTE inner[] = {{CKA_MODULUS_BITS, &bits, sizeof(bits)}};
  v1::Attribute out;
  CK_ATTRIBUTE a{CKA_MODULUS_BITS, &bits, sizeof(bits)};
  ASSERT_TRUE(EncodeNativeValue(a, &out).ok());
  EXPECT_EQ(out.ulong(), 2048u);
  a = {CKA_SIGN, &t, 1};
  ASSERT_TRUE(EncodeNativeValue(a, &out).ok());
  EXPECT_TRUE(out.boolean());
  a = {CKA_ALLOWED_MECHANISMS, m, sizeof(m)};
  ASSERT_TRUE(EncodeNativeValue(a, &out).ok());
  EXPECT_EQ(out.mechanisms().values(0), CKM_RSA_PKCS);
  a = {CKA_WRAP_TEMPLATE, inner, sizeof(inner)};
  ASSERT_TRUE(EncodeNativeValue(a, &out).ok());
  EXPECT_EQ(out.nested().attributes(0).ulong(), 2048u);
  a = {CKA_ID, nullptr, 0};
  ASSERT_TRUE(EncodeNativeValue(a, &out).ok());
  EXPECT_TRUE(out.has_bytes());

  a = {CKA_MODULUS_BITS, &bits, 2};
  EXPECT_EQ(GetCkRv(EncodeNativeValue(a, &out)), CKR_GENERAL_ERROR);
  a = {CKA_SIGN, &bits, sizeof(bits)};
  EXPECT_EQ(GetCkRv(EncodeNativeValue(a, &out)), CKR_GENERAL_ERROR);
  a = {CKA_ID, nullptr, CK_UNAVAILABLE_INFORMATION};
  EXPECT_EQ(GetCkRv(EncodeNativeValue(a, &out)), CKR_GENERAL_ERROR);
}

// -------------------------------------------------------- GetAttributeValue --

v1::AttributeAnswer* AddOk(v1::AttributeAnswerList* l, CK_ATTRIBUTE_TYPE type) {
  auto* a = l->add_answers();
  a->set_status(v1::AttributeAnswer::OK);
  a->mutable_value()->set_type(type);
  return a;
}

TEST(GetAttributeValue, EncodeQueries) {
  unsigned char buf[100];
  CK_ATTRIBUTE t[] = {{CKA_LABEL, nullptr, 0},
                      {CKA_VALUE, buf, 100},
                      {CKA_WRAP_TEMPLATE, buf, 2 * sizeof(CK_ATTRIBUTE)},
                      {CKA_ALLOWED_MECHANISMS, buf, 3 * sizeof(CK_MECHANISM_TYPE)}};
  v1::AttributeQueryList q;
  ASSERT_TRUE(EncodeQueries(t, 4, &q).ok());
  ASSERT_EQ(q.queries_size(), 4);
  EXPECT_FALSE(q.queries(0).want_value());
  EXPECT_TRUE(q.queries(1).want_value());
  EXPECT_EQ(q.queries(1).capacity(), 100u);
  EXPECT_EQ(q.queries(2).capacity(), 2u);
  EXPECT_EQ(q.queries(3).capacity(), 3u);
  EXPECT_EQ(GetCkRv(EncodeQueries(nullptr, 2, &q)), CKR_ARGUMENTS_BAD);
}

TEST(GetAttributeValue, LengthQueriesInCallerUnits) {
  CK_ATTRIBUTE t[] = {{CKA_CLASS, nullptr, 0},
                      {CKA_TOKEN, nullptr, 0},
                      {CKA_LABEL, nullptr, 0},
                      {CKA_WRAP_TEMPLATE, nullptr, 0},
                      {CKA_ALLOWED_MECHANISMS, nullptr, 0},
                      {CKA_ID, nullptr, 0}};
  v1::AttributeAnswerList l;
  // By length only...
  for (CK_ATTRIBUTE_TYPE type : {CKA_CLASS, CKA_TOKEN, CKA_LABEL}) {
    auto* a = l.add_answers();
    a->set_length(type == CKA_LABEL ? 7 : 0);
  }
  l.add_answers()->set_length(3);  // 3 nested attributes
  l.add_answers()->set_length(5);  // 5 mechanisms
  // ... or by value.
  AddOk(&l, CKA_ID)->mutable_value()->set_bytes("12345678901");
  EXPECT_EQ(ApplyAnswers(l, t, 6), CKR_OK);
  EXPECT_EQ(t[0].ulValueLen, sizeof(CK_ULONG));
  EXPECT_EQ(t[1].ulValueLen, 1u);
  EXPECT_EQ(t[2].ulValueLen, 7u);
  EXPECT_EQ(t[3].ulValueLen, 3 * sizeof(CK_ATTRIBUTE));
  EXPECT_EQ(t[4].ulValueLen, 5 * sizeof(CK_MECHANISM_TYPE));
  EXPECT_EQ(t[5].ulValueLen, 11u);
}

TEST(GetAttributeValue, ValuesAndTooSmall) {
  CK_ULONG cls = 0;
  CK_BBOOL tok = 7;
  char label[4];
  char id[16];
  CK_MECHANISM_TYPE mechs[2];
  CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                      {CKA_TOKEN, &tok, 1},
                      {CKA_LABEL, label, sizeof(label)},
                      {CKA_ID, id, sizeof(id)},
                      {CKA_ALLOWED_MECHANISMS, mechs, sizeof(mechs)}};
  v1::AttributeAnswerList l;
  AddOk(&l, CKA_CLASS)->mutable_value()->set_ulong(CKO_PRIVATE_KEY);
  AddOk(&l, CKA_TOKEN)->mutable_value()->set_boolean(true);
  AddOk(&l, CKA_LABEL)->mutable_value()->set_bytes("too long");
  AddOk(&l, CKA_ID)->mutable_value()->set_bytes("abc");
  auto* m = AddOk(&l, CKA_ALLOWED_MECHANISMS)->mutable_value()->mutable_mechanisms();
  m->add_values(CKM_ECDSA);
  m->add_values(CKM_ECDSA_SHA256);
  EXPECT_EQ(ApplyAnswers(l, t, 5), CKR_BUFFER_TOO_SMALL);
  EXPECT_EQ(cls, CKO_PRIVATE_KEY);
  EXPECT_EQ(t[0].ulValueLen, sizeof(CK_ULONG));
  EXPECT_EQ(tok, CK_TRUE);
  EXPECT_EQ(t[2].ulValueLen, CK_UNAVAILABLE_INFORMATION);
  EXPECT_EQ(t[3].ulValueLen, 3u);
  EXPECT_EQ(std::string(id, 3), "abc");
  EXPECT_EQ(mechs[1], CKM_ECDSA_SHA256);
  EXPECT_EQ(t[4].ulValueLen, sizeof(mechs));
}

TEST(GetAttributeValue, UlongNeedsFullCapacity) {
  unsigned char small[4];
  CK_ATTRIBUTE t{CKA_KEY_TYPE, small, 4};
  v1::AttributeAnswerList l;
  AddOk(&l, CKA_KEY_TYPE)->mutable_value()->set_ulong(CKK_EC);
  EXPECT_EQ(ApplyAnswers(l, &t, 1), sizeof(CK_ULONG) > 4 ? CKR_BUFFER_TOO_SMALL : CKR_OK);
}

TEST(GetAttributeValue, Precedence) {
  char buf[1];
  auto make = [&](CK_ATTRIBUTE* t) {
    t[0] = {CKA_VALUE, buf, 1};
    t[1] = {CKA_LABEL, buf, 1};
    t[2] = {0x9999, buf, 1};
    t[3] = {CKA_PRIVATE_EXPONENT, buf, 1};
  };
  CK_ATTRIBUTE t[4];
  // too small + type invalid + sensitive -> sensitive
  v1::AttributeAnswerList l;
  AddOk(&l, CKA_VALUE)->mutable_value()->set_bytes("x");
  AddOk(&l, CKA_LABEL)->mutable_value()->set_bytes("xx");
  l.add_answers()->set_status(v1::AttributeAnswer::TYPE_INVALID);
  l.add_answers()->set_status(v1::AttributeAnswer::SENSITIVE);
  make(t);
  EXPECT_EQ(ApplyAnswers(l, t, 4), CKR_ATTRIBUTE_SENSITIVE);
  EXPECT_EQ(t[0].ulValueLen, 1u);
  EXPECT_EQ(t[1].ulValueLen, CK_UNAVAILABLE_INFORMATION);
  EXPECT_EQ(t[2].ulValueLen, CK_UNAVAILABLE_INFORMATION);
  EXPECT_EQ(t[3].ulValueLen, CK_UNAVAILABLE_INFORMATION);
  // too small + type invalid -> type invalid
  l.mutable_answers(3)->set_status(v1::AttributeAnswer::OK);
  l.mutable_answers(3)->mutable_value()->set_type(CKA_PRIVATE_EXPONENT);
  l.mutable_answers(3)->mutable_value()->set_bytes("y");
  make(t);
  EXPECT_EQ(ApplyAnswers(l, t, 4), CKR_ATTRIBUTE_TYPE_INVALID);
  EXPECT_EQ(t[3].ulValueLen, 1u);
  // too small alone
  l.mutable_answers(2)->set_status(v1::AttributeAnswer::OK);
  l.mutable_answers(2)->mutable_value()->set_type(0x9999);
  l.mutable_answers(2)->mutable_value()->set_bytes("z");
  make(t);
  EXPECT_EQ(ApplyAnswers(l, t, 4), CKR_BUFFER_TOO_SMALL);
  // all fit
  l.mutable_answers(1)->mutable_value()->set_bytes("w");
  make(t);
  EXPECT_EQ(ApplyAnswers(l, t, 4), CKR_OK);
}

TEST(GetAttributeValue, MismatchedAnswersAreGeneralError) {
  CK_ULONG v = 123;
  CK_ATTRIBUTE t{CKA_CLASS, &v, sizeof(v)};
  v1::AttributeAnswerList l;
  EXPECT_EQ(ApplyAnswers(l, &t, 1), CKR_GENERAL_ERROR);    // count mismatch
  AddOk(&l, CKA_KEY_TYPE)->mutable_value()->set_ulong(1);  // other type
  EXPECT_EQ(ApplyAnswers(l, &t, 1), CKR_GENERAL_ERROR);
  l.mutable_answers(0)->mutable_value()->set_type(CKA_CLASS);
  l.mutable_answers(0)->mutable_value()->set_bytes("abcdefgh");  // wrong kind
  EXPECT_EQ(ApplyAnswers(l, &t, 1), CKR_GENERAL_ERROR);
  l.mutable_answers(0)->clear_value();  // value asked for, none given
  EXPECT_EQ(ApplyAnswers(l, &t, 1), CKR_GENERAL_ERROR);
  l.mutable_answers(0)->set_status(static_cast<v1::AttributeAnswer::Status>(42));
  EXPECT_EQ(ApplyAnswers(l, &t, 1), CKR_GENERAL_ERROR);
  EXPECT_EQ(v, 123u);  // untouched
  EXPECT_EQ(t.ulValueLen, sizeof(v));
}

TEST(GetAttributeValue, NestedTemplateElements) {
  v1::AttributeAnswerList l;
  auto* nested = AddOk(&l, CKA_WRAP_TEMPLATE)->mutable_value()->mutable_nested();
  auto* e = nested->add_attributes();
  e->set_type(CKA_CLASS);
  e->set_ulong(CKO_SECRET_KEY);
  e = nested->add_attributes();
  e->set_type(CKA_LABEL);
  e->set_bytes("wrapped");
  e = nested->add_attributes();
  e->set_type(CKA_EXTRACTABLE);
  e->set_boolean(true);

  // Array too small for three elements.
  CK_ATTRIBUTE elems[3] = {};
  CK_ATTRIBUTE t{CKA_WRAP_TEMPLATE, elems, 2 * sizeof(CK_ATTRIBUTE)};
  EXPECT_EQ(ApplyAnswers(l, &t, 1), CKR_BUFFER_TOO_SMALL);
  EXPECT_EQ(t.ulValueLen, CK_UNAVAILABLE_INFORMATION);

  // Elements with NULL pValue: types and lengths.
  t = {CKA_WRAP_TEMPLATE, elems, sizeof(elems)};
  EXPECT_EQ(ApplyAnswers(l, &t, 1), CKR_OK);
  EXPECT_EQ(t.ulValueLen, sizeof(elems));
  EXPECT_EQ(elems[0].type, CKA_CLASS);
  EXPECT_EQ(elems[0].ulValueLen, sizeof(CK_ULONG));
  EXPECT_EQ(elems[1].type, CKA_LABEL);
  EXPECT_EQ(elems[1].ulValueLen, 7u);
  EXPECT_EQ(elems[2].ulValueLen, 1u);

  // Buffers: one too small.
  CK_ULONG cls = 0;
  char label[3];
  CK_BBOOL ext = CK_FALSE;
  elems[0].pValue = &cls;
  elems[1].pValue = label;
  elems[1].ulValueLen = sizeof(label);
  elems[2].pValue = &ext;
  EXPECT_EQ(ApplyAnswers(l, &t, 1), CKR_BUFFER_TOO_SMALL);
  EXPECT_EQ(cls, CKO_SECRET_KEY);
  EXPECT_EQ(elems[1].ulValueLen, CK_UNAVAILABLE_INFORMATION);
  EXPECT_EQ(ext, CK_TRUE);

  char label_ok[16];
  elems[1].pValue = label_ok;
  elems[1].ulValueLen = sizeof(label_ok);
  EXPECT_EQ(ApplyAnswers(l, &t, 1), CKR_OK);
  EXPECT_EQ(std::string(label_ok, elems[1].ulValueLen), "wrapped");
}

// ------------------------------------------------------------- mechanisms --

NativeMechanism RoundTrip(const CK_MECHANISM& m, v1::Mechanism* wire_out = nullptr) {
  v1::Mechanism wire;
  absl::Status s = EncodeMechanism(&m, &wire);
  EXPECT_TRUE(s.ok()) << MechanismName(m.mechanism) << ": " << s;
  if (wire_out) *wire_out = wire;
  auto native = NativeMechanism::Decode(wire);
  EXPECT_TRUE(native.ok()) << MechanismName(m.mechanism) << ": " << native.status();
  if (!native.ok()) return NativeMechanism();
  return std::move(native).value();
}

CK_RV EncodeRv(CK_MECHANISM_TYPE type, void* p, CK_ULONG len) {
  CK_MECHANISM m{type, p, len};
  v1::Mechanism wire;
  return GetCkRv(EncodeMechanism(&m, &wire));
}

CK_RV DecodeRv(const v1::Mechanism& wire) {
  return GetCkRv(NativeMechanism::Decode(wire).status());
}

TEST(MechanismCodec, NoParameterMechanisms) {
  for (CK_MECHANISM_TYPE t : {CKM_RSA_PKCS,
                              CKM_RSA_X_509,
                              CKM_SHA256_RSA_PKCS,
                              CKM_ECDSA,
                              CKM_ECDSA_SHA384,
                              CKM_EDDSA,
                              CKM_AES_ECB,
                              CKM_AES_KEY_WRAP,
                              CKM_AES_KEY_WRAP_PAD,
                              CKM_AES_CMAC,
                              CKM_SHA_1,
                              CKM_SHA512,
                              CKM_MD5,
                              CKM_SHA256_HMAC,
                              CKM_GENERIC_SECRET_KEY_GEN,
                              CKM_AES_KEY_GEN,
                              CKM_RSA_PKCS_KEY_PAIR_GEN,
                              CKM_EC_KEY_PAIR_GEN,
                              CKM_EC_EDWARDS_KEY_PAIR_GEN,
                              CKM_DES3_KEY_GEN}) {
    EXPECT_TRUE(CanCarryMechanism(t)) << MechanismName(t);
    CK_MECHANISM m{t, nullptr, 0};
    v1::Mechanism wire;
    NativeMechanism n = RoundTrip(m, &wire);
    EXPECT_EQ(wire.params_case(), v1::Mechanism::PARAMS_NOT_SET);
    EXPECT_EQ(n.get()->mechanism, t);
    EXPECT_EQ(n.get()->pParameter, nullptr);
    EXPECT_EQ(n.get()->ulParameterLen, 0u);
  }
  unsigned char junk[8] = {};
  EXPECT_EQ(EncodeRv(CKM_RSA_PKCS, junk, 8), CKR_MECHANISM_PARAM_INVALID);
  EXPECT_EQ(EncodeRv(CKM_SHA256, junk, 1), CKR_MECHANISM_PARAM_INVALID);
  v1::Mechanism wire;
  wire.set_type(CKM_ECDSA);
  wire.set_raw("x");
  EXPECT_EQ(DecodeRv(wire), CKR_MECHANISM_PARAM_INVALID);
}

TEST(MechanismCodec, BadArgumentsAndUnknownMechanisms) {
  v1::Mechanism wire;
  EXPECT_EQ(GetCkRv(EncodeMechanism(nullptr, &wire)), CKR_ARGUMENTS_BAD);
  EXPECT_EQ(EncodeRv(CKM_AES_CBC, nullptr, 16), CKR_ARGUMENTS_BAD);
  unsigned char p[16] = {};
  const CK_MECHANISM_TYPE unknown = CKM_VENDOR_DEFINED | 0x1234;
  EXPECT_FALSE(CanCarryMechanism(unknown));
  EXPECT_EQ(EncodeRv(unknown, p, 16), CKR_MECHANISM_INVALID);
  EXPECT_EQ(EncodeRv(unknown, nullptr, 0), CKR_OK);
  EXPECT_EQ(EncodeRv(CKM_AES_CCM, p, 16), CKR_MECHANISM_INVALID);
  wire.set_type(unknown);
  EXPECT_EQ(DecodeRv(wire), CKR_OK);
  wire.set_raw("abc");
  EXPECT_EQ(DecodeRv(wire), CKR_MECHANISM_INVALID);
  EXPECT_EQ(MechanismName(CKM_AES_GCM), "CKM_AES_GCM");
  EXPECT_EQ(MechanismName(CKM_EC_KEY_PAIR_GEN), "CKM_EC_KEY_PAIR_GEN");
  EXPECT_EQ(MechanismName(0x80001234), "CKM_0x80001234");
}

TEST(MechanismCodec, RawIvs) {
  unsigned char iv[16];
  for (int i = 0; i < 16; ++i) iv[i] = static_cast<unsigned char>(i);
  for (CK_MECHANISM_TYPE t : {CKM_AES_CBC, CKM_AES_CBC_PAD}) {
    NativeMechanism n = RoundTrip({t, iv, 16});
    ASSERT_EQ(n.get()->ulParameterLen, 16u);
    EXPECT_EQ(std::memcmp(n.get()->pParameter, iv, 16), 0);
    EXPECT_NE(n.get()->pParameter, static_cast<void*>(iv));
    EXPECT_EQ(EncodeRv(t, iv, 15), CKR_MECHANISM_PARAM_INVALID);
    EXPECT_EQ(EncodeRv(t, iv, 8), CKR_MECHANISM_PARAM_INVALID);
  }
  for (CK_MECHANISM_TYPE t : {CKM_DES3_CBC, CKM_DES3_CBC_PAD}) {
    EXPECT_EQ(RoundTrip({t, iv, 8}).get()->ulParameterLen, 8u);
    EXPECT_EQ(EncodeRv(t, iv, 16), CKR_MECHANISM_PARAM_INVALID);
  }
  EXPECT_EQ(RoundTrip({CKM_AES_KEY_WRAP, iv, 8}).get()->ulParameterLen, 8u);
  EXPECT_EQ(EncodeRv(CKM_AES_KEY_WRAP, iv, 4), CKR_MECHANISM_PARAM_INVALID);
  EXPECT_EQ(RoundTrip({CKM_AES_KEY_WRAP_PAD, iv, 4}).get()->ulParameterLen, 4u);
  EXPECT_EQ(RoundTrip({CKM_AES_KEY_WRAP_PAD, iv, 8}).get()->ulParameterLen, 8u);
  EXPECT_EQ(EncodeRv(CKM_AES_KEY_WRAP_PAD, iv, 5), CKR_MECHANISM_PARAM_INVALID);
  // Wire length checked again on the agent.
  v1::Mechanism wire;
  wire.set_type(CKM_AES_CBC);
  wire.set_raw(std::string(12, 'x'));
  EXPECT_EQ(DecodeRv(wire), CKR_MECHANISM_PARAM_INVALID);
  wire.set_ulong(3);
  EXPECT_EQ(DecodeRv(wire), CKR_MECHANISM_PARAM_INVALID);
}

TEST(MechanismCodec, KeyDerivationStringData) {
  unsigned char data[32];
  std::memset(data, 0xab, sizeof(data));
  for (CK_MECHANISM_TYPE t :
       {CKM_AES_ECB_ENCRYPT_DATA, CKM_DES3_ECB_ENCRYPT_DATA, CKM_CONCATENATE_DATA_AND_BASE,
        CKM_CONCATENATE_BASE_AND_DATA, CKM_XOR_BASE_AND_DATA}) {
    CK_KEY_DERIVATION_STRING_DATA p{data, sizeof(data)};
    v1::Mechanism wire;
    NativeMechanism n = RoundTrip({t, &p, sizeof(p)}, &wire);
    EXPECT_EQ(wire.raw().size(), 32u);
    ASSERT_EQ(n.get()->ulParameterLen, sizeof(CK_KEY_DERIVATION_STRING_DATA));
    auto* s = static_cast<CK_KEY_DERIVATION_STRING_DATA*>(n.get()->pParameter);
    ASSERT_EQ(s->ulLen, 32u);
    EXPECT_EQ(std::memcmp(s->pData, data, 32), 0);
    CK_KEY_DERIVATION_STRING_DATA bad{nullptr, 4};
    EXPECT_EQ(EncodeRv(t, &bad, sizeof(bad)), CKR_MECHANISM_PARAM_INVALID);
    EXPECT_EQ(EncodeRv(t, &p, sizeof(p) - 1), CKR_MECHANISM_PARAM_INVALID);
  }
}

TEST(MechanismCodec, MacGeneralParams) {
  for (CK_MECHANISM_TYPE t :
       {CKM_SHA_1_HMAC_GENERAL, CKM_SHA224_HMAC_GENERAL, CKM_SHA256_HMAC_GENERAL,
        CKM_SHA384_HMAC_GENERAL, CKM_SHA512_HMAC_GENERAL, CKM_AES_CMAC_GENERAL}) {
    CK_ULONG len = 12;  // CK_MAC_GENERAL_PARAMS (p11-kit has no typedef)
    NativeMechanism n = RoundTrip({t, &len, sizeof(len)});
    ASSERT_EQ(n.get()->ulParameterLen, sizeof(CK_ULONG));
    EXPECT_EQ(*static_cast<CK_ULONG*>(n.get()->pParameter), 12u);
    EXPECT_EQ(EncodeRv(t, &len, 4 + (sizeof(CK_ULONG) == 4)), CKR_MECHANISM_PARAM_INVALID);
  }
}

TEST(MechanismCodec, RsaPss) {
  for (CK_MECHANISM_TYPE t :
       {CKM_RSA_PKCS_PSS, CKM_SHA1_RSA_PKCS_PSS, CKM_SHA224_RSA_PKCS_PSS, CKM_SHA256_RSA_PKCS_PSS,
        CKM_SHA384_RSA_PKCS_PSS, CKM_SHA512_RSA_PKCS_PSS}) {
    CK_RSA_PKCS_PSS_PARAMS p{CKM_SHA384, CKG_MGF1_SHA384, 48};
    NativeMechanism n = RoundTrip({t, &p, sizeof(p)});
    ASSERT_EQ(n.get()->ulParameterLen, sizeof(p));
    auto* s = static_cast<CK_RSA_PKCS_PSS_PARAMS*>(n.get()->pParameter);
    EXPECT_EQ(s->hashAlg, CKM_SHA384);
    EXPECT_EQ(s->mgf, CKG_MGF1_SHA384);
    EXPECT_EQ(s->sLen, 48u);
    EXPECT_EQ(EncodeRv(t, &p, sizeof(p) - 8), CKR_MECHANISM_PARAM_INVALID);
  }
}

TEST(MechanismCodec, RsaOaep) {
  unsigned char label[] = {'l', 'b', 'l'};
  CK_RSA_PKCS_OAEP_PARAMS p{CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, label, 3};
  NativeMechanism n = RoundTrip({CKM_RSA_PKCS_OAEP, &p, sizeof(p)});
  auto* s = static_cast<CK_RSA_PKCS_OAEP_PARAMS*>(n.get()->pParameter);
  EXPECT_EQ(s->hashAlg, CKM_SHA256);
  EXPECT_EQ(s->mgf, CKG_MGF1_SHA256);
  EXPECT_EQ(s->source, CKZ_DATA_SPECIFIED);
  ASSERT_EQ(s->ulSourceDataLen, 3u);
  EXPECT_EQ(std::memcmp(s->pSourceData, "lbl", 3), 0);
  EXPECT_NE(s->pSourceData, static_cast<void*>(label));

  CK_RSA_PKCS_OAEP_PARAMS none{CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, nullptr, 0};
  n = RoundTrip({CKM_RSA_PKCS_OAEP, &none, sizeof(none)});
  s = static_cast<CK_RSA_PKCS_OAEP_PARAMS*>(n.get()->pParameter);
  EXPECT_EQ(s->pSourceData, nullptr);
  EXPECT_EQ(s->ulSourceDataLen, 0u);

  CK_RSA_PKCS_OAEP_PARAMS bad{CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, nullptr, 5};
  EXPECT_EQ(EncodeRv(CKM_RSA_PKCS_OAEP, &bad, sizeof(bad)), CKR_MECHANISM_PARAM_INVALID);
  EXPECT_EQ(EncodeRv(CKM_RSA_PKCS_OAEP, &p, sizeof(p) + 8), CKR_MECHANISM_PARAM_INVALID);
}

// The JDK's 40-byte structure (no ulIvBits).
struct JdkGcm {
  CK_BYTE_PTR pIv;
  CK_ULONG ulIvLen;
  CK_BYTE_PTR pAAD;
  CK_ULONG ulAADLen;
  CK_ULONG ulTagBits;
};

TEST(MechanismCodec, GcmBothLayouts) {
  unsigned char iv[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  unsigned char aad[5] = {'h', 'e', 'l', 'l', 'o'};
  CK_GCM_PARAMS p48{iv, 12, 64, aad, 5, 96};  // an unusual ulIvBits is kept
  v1::Mechanism wire;
  NativeMechanism n = RoundTrip({CKM_AES_GCM, &p48, sizeof(p48)}, &wire);
  EXPECT_TRUE(wire.gcm().has_iv_bits());
  ASSERT_EQ(n.get()->ulParameterLen, sizeof(CK_GCM_PARAMS));
  auto* s = static_cast<CK_GCM_PARAMS*>(n.get()->pParameter);
  EXPECT_EQ(s->ulIvLen, 12u);
  EXPECT_EQ(s->ulIvBits, 64u);
  EXPECT_EQ(std::memcmp(s->pIv, iv, 12), 0);
  EXPECT_EQ(s->ulAADLen, 5u);
  EXPECT_EQ(std::memcmp(s->pAAD, aad, 5), 0);
  EXPECT_EQ(s->ulTagBits, 96u);

  ASSERT_EQ(sizeof(JdkGcm), 5 * sizeof(CK_ULONG));
  JdkGcm p40{iv, 12, nullptr, 0, 128};
  n = RoundTrip({CKM_AES_GCM, &p40, sizeof(p40)}, &wire);
  EXPECT_FALSE(wire.gcm().has_iv_bits());
  ASSERT_EQ(n.get()->ulParameterLen, sizeof(CK_GCM_PARAMS));  // always the 48-byte form
  s = static_cast<CK_GCM_PARAMS*>(n.get()->pParameter);
  EXPECT_EQ(s->ulIvLen, 12u);
  EXPECT_EQ(s->ulIvBits, 96u);
  EXPECT_EQ(s->pAAD, nullptr);
  EXPECT_EQ(s->ulAADLen, 0u);
  EXPECT_EQ(s->ulTagBits, 128u);

  EXPECT_EQ(EncodeRv(CKM_AES_GCM, &p48, 44), CKR_MECHANISM_PARAM_INVALID);
  CK_GCM_PARAMS null_iv{nullptr, 12, 96, nullptr, 0, 128};
  EXPECT_EQ(EncodeRv(CKM_AES_GCM, &null_iv, sizeof(null_iv)), CKR_MECHANISM_PARAM_INVALID);
  JdkGcm null_aad{iv, 12, nullptr, 3, 128};
  EXPECT_EQ(EncodeRv(CKM_AES_GCM, &null_aad, sizeof(null_aad)), CKR_MECHANISM_PARAM_INVALID);
}

TEST(MechanismCodec, GcmIvOutputCarriedBack) {
  unsigned char caller_iv[12] = {};
  unsigned char aad[3] = {1, 2, 3};
  JdkGcm p40{caller_iv, 12, aad, 3, 128};
  CK_MECHANISM caller{CKM_AES_GCM, &p40, sizeof(p40)};
  NativeMechanism n = RoundTrip(caller);
  // A member writes a generated IV into the parameter.
  auto* s = static_cast<CK_GCM_PARAMS*>(n.get()->pParameter);
  for (int i = 0; i < 12; ++i) s->pIv[i] = static_cast<CK_BYTE>(0xa0 + i);
  v1::Mechanism out;
  n.EncodeOutput(&out);
  ApplyMechanismOutput(out, &caller);
  for (int i = 0; i < 12; ++i) EXPECT_EQ(caller_iv[i], 0xa0 + i);

  // 48-byte layout too, but never into a buffer of another length.
  unsigned char iv16[16] = {};
  CK_GCM_PARAMS p48{iv16, 16, 128, nullptr, 0, 128};
  CK_MECHANISM other{CKM_AES_GCM, &p48, sizeof(p48)};
  ApplyMechanismOutput(out, &other);
  for (unsigned char b : iv16) EXPECT_EQ(b, 0);
  unsigned char iv12[12] = {};
  p48 = {iv12, 12, 96, nullptr, 0, 128};
  ApplyMechanismOutput(out, &other);
  EXPECT_EQ(iv12[11], 0xab);

  // Mechanisms without output are left alone.
  unsigned char cbc_iv[16] = {};
  CK_MECHANISM cbc{CKM_AES_CBC, cbc_iv, 16};
  NativeMechanism c = RoundTrip(cbc);
  c.EncodeOutput(&out);
  EXPECT_FALSE(out.has_gcm());
  ApplyMechanismOutput(out, &cbc);
}

TEST(MechanismCodec, AesCtr) {
  CK_AES_CTR_PARAMS p{};
  p.ulCounterBits = 32;
  for (int i = 0; i < 16; ++i) p.cb[i] = static_cast<CK_BYTE>(0xf0 + i);
  NativeMechanism n = RoundTrip({CKM_AES_CTR, &p, sizeof(p)});
  auto* s = static_cast<CK_AES_CTR_PARAMS*>(n.get()->pParameter);
  EXPECT_EQ(s->ulCounterBits, 32u);
  EXPECT_EQ(std::memcmp(s->cb, p.cb, 16), 0);
  EXPECT_EQ(EncodeRv(CKM_AES_CTR, &p, 16), CKR_MECHANISM_PARAM_INVALID);
  v1::Mechanism wire;
  wire.set_type(CKM_AES_CTR);
  wire.mutable_ctr()->set_counter_bits(32);
  wire.mutable_ctr()->set_counter_block(std::string(15, 'x'));
  EXPECT_EQ(DecodeRv(wire), CKR_MECHANISM_PARAM_INVALID);
}

TEST(MechanismCodec, Ecdh1Derive) {
  unsigned char pub[65];
  std::memset(pub, 4, sizeof(pub));
  unsigned char shared[] = {9, 9};
  for (CK_MECHANISM_TYPE t : {CKM_ECDH1_DERIVE, CKM_ECDH1_COFACTOR_DERIVE}) {
    CK_ECDH1_DERIVE_PARAMS p{CKD_SHA256_KDF, 2, shared, 65, pub};
    NativeMechanism n = RoundTrip({t, &p, sizeof(p)});
    auto* s = static_cast<CK_ECDH1_DERIVE_PARAMS*>(n.get()->pParameter);
    EXPECT_EQ(s->kdf, CKD_SHA256_KDF);
    ASSERT_EQ(s->ulSharedDataLen, 2u);
    EXPECT_EQ(std::memcmp(s->pSharedData, shared, 2), 0);
    ASSERT_EQ(s->ulPublicDataLen, 65u);
    EXPECT_EQ(std::memcmp(s->pPublicData, pub, 65), 0);

    CK_ECDH1_DERIVE_PARAMS null_kdf{CKD_NULL, 0, nullptr, 65, pub};
    n = RoundTrip({t, &null_kdf, sizeof(null_kdf)});
    s = static_cast<CK_ECDH1_DERIVE_PARAMS*>(n.get()->pParameter);
    EXPECT_EQ(s->pSharedData, nullptr);
    EXPECT_EQ(s->ulSharedDataLen, 0u);

    CK_ECDH1_DERIVE_PARAMS bad{CKD_NULL, 0, nullptr, 65, nullptr};
    EXPECT_EQ(EncodeRv(t, &bad, sizeof(bad)), CKR_MECHANISM_PARAM_INVALID);
  }
}

TEST(MechanismCodec, Eddsa) {
  unsigned char ctx[] = {'c', 't', 'x'};
  EddsaParams p{CK_TRUE, 3, ctx};
  NativeMechanism n = RoundTrip({CKM_EDDSA, &p, sizeof(p)});
  auto* s = static_cast<EddsaParams*>(n.get()->pParameter);
  EXPECT_EQ(s->phFlag, CK_TRUE);
  ASSERT_EQ(s->ulContextDataLen, 3u);
  EXPECT_EQ(std::memcmp(s->pContextData, ctx, 3), 0);
  EddsaParams bad{CK_FALSE, 3, nullptr};
  EXPECT_EQ(EncodeRv(CKM_EDDSA, &bad, sizeof(bad)), CKR_MECHANISM_PARAM_INVALID);
  EXPECT_EQ(EncodeRv(CKM_EDDSA, &p, 1), CKR_MECHANISM_PARAM_INVALID);
}

TEST(MechanismCodec, AesCbcEncryptData) {
  unsigned char data[32];
  std::memset(data, 0x5a, sizeof(data));
  CK_AES_CBC_ENCRYPT_DATA_PARAMS p{};
  for (int i = 0; i < 16; ++i) p.iv[i] = static_cast<CK_BYTE>(i);
  p.pData = data;
  p.length = sizeof(data);
  NativeMechanism n = RoundTrip({CKM_AES_CBC_ENCRYPT_DATA, &p, sizeof(p)});
  auto* s = static_cast<CK_AES_CBC_ENCRYPT_DATA_PARAMS*>(n.get()->pParameter);
  EXPECT_EQ(std::memcmp(s->iv, p.iv, 16), 0);
  ASSERT_EQ(s->length, 32u);
  EXPECT_EQ(std::memcmp(s->pData, data, 32), 0);
  v1::Mechanism wire;
  wire.set_type(CKM_AES_CBC_ENCRYPT_DATA);
  wire.mutable_aes_cbc_data()->set_iv(std::string(8, 'i'));
  EXPECT_EQ(DecodeRv(wire), CKR_MECHANISM_PARAM_INVALID);
}

TEST(MechanismCodec, WireParamsMustMatchCodec) {
  v1::Mechanism wire;
  wire.set_type(CKM_AES_GCM);
  wire.set_raw(std::string(12, 'x'));
  EXPECT_EQ(DecodeRv(wire), CKR_MECHANISM_PARAM_INVALID);
  wire.set_type(CKM_RSA_PKCS_PSS);
  wire.mutable_oaep();
  EXPECT_EQ(DecodeRv(wire), CKR_MECHANISM_PARAM_INVALID);
  wire.set_type(CKM_SHA256_HMAC_GENERAL);
  wire.mutable_pss();
  EXPECT_EQ(DecodeRv(wire), CKR_MECHANISM_PARAM_INVALID);
}

// Short buffers live inside std::string (SSO): a move that forgot to fix the
// internal pointers would leave them pointing into the moved-from object.
TEST(MechanismCodec, NativeMechanismIsMovable) {
  unsigned char iv[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  unsigned char aad[3] = {7, 7, 7};
  CK_GCM_PARAMS p{iv, 12, 96, aad, 3, 128};
  NativeMechanism a = RoundTrip({CKM_AES_GCM, &p, sizeof(p)});
  std::vector<NativeMechanism> v;
  v.push_back(std::move(a));
  for (int i = 0; i < 8; ++i) v.emplace_back();  // reallocations move elements
  NativeMechanism b;
  b = std::move(v[0]);
  EXPECT_EQ(a.get()->pParameter, nullptr);
  auto* s = static_cast<CK_GCM_PARAMS*>(b.get()->pParameter);
  auto inside = [&b](const void* ptr) {
    auto* lo = reinterpret_cast<const char*>(&b);
    auto* x = static_cast<const char*>(ptr);
    return x >= lo && x < lo + sizeof(b);
  };
  EXPECT_TRUE(inside(s));
  EXPECT_TRUE(inside(s->pIv));  // SSO storage of the moved-to object
  EXPECT_EQ(std::memcmp(s->pIv, iv, 12), 0);
  EXPECT_EQ(std::memcmp(s->pAAD, aad, 3), 0);

  CK_KEY_DERIVATION_STRING_DATA sd{iv, 5};
  NativeMechanism c = RoundTrip({CKM_AES_ECB_ENCRYPT_DATA, &sd, sizeof(sd)});
  NativeMechanism d(std::move(c));
  auto* sds = static_cast<CK_KEY_DERIVATION_STRING_DATA*>(d.get()->pParameter);
  EXPECT_TRUE(inside(sds) == false);  // d, not b
  EXPECT_EQ(std::memcmp(sds->pData, iv, 5), 0);
  unsigned char cbc_iv[16] = {3};
  NativeMechanism e = RoundTrip({CKM_AES_CBC, cbc_iv, 16});
  NativeMechanism f(std::move(e));
  EXPECT_EQ(std::memcmp(f.get()->pParameter, cbc_iv, 16), 0);
}

}  // namespace
}  // namespace hsmux::wire
