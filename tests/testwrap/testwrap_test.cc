// libhsmux-testwrap.so on two private SoftHSM tokens: exact accounting and
// each fault, driven through hsmux-testwrap-ctl as other tests will.
// Timing is only ever checked as a lower bound.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "wire/cryptoki.h"

namespace {

using namespace std::chrono_literals;  // NOLINT(google-build-using-namespace)

constexpr char kPin[] = "1234";

std::string ReadAll(const std::string &path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The value of "key": N in a stats file, or -1.
long long JsonNumber(const std::string &json, const std::string &key) {
  size_t at = json.find("\"" + key + "\": ");
  if (at == std::string::npos) return -1;
  return std::strtoll(json.c_str() + at + key.size() + 4, nullptr, 10);
}

// Two SoftHSM tokens, tw1 and tw2, in a temp dir for the whole program.
class SoftHsmEnv : public ::testing::Environment {
 public:
  static std::string dir;
  static std::string error;

  void SetUp() override {
    char tmpl[] = "/tmp/hsmux-testwrap-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
      error = "mkdtemp failed";
      return;
    }
    dir = tmpl;
    std::filesystem::create_directory(dir + "/tokens");
    std::string conf = dir + "/softhsm2.conf";
    {
      std::ofstream f(conf);
      f << "directories.tokendir = " << dir << "/tokens\n"
        << "objectstore.backend = file\nlog.level = ERROR\nslots.removable = "
           "false\n";
    }
    setenv("SOFTHSM2_CONF", conf.c_str(), 1);
    for (const char *label : {"tw1", "tw2"}) {
      std::string cmd = std::string("softhsm2-util --init-token --free --label ") + label +
                        " --so-pin 5678 --pin " + kPin + " >/dev/null 2>&1";
      if (std::system(cmd.c_str()) != 0) {
        error = "softhsm2-util --init-token failed";
        return;
      }
    }
  }

  void TearDown() override {
    if (!dir.empty()) std::filesystem::remove_all(dir);
  }
};

std::string SoftHsmEnv::dir;
std::string SoftHsmEnv::error;

class TestwrapTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!SoftHsmEnv::error.empty()) GTEST_SKIP() << SoftHsmEnv::error;
    // A fresh state dir per test: the wrapper starts its counters from zero.
    std::string tmpl = SoftHsmEnv::dir + "/state-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    state_dir_ = tmpl;
    setenv("HSMUX_TESTWRAP_DIR", state_dir_.c_str(), 1);
    static void *lib = dlopen(HSMUX_TESTWRAP_LIB, RTLD_NOW | RTLD_LOCAL);
    ASSERT_NE(lib, nullptr) << dlerror();
    auto get_list = reinterpret_cast<CK_C_GetFunctionList>(dlsym(lib, "C_GetFunctionList"));
    ASSERT_NE(get_list, nullptr);
    ASSERT_EQ(get_list(&p11_), CKR_OK);
    ASSERT_EQ(p11_->C_Initialize(nullptr), CKR_OK);
    initialized_ = true;
    slot1_ = SlotOf("tw1");
    slot2_ = SlotOf("tw2");
  }

  void TearDown() override {
    if (initialized_) EXPECT_EQ(p11_->C_Finalize(nullptr), CKR_OK);
  }

  CK_SLOT_ID SlotOf(const std::string &label) {
    CK_SLOT_ID slots[16];
    CK_ULONG n = 16;
    EXPECT_EQ(p11_->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK);
    for (CK_ULONG i = 0; i < n; ++i) {
      CK_TOKEN_INFO info;
      if (p11_->C_GetTokenInfo(slots[i], &info) != CKR_OK) continue;
      std::string l(reinterpret_cast<char *>(info.label), sizeof info.label);
      l.erase(l.find_last_not_of(' ') + 1);
      if (l == label) return slots[i];
    }
    ADD_FAILURE() << "no token " << label;
    return 0;
  }

  CK_SESSION_HANDLE Open(CK_SLOT_ID slot) {
    CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
    EXPECT_EQ(p11_->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &h),
              CKR_OK);
    return h;
  }

  CK_RV Login(CK_SESSION_HANDLE h) {
    return p11_->C_Login(h, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char *>(kPin)),
                         std::strlen(kPin));
  }

  CK_RV Random(CK_SESSION_HANDLE h) {
    CK_BYTE buf[16];
    return p11_->C_GenerateRandom(h, buf, sizeof buf);
  }

  // hsmux-testwrap-ctl STATE_DIR LABEL args (waits until the change is live).
  void Ctl(const std::string &label, const std::string &args) {
    std::string cmd = std::string(HSMUX_TESTWRAP_CTL) + " " + state_dir_ + " " + label + " " + args;
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }

  std::string Stats(const std::string &label) {
    return ReadAll(state_dir_ + "/" + label + ".stats.json");
  }

  long long Stat(const std::string &label, const std::string &key) {
    return JsonNumber(Stats(label), key);
  }

  // The stats file is rewritten within ~20 ms of a change; poll for it.
  bool WaitForStat(const std::string &label, const std::string &key, long long want) {
    for (auto end = std::chrono::steady_clock::now() + 10s; std::chrono::steady_clock::now() < end;
         std::this_thread::sleep_for(5ms)) {
      if (Stat(label, key) == want) return true;
    }
    return false;
  }

  CK_FUNCTION_LIST *p11_ = nullptr;
  bool initialized_ = false;
  std::string state_dir_;
  CK_SLOT_ID slot1_ = 0, slot2_ = 0;
};

