// Session objects when their member fails (DESIGN §3): one made by
// C_CreateObject is made again on another member from the template the agent
// kept; a generated session key is lost with its member and its next use
// answers CKR_KEY_HANDLE_INVALID. Generating a session key is pinned to the
// home member: its failure is the client's answer.
#include <gtest/gtest.h>

#include <chrono>
#include <set>
#include <string>
#include <thread>

#include "group_util.h"

namespace hsmux::grouptest {
namespace {

const char* kMembers[] = {"member-a", "member-b", "member-c"};

// The member whose C_CreateObject count grew: where the session objects live.
std::string HomeOf(const uint64_t before[3]) {
  for (int i = 0; i < 3; ++i) {
    if (ReadStats(kMembers[i]).Calls("C_CreateObject") > before[i]) return kMembers[i];
  }
  return "";
}

TEST(HaSessionObjects, CreatedObjectsMoveGeneratedKeysAreLost) {
  CK_FUNCTION_LIST* p = Module();
  ASSERT_NE(p, nullptr);
  ASSERT_EQ(p->C_Initialize(nullptr), CKR_OK);
  CK_SESSION_HANDLE s = OpenSession(p, ClientPin());
  ASSERT_NE(s, CK_INVALID_HANDLE);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // stats settle
  uint64_t before[3];
  for (int i = 0; i < 3; ++i) before[i] = ReadStats(kMembers[i]).Calls("C_CreateObject");

  // A session AES key from a known value, and a session data object.
  const Bytes value = RandomBytes(32);
  Attrs key;
  key.Ulong(CKA_CLASS, CKO_SECRET_KEY).Ulong(CKA_KEY_TYPE, CKK_AES).Bool(CKA_TOKEN, false)
      .Bool(CKA_ENCRYPT, true).Bool(CKA_DECRYPT, true).Str(CKA_LABEL, "sess-aes")
      .Raw(CKA_VALUE, value);
  CK_OBJECT_HANDLE aes = CK_INVALID_HANDLE;
  ASSERT_EQ(p->C_CreateObject(s, key.data(), key.size(), &aes), CKR_OK);
  Attrs data;
  data.Ulong(CKA_CLASS, CKO_DATA).Bool(CKA_TOKEN, false).Bool(CKA_PRIVATE, false)
      .Str(CKA_LABEL, "sess-data").Str(CKA_VALUE, "kept in agent memory");
  CK_OBJECT_HANDLE obj = CK_INVALID_HANDLE;
  ASSERT_EQ(p->C_CreateObject(s, data.data(), data.size(), &obj), CKR_OK);
  CK_OBJECT_HANDLE generated = CK_INVALID_HANDLE;
  ASSERT_EQ(GenAes(p, s, "sess-gen", ToBytes("g1"), /*token=*/false, &generated), CKR_OK);

  const Bytes block(16, 0x5a);
  const Bytes before_ct = EncryptEcb(p, s, aes, block);
  ASSERT_EQ(before_ct.size(), 16u);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const std::string home = HomeOf(before);
  ASSERT_FALSE(home.empty()) << "could not tell which member holds the session objects";

  ASSERT_TRUE(TestwrapCtl(home, {"power=off"}));
  // The data object and the created key come back on another member.
  EXPECT_EQ(AttrStr(p, s, obj, CKA_VALUE), "kept in agent memory");
  EXPECT_EQ(EncryptEcb(p, s, aes, block), before_ct) << "the re-made key differs";
  // The generated key was on the failed member only.
  CK_MECHANISM ecb = {CKM_AES_ECB, nullptr, 0};
  EXPECT_EQ(p->C_EncryptInit(s, &ecb, generated), CKR_KEY_HANDLE_INVALID);
  ASSERT_TRUE(TestwrapCtl(home, {"power=on"}));
  EXPECT_EQ(p->C_Finalize(nullptr), CKR_OK);
}

// A session key is generated on the instance's home member only (pinned):
// a failure there is the client's answer, with the member's rv, and is not
// retried on another member.
TEST(HaSessionObjects, SessionKeyGenerationIsPinnedToTheHomeMember) {
  std::string raw;
  ASSERT_TRUE(WaitAllHealthy(30000, &raw)) << raw;  // after the test before
  CK_FUNCTION_LIST* p = Module();
  ASSERT_NE(p, nullptr);
  ASSERT_EQ(p->C_Initialize(nullptr), CKR_OK);
  CK_SESSION_HANDLE s = OpenSession(p, ClientPin());
  ASSERT_NE(s, CK_INVALID_HANDLE);
  // A session object settles the home member.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // stats settle
  uint64_t before[3];
  for (int i = 0; i < 3; ++i) before[i] = ReadStats(kMembers[i]).Calls("C_CreateObject");
  Attrs data;
  data.Ulong(CKA_CLASS, CKO_DATA).Bool(CKA_TOKEN, false).Str(CKA_LABEL, "sess-home");
  CK_OBJECT_HANDLE obj = CK_INVALID_HANDLE;
  ASSERT_EQ(p->C_CreateObject(s, data.data(), data.size(), &obj), CKR_OK);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const std::string home = HomeOf(before);
  ASSERT_FALSE(home.empty()) << "could not tell which member holds the session objects";
  size_t home_index = 0;
  while (kMembers[home_index] != home) ++home_index;

  // CKR_DEVICE_MEMORY (0x31), a device failure, from the home member only.
  ASSERT_TRUE(TestwrapCtl(home, {"fail_rv=0x31", "fail_functions=C_GenerateKey"}));
  auto gen_before = CallCounts("C_GenerateKey");
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
  EXPECT_EQ(GenAes(p, s, "sess-pinned", ToBytes("p1"), /*token=*/false, &key),
            static_cast<CK_RV>(CKR_DEVICE_MEMORY));
  EXPECT_EQ(GrewOn("C_GenerateKey", gen_before), std::set<size_t>{home_index})
      << "the generation went to another member";

  // Once the member is well again, the key is made there and works.
  ASSERT_TRUE(TestwrapCtl(home, {"--clear"}));
  gen_before = CallCounts("C_GenerateKey");
  ASSERT_EQ(GenAes(p, s, "sess-pinned", ToBytes("p2"), /*token=*/false, &key), CKR_OK);
  EXPECT_EQ(GrewOn("C_GenerateKey", gen_before), std::set<size_t>{home_index});
  EXPECT_EQ(EncryptEcb(p, s, key, Bytes(16, 0x11)).size(), 16u);
  EXPECT_EQ(p->C_Finalize(nullptr), CKR_OK);
}

}  // namespace
}  // namespace hsmux::grouptest
