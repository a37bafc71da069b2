// The agent's recent errors (agent/recent_errors.h): bounded, oldest first,
// repeats folded into one entry that moves to the end, long messages cut.
#include "recent_errors.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"

namespace hsmux::agent {
namespace {

class RecentErrorsTest : public ::testing::Test {
 protected:
  void SetUp() override { ClearRecentErrors(); }
  void TearDown() override { ClearRecentErrors(); }
};

TEST_F(RecentErrorsTest, EmptyAtFirst) { EXPECT_TRUE(RecentErrors().empty()); }

TEST_F(RecentErrorsTest, KeepsFieldsOldestFirst) {
  const absl::Time before = absl::Now();
  RecordError("member_out", "g", "a", "taken out: probe answered CKR_DEVICE_ERROR");
  RecordError("call", "", "", "C_Sign answered CKR_DEVICE_ERROR to cn:client-1");
  const std::vector<RecentError> list = RecentErrors();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].kind, "member_out");
  EXPECT_EQ(list[0].group, "g");
  EXPECT_EQ(list[0].member, "a");
  EXPECT_EQ(list[0].message, "taken out: probe answered CKR_DEVICE_ERROR");
  EXPECT_EQ(list[0].count, 1u);
  EXPECT_GE(list[0].when, before);
  EXPECT_LE(list[0].when, absl::Now());
  EXPECT_EQ(list[1].kind, "call");
  EXPECT_LE(list[0].when, list[1].when);
}

TEST_F(RecentErrorsTest, BoundedToTheLastDistinctEvents) {
  for (size_t i = 0; i < kRecentErrorsKept + 15; ++i) {
    RecordError("member_call", "g", "b", "event " + std::to_string(i));
  }
  const std::vector<RecentError> list = RecentErrors();
  ASSERT_EQ(list.size(), kRecentErrorsKept);
  EXPECT_EQ(list.front().message, "event 15");
  EXPECT_EQ(list.back().message, "event " + std::to_string(kRecentErrorsKept + 14));
}

TEST_F(RecentErrorsTest, RepeatsFoldAndMoveToTheEnd) {
  RecordError("member_out", "g", "a", "taken out");
  for (int i = 0; i < 3; ++i) RecordError("call", "", "", "C_Sign answered CKR_DEVICE_ERROR");
  RecordError("member_out", "g", "a", "taken out");
  const std::vector<RecentError> list = RecentErrors();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].kind, "call");
  EXPECT_EQ(list[0].count, 3u);
  EXPECT_EQ(list[1].kind, "member_out");
  EXPECT_EQ(list[1].count, 2u);
  // The same message for another member is another event.
  RecordError("member_out", "g", "b", "taken out");
  EXPECT_EQ(RecentErrors().size(), 3u);
}

TEST_F(RecentErrorsTest, RepeatsDoNotPushOthersOut) {
  RecordError("member_out", "g", "a", "taken out");
  for (int i = 0; i < 100; ++i) RecordError("call", "", "", "C_Sign answered CKR_DEVICE_ERROR");
  const std::vector<RecentError> list = RecentErrors();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].member, "a");
  EXPECT_EQ(list[1].count, 100u);
}

TEST_F(RecentErrorsTest, LongMessagesAreCut) {
  RecordError("member_out", "g", "a", std::string(5000, 'x'));
  // Two-byte UTF-8 characters: the cut never splits one.
  std::string utf8;
  for (int i = 0; i < 500; ++i) utf8 += "\xc3\xa9";
  RecordError("member_out", "g", "a", utf8);
  const std::vector<RecentError> list = RecentErrors();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_LE(list[0].message.size(), kRecentErrorMessageMax);
  EXPECT_EQ(list[0].message.substr(list[0].message.size() - 3), "...");
  const std::string& cut = list[1].message;
  EXPECT_LE(cut.size(), kRecentErrorMessageMax);
  const std::string body = cut.substr(0, cut.size() - 3);
  EXPECT_EQ(body.size() % 2, 0u) << "a UTF-8 sequence was split";
}

TEST_F(RecentErrorsTest, ThreadSafe) {
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([t] {
      for (int i = 0; i < 500; ++i) {
        RecordError("call", "", "",
                    "thread " + std::to_string(t) + " event " + std::to_string(i % 30));
        (void)RecentErrors();
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(RecentErrors().size(), kRecentErrorsKept);
}

}  // namespace
}  // namespace hsmux::agent
