// An instance whose process dies without C_Finalize (as Java never calls
// it) loses its lease: the agent closes its sessions and destroys its
// session objects (DESIGN §2 "Instance"). Runs with HSMUX_LEASE_SECONDS=5.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "module_loader.h"

namespace hsmux::testing {
namespace {

std::string AgentLog() {
  std::ifstream in(Env("HSMUX_TEST_DIR") + "/hsmuxd.log");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(Lease, DeadProcessLosesSessionsAndSessionObjects) {
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    CK_FUNCTION_LIST* fl = LoadModule();
    if (fl == nullptr || fl->C_Initialize(nullptr) != CKR_OK) _exit(2);
    CK_SESSION_HANDLE s;
    if (fl->C_OpenSession(kSlot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &s) !=
        CKR_OK) {
      _exit(3);
    }
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BBOOL no = CK_FALSE;
    char label[] = "lease-session-object";
    CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)},
                           {CKA_TOKEN, &no, sizeof(no)},
                           {CKA_PRIVATE, &no, sizeof(no)},
                           {CKA_LABEL, label, sizeof(label) - 1}};
    CK_OBJECT_HANDLE obj;
    if (fl->C_CreateObject(s, tmpl, 4, &obj) != CKR_OK) _exit(4);
    const char ok = 'r';
    if (write(ready[1], &ok, 1) != 1) _exit(5);
    pause();  // killed by the parent, never finalised
    _exit(0);
  }
  close(ready[1]);
  char c = 0;
  ASSERT_EQ(read(ready[0], &c, 1), 1) << "the child could not set up its session";
  ASSERT_EQ(kill(child, SIGKILL), 0);
  int status = 0;
  waitpid(child, &status, 0);
  // The lease is 5 s; the reaper runs twice a second. Poll, bounded.
  bool expired = false;
  for (int i = 0; i < 60 && !expired; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    const std::string log = AgentLog();
    expired = log.find("closed: lease expired, 1 sessions") != std::string::npos;
  }
  EXPECT_TRUE(expired) << "the agent did not close the dead instance";

  // A new instance sees no trace of the dead one's session object.
  CK_FUNCTION_LIST* fl = LoadModule();
  ASSERT_NE(fl, nullptr);
  ASSERT_EQ(fl->C_Initialize(nullptr), CKR_OK);
  CK_SESSION_HANDLE s;
  ASSERT_EQ(fl->C_OpenSession(kSlot, CKF_SERIAL_SESSION, nullptr, nullptr, &s), CKR_OK);
  char label[] = "lease-session-object";
  CK_ATTRIBUTE find[] = {{CKA_LABEL, label, sizeof(label) - 1}};
  ASSERT_EQ(fl->C_FindObjectsInit(s, find, 1), CKR_OK);
  CK_OBJECT_HANDLE found[4];
  CK_ULONG n = 99;
  ASSERT_EQ(fl->C_FindObjects(s, found, 4, &n), CKR_OK);
  EXPECT_EQ(n, 0u);
  EXPECT_EQ(fl->C_FindObjectsFinal(s), CKR_OK);
  EXPECT_EQ(fl->C_Finalize(nullptr), CKR_OK);
}

}  // namespace
}  // namespace hsmux::testing