TEST_F(TestwrapTest, ExportsOnlyCryptoki) {
  void *lib = dlopen(HSMUX_TESTWRAP_LIB, RTLD_NOW | RTLD_NOLOAD);
  ASSERT_NE(lib, nullptr);
  EXPECT_NE(dlsym(lib, "C_Sign"), nullptr);
  EXPECT_NE(dlsym(lib, "C_WaitForSlotEvent"), nullptr);
  CK_INFO info;
  EXPECT_EQ(p11_->C_GetInfo(&info), CKR_OK);
  EXPECT_EQ(p11_->version.major, 2);
  dlclose(lib);
}

TEST_F(TestwrapTest, CountsSessionsCallsAndLoginsPerToken) {
  CK_SESSION_HANDLE a = Open(slot1_), b = Open(slot1_), c = Open(slot1_);
  Open(slot2_);
  EXPECT_EQ(p11_->C_CloseSession(b), CKR_OK);
  // C_CloseSession writes the file before returning.
  EXPECT_EQ(Stat("tw1", "open_sessions"), 2);
  EXPECT_EQ(Stat("tw1", "max_open_sessions"), 3);
  EXPECT_EQ(Stat("tw1", "sessions_opened"), 3);
  EXPECT_EQ(Stat("tw2", "open_sessions"), 1);

  EXPECT_EQ(Login(a), CKR_OK);
  constexpr int kCalls = 25;
  for (int i = 0; i < kCalls; ++i) ASSERT_EQ(Random(i % 2 ? a : c), CKR_OK);
  EXPECT_TRUE(WaitForStat("tw1", "C_GenerateRandom", kCalls)) << Stats("tw1");
  EXPECT_EQ(Stat("tw1", "logins"), 1);
  EXPECT_EQ(Stat("tw1", "C_Login"), 1);
  EXPECT_EQ(Stat("tw1", "C_OpenSession"), 3);
  EXPECT_EQ(Stat("tw1", "C_CloseSession"), 1);
  EXPECT_TRUE(WaitForStat("tw1", "in_flight", 0));
  EXPECT_EQ(Stat("tw2", "C_GenerateRandom"), -1);  // never called there

  // Every call counted for tw1 is listed once under "calls".
  std::string json = Stats("tw1");
  long long sum = 0;
  for (const char *fn :
       {"C_GetTokenInfo", "C_OpenSession", "C_CloseSession", "C_Login", "C_GenerateRandom"}) {
    sum += std::max(0LL, JsonNumber(json, fn));
  }
  EXPECT_EQ(JsonNumber(json, "total_calls"), sum) << json;
  EXPECT_EQ(JsonNumber(json, "forwarded_calls"), sum) << json;

  EXPECT_EQ(p11_->C_CloseAllSessions(slot1_), CKR_OK);
  EXPECT_EQ(Stat("tw1", "open_sessions"), 0);
  EXPECT_EQ(Random(a), CKR_SESSION_HANDLE_INVALID);
}

