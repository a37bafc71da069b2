// Hostile-input limits (DESIGN §6, issue 7): each configured limit answers
// with a Cryptoki error and a log line, never a crash or a partial write.
// Runs with HSMUX_TOP_EXTRA="max_sessions_per_instance: 5;
// max_template_attributes: 64; max_attribute_bytes: 4096;
// max_objects_per_instance: 20". A client flooding sessions hits its own
// limit while other clients (other processes, another identity) keep working.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "module_loader.h"

namespace hsmux::testing {
namespace {

// Replaces every `from` in `s` with `to`.
std::string ReplaceAll(std::string s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) {
    s.replace(at, from.size(), to);
  }
  return s;
}

// A module config for client-2 (module.yaml with client-2's certificate).
std::string Client2Config() {
  std::ifstream in(Env("HSMUX_CONFIG"));
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ReplaceAll(ss.str(), "/client.pem", "/client-2.pem");
  text = ReplaceAll(text, "/client.key", "/client-2.key");
  text = ReplaceAll(text, "/module.log", "/module-2.log");
  const std::string path = Env("HSMUX_TEST_DIR") + "/module-limits-2.yaml";
  std::ofstream(path) << text;
  return path;
}

// Another process using the module (a new instance): pkcs11-tool opens a
// session, logs in and asks for random bytes. Its exit status.
int OtherProcess(const std::string& config, const std::string& pin) {
  const std::string cmd = "HSMUX_CONFIG='" + config + "' pkcs11-tool --module '" +
                          Env("HSMUX_MODULE") + "' --login --pin '" + pin +
                          "' --generate-random 16 >/dev/null 2>&1";
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

class Limits : public ::testing::Test {
 protected:
  void SetUp() override {
    fl_ = LoadModule();
    ASSERT_NE(fl_, nullptr);
    ASSERT_EQ(fl_->C_Initialize(nullptr), CKR_OK);
    ASSERT_EQ(fl_->C_OpenSession(kSlot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &s_),
              CKR_OK);
    std::string pin = ClientPin();
    ASSERT_EQ(fl_->C_Login(s_, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(pin.data()), pin.size()),
              CKR_OK);
  }
  void TearDown() override { fl_->C_Finalize(nullptr); }

  CK_RV CreateData(std::vector<CK_ATTRIBUTE> extra, CK_OBJECT_HANDLE* out) {
    static CK_OBJECT_CLASS cls = CKO_DATA;
    static CK_BBOOL no = CK_FALSE;
    std::vector<CK_ATTRIBUTE> t = {{CKA_CLASS, &cls, sizeof(cls)},
                                   {CKA_TOKEN, &no, sizeof(no)},
                                   {CKA_PRIVATE, &no, sizeof(no)}};
    t.insert(t.end(), extra.begin(), extra.end());
    return fl_->C_CreateObject(s_, t.data(), static_cast<CK_ULONG>(t.size()), out);
  }

  CK_FUNCTION_LIST* fl_ = nullptr;
  CK_SESSION_HANDLE s_ = CK_INVALID_HANDLE;
};

TEST_F(Limits, TemplateLength) {
  char label[] = "x";
  std::vector<CK_ATTRIBUTE> many(100, CK_ATTRIBUTE{CKA_LABEL, label, 1});
  CK_OBJECT_HANDLE h;
  EXPECT_EQ(CreateData(many, &h), CKR_TEMPLATE_INCONSISTENT);
  std::vector<CK_ATTRIBUTE> few(10, CK_ATTRIBUTE{CKA_LABEL, label, 1});
  EXPECT_EQ(CreateData(few, &h), CKR_OK);
}

TEST_F(Limits, AttributeSize) {
  std::string big(8192, 'v');
  CK_OBJECT_HANDLE h;
  EXPECT_EQ(CreateData({{CKA_VALUE, big.data(), big.size()}}, &h), CKR_ATTRIBUTE_VALUE_INVALID);
  std::string fits(1024, 'v');
  EXPECT_EQ(CreateData({{CKA_VALUE, fits.data(), fits.size()}}, &h), CKR_OK);
}

TEST_F(Limits, SessionsPerInstance) {
  std::vector<CK_SESSION_HANDLE> opened;
  CK_RV rv = CKR_OK;
  for (int i = 0; i < 10 && rv == CKR_OK; ++i) {
    CK_SESSION_HANDLE h;
    rv = fl_->C_OpenSession(kSlot, CKF_SERIAL_SESSION, nullptr, nullptr, &h);
    if (rv == CKR_OK) opened.push_back(h);
  }
  EXPECT_EQ(rv, CKR_SESSION_COUNT);
  EXPECT_EQ(opened.size(), 4u);  // 5 with the fixture's session
  // The flood is this instance's alone: its sessions still work, and other
  // processes, as client-1 and as client-2, are served meanwhile.
  CK_BYTE buf[16];
  EXPECT_EQ(fl_->C_GenerateRandom(s_, buf, sizeof(buf)), CKR_OK);
  for (CK_SESSION_HANDLE h : opened) EXPECT_EQ(fl_->C_GenerateRandom(h, buf, sizeof(buf)), CKR_OK);
  EXPECT_EQ(OtherProcess(Env("HSMUX_CONFIG"), ClientPin()), 0) << "client-1, another process";
  EXPECT_EQ(
      OtherProcess(Client2Config(), ReadFirstLine(Env("HSMUX_TEST_DIR") + "/secrets/client-2-pin")),
      0)
      << "client-2";
  // Still at the limit; closing one makes room again.
  CK_SESSION_HANDLE h;
  EXPECT_EQ(fl_->C_OpenSession(kSlot, CKF_SERIAL_SESSION, nullptr, nullptr, &h), CKR_SESSION_COUNT);
  ASSERT_FALSE(opened.empty());
  EXPECT_EQ(fl_->C_CloseSession(opened.back()), CKR_OK);
  EXPECT_EQ(fl_->C_OpenSession(kSlot, CKF_SERIAL_SESSION, nullptr, nullptr, &h), CKR_OK);
}

TEST_F(Limits, ObjectsPerInstance) {
  CK_RV rv = CKR_OK;
  int made = 0;
  for (int i = 0; i < 40 && rv == CKR_OK; ++i) {
    CK_OBJECT_HANDLE h;
    rv = CreateData({}, &h);
    if (rv == CKR_OK) ++made;
  }
  EXPECT_EQ(rv, CKR_DEVICE_MEMORY);
  EXPECT_EQ(made, 20);
}

}  // namespace
}  // namespace hsmux::testing
