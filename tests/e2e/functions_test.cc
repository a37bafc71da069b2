// E2E: the module loaded with dlopen against a running agent. General
// functions, slots, token, mechanisms, sessions and login; the other
// families are in functions_{objects,crypto,state}_test.cc.
#include <algorithm>
#include <chrono>
#include <future>
#include <thread>

#include "functions_util.h"

namespace hsmux::testing {
namespace {

std::string Field(const CK_UTF8CHAR* p, size_t n) {
  return std::string(reinterpret_cast<const char*>(p), n);
}
std::string Padded(const std::string& s, size_t n) { return s + std::string(n - s.size(), ' '); }

using GeneralTest = P11Test;

TEST_F(GeneralTest, InitializeTwiceAndGetInfo) {
  EXPECT_EQ(p->C_Initialize(nullptr), CKR_CRYPTOKI_ALREADY_INITIALIZED);
  CK_INFO info;
  std::memset(&info, 0xAB, sizeof(info));
  ASSERT_EQ(p->C_GetInfo(&info), CKR_OK);
  EXPECT_EQ(info.cryptokiVersion.major, 2);
  EXPECT_EQ(info.cryptokiVersion.minor, 40);
  EXPECT_EQ(Field(info.manufacturerID, 32), Padded("hsmux", 32));
  EXPECT_EQ(info.flags, 0u);
  EXPECT_EQ(p->C_GetInfo(nullptr), CKR_ARGUMENTS_BAD);
}

TEST_F(GeneralTest, FinalizeThenCallsAnswerNotInitialized) {
  ASSERT_EQ(p->C_Finalize(nullptr), CKR_OK);
  CK_INFO info;
  EXPECT_EQ(p->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
  CK_ULONG n = 0;
  EXPECT_EQ(p->C_GetSlotList(CK_TRUE, nullptr, &n), CKR_CRYPTOKI_NOT_INITIALIZED);
  EXPECT_EQ(p->C_Finalize(nullptr), CKR_CRYPTOKI_NOT_INITIALIZED);
  // Initialise again: a new instance works.
  ASSERT_EQ(p->C_Initialize(nullptr), CKR_OK);
  Session s(p, false);
  EXPECT_EQ(s.open_rv(), CKR_OK);
}

TEST_F(GeneralTest, GetSlotList) {
  CK_ULONG n = 0;
  ASSERT_EQ(p->C_GetSlotList(CK_TRUE, nullptr, &n), CKR_OK);
  ASSERT_EQ(n, 1u);
  CK_SLOT_ID slots[4] = {99, 99, 99, 99};
  CK_ULONG small = 0;
  EXPECT_EQ(p->C_GetSlotList(CK_TRUE, slots, &small), CKR_BUFFER_TOO_SMALL);
  EXPECT_EQ(small, 1u);
  EXPECT_EQ(slots[0], 99u);  // nothing written
  n = 4;
  ASSERT_EQ(p->C_GetSlotList(CK_FALSE, slots, &n), CKR_OK);
  ASSERT_EQ(n, 1u);
  EXPECT_EQ(slots[0], kSlot);
  EXPECT_EQ(p->C_GetSlotList(CK_TRUE, slots, nullptr), CKR_ARGUMENTS_BAD);
}

TEST_F(GeneralTest, GetSlotInfo) {
  CK_SLOT_INFO info;
  std::memset(&info, 0xAB, sizeof(info));
  ASSERT_EQ(p->C_GetSlotInfo(kSlot, &info), CKR_OK);
  EXPECT_TRUE(info.flags & CKF_TOKEN_PRESENT);
  EXPECT_TRUE(info.flags & CKF_REMOVABLE_DEVICE);
  EXPECT_EQ(info.flags & ~(CKF_TOKEN_PRESENT | CKF_REMOVABLE_DEVICE | CKF_HW_SLOT), 0u);
  const std::string desc = Field(info.slotDescription, 64);
  EXPECT_EQ(desc.find('\0'), std::string::npos) << "blank padded, not NUL terminated";
  EXPECT_EQ(p->C_GetSlotInfo(42, &info), CKR_SLOT_ID_INVALID);
}

TEST_F(GeneralTest, GetTokenInfo) {
  CK_TOKEN_INFO info;
  std::memset(&info, 0xAB, sizeof(info));
  ASSERT_EQ(p->C_GetTokenInfo(kSlot, &info), CKR_OK);
  EXPECT_EQ(Field(info.label, 32), Padded("hsmux-demo", 32));
  EXPECT_EQ(Field(info.serialNumber, 16), Padded("HSMUX0001", 16));
  const CK_FLAGS want =
      CKF_TOKEN_INITIALIZED | CKF_USER_PIN_INITIALIZED | CKF_LOGIN_REQUIRED | CKF_RNG;
  EXPECT_EQ(info.flags & want, want) << std::hex << info.flags;
  EXPECT_FALSE(info.flags & (CKF_USER_PIN_LOCKED | CKF_USER_PIN_COUNT_LOW | CKF_WRITE_PROTECTED));
  EXPECT_LE(info.ulMinPinLen, info.ulMaxPinLen);
  // SoftHSM reports ulSessionCount as CK_UNAVAILABLE_INFORMATION; the virtual
  // token counts this instance's sessions.
  EXPECT_EQ(info.ulSessionCount, 0u);
  Session ro(p, false), rw(p, true);
  ASSERT_EQ(p->C_GetTokenInfo(kSlot, &info), CKR_OK);
  EXPECT_EQ(info.ulSessionCount, 2u);
  EXPECT_EQ(info.ulRwSessionCount, 1u);
  EXPECT_EQ(p->C_GetTokenInfo(7, &info), CKR_SLOT_ID_INVALID);
}

TEST_F(GeneralTest, GetMechanismList) {
  CK_ULONG n = 0;
  ASSERT_EQ(p->C_GetMechanismList(kSlot, nullptr, &n), CKR_OK);
  ASSERT_GT(n, 10u);
  std::vector<CK_MECHANISM_TYPE> list(n);
  CK_ULONG small = 1;
  EXPECT_EQ(p->C_GetMechanismList(kSlot, list.data(), &small), CKR_BUFFER_TOO_SMALL);
  EXPECT_EQ(small, n);
  ASSERT_EQ(p->C_GetMechanismList(kSlot, list.data(), &n), CKR_OK);
  ASSERT_EQ(n, list.size());
  for (CK_MECHANISM_TYPE m :
       {CKM_ECDSA, CKM_AES_GCM, CKM_RSA_PKCS_PSS, CKM_SHA256_RSA_PKCS, CKM_SHA256_RSA_PKCS_PSS,
        CKM_EC_KEY_PAIR_GEN, CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_AES_KEY_GEN, CKM_AES_CBC_PAD,
        CKM_AES_KEY_WRAP_PAD, CKM_ECDH1_DERIVE, CKM_SHA256}) {
    EXPECT_NE(std::find(list.begin(), list.end(), m), list.end())
        << "missing mechanism 0x" << std::hex << m;
  }
  std::vector<CK_MECHANISM_TYPE> sorted = list;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(std::adjacent_find(sorted.begin(), sorted.end()), sorted.end()) << "duplicates";
}

TEST_F(GeneralTest, GetMechanismInfo) {
  CK_MECHANISM_INFO info;
  std::memset(&info, 0xAB, sizeof(info));
  ASSERT_EQ(p->C_GetMechanismInfo(kSlot, CKM_ECDSA, &info), CKR_OK);
  EXPECT_TRUE(info.flags & CKF_SIGN);
  EXPECT_TRUE(info.flags & CKF_VERIFY);
  EXPECT_LE(info.ulMinKeySize, 256u);
  EXPECT_GE(info.ulMaxKeySize, 256u);
  ASSERT_EQ(p->C_GetMechanismInfo(kSlot, CKM_RSA_PKCS_KEY_PAIR_GEN, &info), CKR_OK);
  EXPECT_TRUE(info.flags & CKF_GENERATE_KEY_PAIR);
  EXPECT_LE(info.ulMinKeySize, 2048u);
  EXPECT_GE(info.ulMaxKeySize, 2048u);
  ASSERT_EQ(p->C_GetMechanismInfo(kSlot, CKM_AES_GCM, &info), CKR_OK);
  EXPECT_TRUE(info.flags & CKF_ENCRYPT);
  EXPECT_TRUE(info.flags & CKF_DECRYPT);
  EXPECT_EQ(p->C_GetMechanismInfo(kSlot, CKM_VENDOR_DEFINED | 0x1234, &info),
            CKR_MECHANISM_INVALID);
  EXPECT_EQ(p->C_GetMechanismInfo(kSlot, CKM_ECDSA, nullptr), CKR_ARGUMENTS_BAD);
  EXPECT_EQ(p->C_GetMechanismInfo(5, CKM_ECDSA, &info), CKR_SLOT_ID_INVALID);
}

TEST_F(GeneralTest, OpenSessionRoAndRwAndSessionInfo) {
  Session ro(p, false), rw(p, true);
  ASSERT_EQ(ro.open_rv(), CKR_OK);
  ASSERT_EQ(rw.open_rv(), CKR_OK);
  EXPECT_NE(ro.h(), CK_INVALID_HANDLE);
  EXPECT_NE(ro.h(), rw.h());
  EXPECT_LT(ro.h(), 1ull << 32);
  CK_SESSION_INFO info;
  ASSERT_EQ(p->C_GetSessionInfo(ro.h(), &info), CKR_OK);
  EXPECT_EQ(info.slotID, kSlot);
  EXPECT_EQ(info.state, CKS_RO_PUBLIC_SESSION);
  EXPECT_EQ(info.flags, CKF_SERIAL_SESSION);
  ASSERT_EQ(p->C_GetSessionInfo(rw.h(), &info), CKR_OK);
  EXPECT_EQ(info.state, CKS_RW_PUBLIC_SESSION);
  EXPECT_EQ(info.flags, CKF_SERIAL_SESSION | CKF_RW_SESSION);

  // Login state belongs to the instance: both sessions change state.
  ASSERT_EQ(ro.Login(), CKR_OK);
  ASSERT_EQ(p->C_GetSessionInfo(ro.h(), &info), CKR_OK);
  EXPECT_EQ(info.state, CKS_RO_USER_FUNCTIONS);
  ASSERT_EQ(p->C_GetSessionInfo(rw.h(), &info), CKR_OK);
  EXPECT_EQ(info.state, CKS_RW_USER_FUNCTIONS);
  ASSERT_EQ(p->C_Logout(rw.h()), CKR_OK);
  ASSERT_EQ(p->C_GetSessionInfo(ro.h(), &info), CKR_OK);
  EXPECT_EQ(info.state, CKS_RO_PUBLIC_SESSION);

  CK_SESSION_HANDLE h = 0;
  EXPECT_EQ(p->C_OpenSession(kSlot, CKF_RW_SESSION, nullptr, nullptr, &h),
            CKR_SESSION_PARALLEL_NOT_SUPPORTED);
  EXPECT_EQ(p->C_OpenSession(9, CKF_SERIAL_SESSION, nullptr, nullptr, &h), CKR_SLOT_ID_INVALID);
  EXPECT_EQ(p->C_GetSessionInfo(0x7ffffff0, &info), CKR_SESSION_HANDLE_INVALID);
}

TEST_F(GeneralTest, LoginLogout) {
  Session s(p, true);
  ASSERT_EQ(s.open_rv(), CKR_OK);
  std::string wrong = "wrong-pin-0000";
  EXPECT_EQ(
      p->C_Login(s.h(), CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(wrong.data()), wrong.size()),
      CKR_PIN_INCORRECT);
  CK_SESSION_INFO info;
  ASSERT_EQ(p->C_GetSessionInfo(s.h(), &info), CKR_OK);
  EXPECT_EQ(info.state, CKS_RW_PUBLIC_SESSION);
  ASSERT_EQ(s.Login(), CKR_OK);
  EXPECT_EQ(s.Login(), CKR_USER_ALREADY_LOGGED_IN);
  ASSERT_EQ(p->C_Logout(s.h()), CKR_OK);
  // SoftHSM answers CKR_OK to a C_Logout when not logged in; hsmux is
  // spec-exact here (PKCS#11 2.40 §5.6: CKR_USER_NOT_LOGGED_IN).
  EXPECT_EQ(p->C_Logout(s.h()), CKR_USER_NOT_LOGGED_IN);
  // SO login is not offered to clients.
  const std::string pin = ClientPin();
  EXPECT_EQ(
      p->C_Login(s.h(), CKU_SO, reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char*>(pin.data())),
                 pin.size()),
      CKR_USER_TYPE_INVALID);
  EXPECT_EQ(p->C_Login(s.h(), CKU_USER, nullptr, 4), CKR_ARGUMENTS_BAD);
  // Context-specific login needs an operation to authorise.
  EXPECT_EQ(
      p->C_Login(s.h(), CKU_CONTEXT_SPECIFIC,
                 reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char*>(pin.data())), pin.size()),
      CKR_OPERATION_NOT_INITIALIZED);
  ASSERT_EQ(s.Login(), CKR_OK);  // a wrong PIN earlier does not block the right one
}

TEST_F(GeneralTest, CloseSessionAndCloseAllSessions) {
  Session a(p, true), b(p, false), c(p, true);
  const CK_SESSION_HANDLE ha = a.h();
  ASSERT_EQ(a.Close(), CKR_OK);
  CK_SESSION_INFO info;
  EXPECT_EQ(p->C_GetSessionInfo(ha, &info), CKR_SESSION_HANDLE_INVALID);
  ASSERT_EQ(p->C_GetSessionInfo(b.h(), &info), CKR_OK);
  ASSERT_EQ(p->C_CloseAllSessions(kSlot), CKR_OK);
  EXPECT_EQ(p->C_GetSessionInfo(b.h(), &info), CKR_SESSION_HANDLE_INVALID);
  EXPECT_EQ(p->C_GetSessionInfo(c.h(), &info), CKR_SESSION_HANDLE_INVALID);
  EXPECT_EQ(p->C_CloseSession(c.h()), CKR_SESSION_HANDLE_INVALID);
  b.Forget();
  c.Forget();
  EXPECT_EQ(p->C_CloseAllSessions(3), CKR_SLOT_ID_INVALID);
  CK_TOKEN_INFO ti;
  ASSERT_EQ(p->C_GetTokenInfo(kSlot, &ti), CKR_OK);
  EXPECT_EQ(ti.ulSessionCount, 0u);
}

TEST_F(GeneralTest, ClosedSessionHandleIsInvalid) {
  CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
  ASSERT_EQ(p->C_OpenSession(kSlot, CKF_SERIAL_SESSION, nullptr, nullptr, &h), CKR_OK);
  ASSERT_EQ(p->C_CloseSession(h), CKR_OK);
  EXPECT_EQ(p->C_CloseSession(h), CKR_SESSION_HANDLE_INVALID);
}

TEST_F(GeneralTest, FunctionStatusAndCancelAreNotParallel) {
  Session s(p, false);
  EXPECT_EQ(p->C_GetFunctionStatus(s.h()), CKR_FUNCTION_NOT_PARALLEL);
  EXPECT_EQ(p->C_CancelFunction(s.h()), CKR_FUNCTION_NOT_PARALLEL);
}

TEST_F(GeneralTest, NotOfferedFunctions) {
  auto s = UserSession();
  std::string pin = ClientPin(), label = Padded("x", 32);
  auto* up = reinterpret_cast<CK_UTF8CHAR_PTR>(pin.data());
  EXPECT_EQ(p->C_InitToken(kSlot, up, pin.size(), reinterpret_cast<CK_UTF8CHAR_PTR>(label.data())),
            CKR_FUNCTION_NOT_SUPPORTED);
  EXPECT_EQ(p->C_InitPIN(s->h(), up, pin.size()), CKR_FUNCTION_NOT_SUPPORTED);
  CK_ULONG len = 0;
  EXPECT_EQ(p->C_GetOperationState(s->h(), nullptr, &len), CKR_FUNCTION_NOT_SUPPORTED);
  CK_BYTE state[8] = {};
  EXPECT_EQ(p->C_SetOperationState(s->h(), state, sizeof(state), 0, 0), CKR_FUNCTION_NOT_SUPPORTED);
}

// C_SetPIN: not offered in this release (function_table.h: NotOffered);
// DESIGN §2 plans it as "changes the client's own virtual PIN". Either way
// the test leaves the PIN as it found it, or later logins would fail.
TEST_F(GeneralTest, SetPin) {
  auto s = UserSession();
  std::string pin = ClientPin(), other = "e2e-other-pin-1234";
  auto* up = reinterpret_cast<CK_UTF8CHAR_PTR>(pin.data());
  auto* op = reinterpret_cast<CK_UTF8CHAR_PTR>(other.data());
  const CK_RV rv = p->C_SetPIN(s->h(), up, pin.size(), op, other.size());
  if (rv == CKR_FUNCTION_NOT_SUPPORTED) {
    // The PIN is unchanged.
    ASSERT_EQ(p->C_Logout(s->h()), CKR_OK);
    EXPECT_EQ(s->Login(), CKR_OK);
    return;
  }
  ASSERT_EQ(rv, CKR_OK) << RvStr(rv);
  ASSERT_EQ(p->C_Logout(s->h()), CKR_OK);
  EXPECT_EQ(p->C_Login(s->h(), CKU_USER, op, other.size()), CKR_OK);
  ASSERT_EQ(p->C_SetPIN(s->h(), op, other.size(), up, pin.size()), CKR_OK) << "PIN not restored";
  ASSERT_EQ(p->C_Logout(s->h()), CKR_OK);
  EXPECT_EQ(s->Login(), CKR_OK);
}

TEST_F(GeneralTest, WaitForSlotEventDontBlock) {
  CK_SLOT_ID slot = 99;
  EXPECT_EQ(p->C_WaitForSlotEvent(CKF_DONT_BLOCK, &slot, nullptr), CKR_NO_EVENT);
  EXPECT_EQ(p->C_WaitForSlotEvent(CKF_DONT_BLOCK, nullptr, nullptr), CKR_ARGUMENTS_BAD);
}

TEST_F(GeneralTest, BlockingWaitForSlotEventEndsOnFinalize) {
  auto waiter = std::async(std::launch::async, [this] {
    CK_SLOT_ID slot = 99;
    return p->C_WaitForSlotEvent(0, &slot, nullptr);
  });
  // It blocks: no event ever happens on a virtual slot.
  EXPECT_EQ(waiter.wait_for(std::chrono::milliseconds(500)), std::future_status::timeout);
  ASSERT_EQ(p->C_Finalize(nullptr), CKR_OK);
  ASSERT_EQ(waiter.wait_for(std::chrono::seconds(10)), std::future_status::ready)
      << "C_WaitForSlotEvent still blocked after C_Finalize";
  EXPECT_EQ(waiter.get(), CKR_CRYPTOKI_NOT_INITIALIZED);
}

TEST_F(GeneralTest, InitializeArgs) {
  ASSERT_EQ(p->C_Finalize(nullptr), CKR_OK);
  CK_C_INITIALIZE_ARGS args;
  std::memset(&args, 0, sizeof(args));
  args.flags = CKF_LIBRARY_CANT_CREATE_OS_THREADS;
  EXPECT_EQ(p->C_Initialize(&args), CKR_NEED_TO_CREATE_THREADS);
  args.flags = CKF_OS_LOCKING_OK;
  args.pReserved = &args;
  EXPECT_EQ(p->C_Initialize(&args), CKR_ARGUMENTS_BAD);
  args.pReserved = nullptr;
  EXPECT_EQ(p->C_Initialize(&args), CKR_OK);
}

}  // namespace
}  // namespace hsmux::testing