TEST_F(TestwrapTest, LatencyIsAddedBeforeEachCall) {
  CK_SESSION_HANDLE h = Open(slot1_);
  Ctl("tw1", "latency_ms=150");
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(Random(h), CKR_OK);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 150ms);
  // The other token is not slowed down (not timed: just still works).
  EXPECT_EQ(Random(Open(slot2_)), CKR_OK);
}

TEST_F(TestwrapTest, FailRvForSomeFunctionsAndCount) {
  CK_SESSION_HANDLE h = Open(slot1_);
  Ctl("tw1", "fail_rv=0x30 fail_functions=C_GenerateRandom,C_Sign fail_count=2");
  CK_SESSION_INFO info;
  EXPECT_EQ(p11_->C_GetSessionInfo(h, &info), CKR_OK);  // not a listed function
  EXPECT_EQ(Random(h), CKR_DEVICE_ERROR);
  EXPECT_EQ(Random(h), CKR_DEVICE_ERROR);
  EXPECT_EQ(Random(h), CKR_OK);  // budget used up
  EXPECT_TRUE(WaitForStat("tw1", "injected_failures", 2));
  EXPECT_EQ(Stat("tw1", "C_GenerateRandom"), 3);  // failed calls are counted too

  // The same values again re-arm the budget (the tool sets a new fail_id).
  Ctl("tw1", "fail_rv=0x30 fail_functions=C_GenerateRandom,C_Sign fail_count=2");
  EXPECT_EQ(Random(h), CKR_DEVICE_ERROR);

  Ctl("tw1", "fail_rv=0x32 fail_functions=* fail_count=-1");
  for (int i = 0; i < 5; ++i) EXPECT_EQ(Random(h), CKR_DEVICE_REMOVED);
  EXPECT_EQ(p11_->C_GetSessionInfo(h, &info), CKR_DEVICE_REMOVED);
  EXPECT_EQ(Random(Open(slot2_)), CKR_OK);  // only tw1 fails

  Ctl("tw1", "fail_rv=");
  EXPECT_EQ(Random(h), CKR_OK);
}

TEST_F(TestwrapTest, HangBlocksCallsUntilReleased) {
  CK_SESSION_HANDLE h = Open(slot1_);
  Ctl("tw1", "hang=1");
  std::atomic<bool> done{false};
  CK_RV rv = CKR_GENERAL_ERROR;
  std::thread caller([&] {
    rv = Random(h);
    done = true;
  });
  ASSERT_TRUE(WaitForStat("tw1", "hung", 1)) << Stats("tw1");
  std::this_thread::sleep_for(100ms);
  EXPECT_FALSE(done);
  EXPECT_EQ(Random(Open(slot2_)), CKR_OK);  // other tokens are not hung
  Ctl("tw1", "hang=0");
  caller.join();
  EXPECT_TRUE(done);
  EXPECT_EQ(rv, CKR_OK);
  EXPECT_TRUE(WaitForStat("tw1", "hung", 0));
}

