// The fixture of the HA tests (tests/e2e/ha_*_test.cc, members behind
// tests/testwrap): the module initialised once per suite, a logged-in R/W
// session per test, and after each test every member's faults cleared and
// every member healthy again.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "group_util.h"

namespace hsmux::grouptest {

class HaTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    p_ = Module();
    ASSERT_NE(p_, nullptr);
    ASSERT_EQ(p_->C_Initialize(nullptr), CKR_OK);
  }
  static void TearDownTestSuite() {
    if (p_ != nullptr) p_->C_Finalize(nullptr);
    p_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(p_, nullptr);
    CK_RV rv;
    s_ = OpenSession(p_, ClientPin(), &rv);
    ASSERT_EQ(rv, CKR_OK);
  }
  void TearDown() override {
    if (p_ != nullptr) p_->C_CloseSession(s_);
    for (const char* m : kMembers) TestwrapCtl(m, {"--clear"});
    BeforeHealthyWait();
    std::string raw;
    EXPECT_TRUE(WaitAllHealthy(30000, &raw)) << raw;
  }
  // After the faults are cleared, before waiting for every member: what a
  // suite must undo besides (HaRecovery readmits drained members).
  virtual void BeforeHealthyWait() {}

  inline static CK_FUNCTION_LIST* p_ = nullptr;
  CK_SESSION_HANDLE s_ = CK_INVALID_HANDLE;
};

}  // namespace hsmux::grouptest