TEST_F(TestwrapTest, PowerOffLosesSessionsAndLogin) {
  CK_SESSION_HANDLE old_session = Open(slot1_);
  ASSERT_EQ(Login(old_session), CKR_OK);
  CK_SESSION_HANDLE other = Open(slot2_);

  Ctl("tw1", "power=off");
  EXPECT_EQ(Random(old_session), CKR_DEVICE_REMOVED);
  CK_TOKEN_INFO token;
  EXPECT_EQ(p11_->C_GetTokenInfo(slot1_, &token), CKR_DEVICE_REMOVED);
  CK_SESSION_HANDLE h;
  EXPECT_EQ(p11_->C_OpenSession(slot1_, CKF_SERIAL_SESSION, nullptr, nullptr, &h),
            CKR_DEVICE_REMOVED);
  CK_SLOT_INFO slot_info;
  ASSERT_EQ(p11_->C_GetSlotInfo(slot1_, &slot_info), CKR_OK);
  EXPECT_EQ(slot_info.flags & CKF_TOKEN_PRESENT, 0u);
  CK_SLOT_ID slots[16];
  CK_ULONG n = 16;
  ASSERT_EQ(p11_->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK);
  EXPECT_EQ(std::count(slots, slots + n, slot1_), 0);
  EXPECT_EQ(std::count(slots, slots + n, slot2_), 1);
  EXPECT_EQ(Random(other), CKR_OK);
  EXPECT_NE(Stats("tw1").find("\"power\": \"off\""), std::string::npos);
  EXPECT_EQ(Stat("tw1", "open_sessions"), 0);
  EXPECT_EQ(Stat("tw1", "sessions_lost"), 1);

  Ctl("tw1", "power=on");
  EXPECT_EQ(Random(old_session), CKR_SESSION_HANDLE_INVALID);
  EXPECT_EQ(p11_->C_CloseSession(old_session), CKR_SESSION_HANDLE_INVALID);
  ASSERT_EQ(p11_->C_GetSlotInfo(slot1_, &slot_info), CKR_OK);
  EXPECT_NE(slot_info.flags & CKF_TOKEN_PRESENT, 0u);

  CK_SESSION_HANDLE fresh = Open(slot1_);
  EXPECT_NE(fresh, old_session);
  CK_SESSION_INFO info;
  ASSERT_EQ(p11_->C_GetSessionInfo(fresh, &info), CKR_OK);
  EXPECT_EQ(info.state, CKS_RW_PUBLIC_SESSION);  // logged out
  EXPECT_EQ(Login(fresh), CKR_OK);
  EXPECT_EQ(Random(fresh), CKR_OK);
  EXPECT_EQ(p11_->C_GetSessionInfo(fresh, &info), CKR_OK);
  EXPECT_EQ(info.state, CKS_RW_USER_FUNCTIONS);
  EXPECT_EQ(Random(other), CKR_OK);  // tw2 never noticed
  EXPECT_TRUE(WaitForStat("tw1", "logins", 2));
  EXPECT_EQ(Stat("tw1", "open_sessions"), 1);
}

TEST_F(TestwrapTest, SerializeAllowsOneCallAtATime) {
  Ctl("tw1", "serialize=1 latency_ms=5");
  constexpr int kThreads = 4, kCalls = 10;
  std::vector<CK_SESSION_HANDLE> sessions;
  for (int i = 0; i < kThreads; ++i) sessions.push_back(Open(slot1_));
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      for (int k = 0; k < kCalls; ++k) {
        if (Random(sessions[i]) != CKR_OK) ++failures;
      }
    });
  }
  for (auto &t : threads) t.join();
  EXPECT_EQ(failures, 0);
  // The file trails the calls by up to ~20 ms: wait for the last one to end.
  ASSERT_TRUE(WaitForStat("tw1", "C_GenerateRandom", kThreads * kCalls)) << Stats("tw1");
  ASSERT_TRUE(WaitForStat("tw1", "queued", 0)) << Stats("tw1");
  ASSERT_TRUE(WaitForStat("tw1", "in_flight", 0)) << Stats("tw1");
  EXPECT_EQ(Stat("tw1", "max_in_flight"), 1) << Stats("tw1");
}

TEST_F(TestwrapTest, CtlToolMergesKeysAndPrintsStats) {
  Ctl("tw2", "latency_ms=1 serialize=1");
  Ctl("tw2", "--no-wait hang=0 serialize=");
  std::string ctl = ReadAll(state_dir_ + "/tw2.ctl");
  EXPECT_EQ(ctl, "latency_ms=1\nhang=0\n");
  Ctl("tw2", "--clear");
  EXPECT_EQ(ReadAll(state_dir_ + "/tw2.ctl"), "");
  std::string cmd = std::string(HSMUX_TESTWRAP_CTL) + " " + state_dir_ + " tw2 bogus=1";
  EXPECT_NE(std::system((cmd + " 2>/dev/null").c_str()), 0);

  EXPECT_EQ(Random(Open(slot2_)), CKR_OK);
  EXPECT_TRUE(WaitForStat("tw2", "C_GenerateRandom", 1));
  cmd = std::string(HSMUX_TESTWRAP_CTL) + " " + state_dir_ + " tw2 --stats";
  FILE *p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[512];
  size_t got;
  while ((got = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, got);
  EXPECT_EQ(pclose(p), 0);
  EXPECT_NE(out.find("\"label\": \"tw2\""), std::string::npos) << out;
  EXPECT_NE(out.find("\"C_GenerateRandom\": 1"), std::string::npos) << out;
}

}  // namespace

int main(int argc, char **argv) {
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new SoftHsmEnv);
  return RUN_ALL_TESTS();
}
