#include "config.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "pin_hash.h"

namespace hsmux::agent {
namespace {

// Member PINs used by the fixture. Every error message is checked not to
// contain them.
constexpr char kPinA[] = "member-secret-4711";
constexpr char kPinB[] = "env-secret-0815";
constexpr char kEnvB[] = "HSMUX_TEST_PIN_B";

// Text of a good config; @DIR@ and @HASH@ are filled in by the fixture.
constexpr char kGoodTemplate[] = R"(# hsmuxd test config
listen: 127.0.0.1:7443
tls:
  ca: @DIR@/ca.pem
  cert: @DIR@/server.pem
  key: @DIR@/server.key
state_dir: @DIR@/state
lease_seconds: 30
max_sessions_per_instance: 4096
groups:
  - slot_id: 1
    label: hsmux-demo
    serial: HSMUX0001
    model: hsmux
    manufacturer: hsmux
    members:
      - name: a
        library: @DIR@/libfake.so
        token_label: member-a
        pin_file: @DIR@/pin-a
      - name: b
        library: @DIR@/libfake.so
        token_serial: "0001"
        pin_env: HSMUX_TEST_PIN_B
clients:
  - common_name: client-1
    groups:
      - slot_id: 1
        pin_hash: "@HASH@"
)";

void ReplaceAll(std::string* text, const std::string& from,
                const std::string& to) {
  for (size_t pos = text->find(from); pos != std::string::npos;
       pos = text->find(from, pos + to.size())) {
    text->replace(pos, from.size(), to);
  }
}

// 1-based line of the first line containing `needle`, or 0.
int LineOf(const std::string& text, const std::string& needle) {
  std::istringstream in(text);
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.find(needle) != std::string::npos) return n;
  }
  return 0;
}

void WriteFile(const std::string& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
  ASSERT_TRUE(out.good()) << path;
}

class ConfigTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // One hash for the whole suite: scrypt is deliberately slow.
    absl::StatusOr<std::string> hash = HashPin("1234");
    ASSERT_TRUE(hash.ok()) << hash.status();
    hash_ = new std::string(*hash);
  }
  static void TearDownTestSuite() {
    delete hash_;
    hash_ = nullptr;
  }

  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "/hsmux_config_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    WriteFile(dir_ + "/ca.pem", "dummy ca\n");
    WriteFile(dir_ + "/server.pem", "dummy cert\n");
    WriteFile(dir_ + "/server.key", "dummy key\n");
    WriteFile(dir_ + "/libfake.so", "not really a library\n");
    WriteFile(dir_ + "/pin-a", std::string(kPinA) + "\n");
    ASSERT_EQ(setenv(kEnvB, kPinB, 1), 0);
    path_ = dir_ + "/hsmuxd.yaml";
    good_ = kGoodTemplate;
    ReplaceAll(&good_, "@DIR@", dir_);
    ReplaceAll(&good_, "@HASH@", *hash_);
  }

  void TearDown() override {
    unsetenv(kEnvB);
    for (const char* f : {"ca.pem", "server.pem", "server.key", "libfake.so",
                          "pin-a", "pin-long", "hsmuxd.yaml"}) {
      std::remove((dir_ + "/" + f).c_str());
    }
    rmdir((dir_ + "/subdir").c_str());
    rmdir(dir_.c_str());
  }

  // The good config with `from` (which must occur) replaced by `to`.
  std::string Edit(const std::string& from, const std::string& to) {
    EXPECT_NE(good_.find(from), std::string::npos) << from;
    std::string text = good_;
    ReplaceAll(&text, from, to);
    return text;
  }

  absl::StatusOr<AgentConfig> Load(const std::string& text) {
    WriteFile(path_, text);
    return LoadAgentConfig(path_);
  }

  // Loads `text`, expects failure with a message "<file>:<line>: ..."
  // containing `reason`, and no PIN anywhere in it. `line` 0: any line.
  void ExpectError(const std::string& text, int line,
                   const std::string& reason) {
    absl::StatusOr<AgentConfig> config = Load(text);
    ASSERT_FALSE(config.ok()) << "loaded:\n" << text;
    const std::string msg(config.status().message());
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument)
        << msg;
    if (line > 0) {
      EXPECT_EQ(msg.rfind(path_ + ":" + std::to_string(line) + ": ", 0), 0u)
          << msg;
    } else {
      EXPECT_EQ(msg.rfind(path_ + ":", 0), 0u) << msg;
    }
    EXPECT_NE(msg.find(reason), std::string::npos) << msg;
    EXPECT_EQ(msg.find(kPinA), std::string::npos) << msg;
    EXPECT_EQ(msg.find(kPinB), std::string::npos) << msg;
    EXPECT_EQ(msg.find("1234"), std::string::npos) << msg;
  }

  static std::string* hash_;
  std::string dir_;
  std::string path_;
  std::string good_;
};

std::string* ConfigTest::hash_ = nullptr;

TEST_F(ConfigTest, GoodConfigLoads) {
  absl::StatusOr<AgentConfig> config = Load(good_);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen, "127.0.0.1:7443");
  EXPECT_EQ(config->tls.ca_file, dir_ + "/ca.pem");
  EXPECT_EQ(config->tls.cert_file, dir_ + "/server.pem");
  EXPECT_EQ(config->tls.key_file, dir_ + "/server.key");
  EXPECT_EQ(config->state_dir, dir_ + "/state");
  EXPECT_EQ(config->lease_seconds, 30u);
  EXPECT_EQ(config->max_sessions_per_instance, 4096u);
  ASSERT_EQ(config->groups.size(), 1u);
  const GroupConfig& g = config->groups[0];
  EXPECT_EQ(g.slot_id, 1u);
  EXPECT_EQ(g.label, "hsmux-demo");
  EXPECT_EQ(g.serial, "HSMUX0001");
  EXPECT_EQ(g.model, "hsmux");
  EXPECT_EQ(g.manufacturer, "hsmux");
  EXPECT_EQ(g.slot_description, "hsmux virtual slot");
  ASSERT_EQ(g.members.size(), 2u);
  EXPECT_EQ(g.members[0].name, "a");
  EXPECT_EQ(g.members[0].library, dir_ + "/libfake.so");
  EXPECT_EQ(g.members[0].token_label, "member-a");
  EXPECT_EQ(g.members[0].token_serial, "");
  EXPECT_EQ(g.members[0].pin, kPinA);
  EXPECT_EQ(g.members[1].name, "b");
  EXPECT_EQ(g.members[1].token_serial, "0001");  // quoted: stays a string
  EXPECT_EQ(g.members[1].pin, kPinB);
  ASSERT_EQ(config->clients.size(), 1u);
  EXPECT_EQ(config->clients[0].common_name, "client-1");
  EXPECT_EQ(config->clients[0].san, "");
  ASSERT_EQ(config->clients[0].groups.size(), 1u);
  EXPECT_EQ(config->clients[0].groups[0].slot_id, 1u);
  EXPECT_EQ(config->clients[0].groups[0].pin_hash, *hash_);
  absl::StatusOr<bool> ok =
      VerifyPin("1234", config->clients[0].groups[0].pin_hash);
  ASSERT_TRUE(ok.ok());
  EXPECT_TRUE(*ok);
}

TEST_F(ConfigTest, OptionalFieldsTakeDefaults) {
  std::string text = good_;
  for (const char* line : {"listen: 127.0.0.1:7443\n", "lease_seconds: 30\n",
                           "max_sessions_per_instance: 4096\n",
                           "    model: hsmux\n", "    manufacturer: hsmux\n"}) {
    ASSERT_NE(text.find(line), std::string::npos);
    ReplaceAll(&text, line, "");
  }
  ReplaceAll(&text, "state_dir: " + dir_ + "/state\n", "");
  absl::StatusOr<AgentConfig> config = Load(text);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen, "127.0.0.1:7443");
  EXPECT_EQ(config->state_dir, "/var/lib/hsmux");
  EXPECT_EQ(config->lease_seconds, 30u);
  EXPECT_EQ(config->max_sessions_per_instance, 4096u);
  EXPECT_EQ(config->groups[0].model, "hsmux");
  EXPECT_EQ(config->groups[0].manufacturer, "hsmux");
  EXPECT_EQ(config->max_concurrent_calls, 256u);
  EXPECT_EQ(config->max_streams, 128u);  // half of max_concurrent_calls
}

TEST_F(ConfigTest, MaxStreamsIsBoundedByMaxConcurrentCalls) {
  std::string text = Edit("lease_seconds: 30", "lease_seconds: 30\nmax_concurrent_calls: 10");
  absl::StatusOr<AgentConfig> config = Load(text);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->max_streams, 5u);
  config = Load(text + "max_streams: 0\n");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->max_streams, 0u);
  text += "max_streams: 11\n";
  ExpectError(text, LineOf(text, "max_streams:"), "max_streams: must be an integer from 0 to 10");
}

TEST_F(ConfigTest, SanAndTwoGroupsLoad) {
  std::string text =
      Edit("  - common_name: client-1\n", "  - san: client-1.example.com\n");
  ReplaceAll(&text, "clients:\n",
             "  - slot_id: 4294967295\n"
             "    label: second\n"
             "    serial: S2\n"
             "    slot_description: another one\n"
             "    members:\n"
             "      - name: x\n"
             "        library: " +
                 dir_ +
                 "/libfake.so\n"
                 "        token_label: x\n"
                 "        pin_file: " +
                 dir_ +
                 "/pin-a\n"
                 "clients:\n");
  absl::StatusOr<AgentConfig> config = Load(text);
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->groups.size(), 2u);
  EXPECT_EQ(config->groups[1].slot_id, 4294967295u);
  EXPECT_EQ(config->groups[1].slot_description, "another one");
  EXPECT_EQ(config->clients[0].san, "client-1.example.com");
}

TEST_F(ConfigTest, PinFileFirstLineOnlyCrLfStripped) {
  WriteFile(dir_ + "/pin-a", std::string(kPinA) + "\r\nsecond line\n");
  absl::StatusOr<AgentConfig> config = Load(good_);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->groups[0].members[0].pin, kPinA);
  WriteFile(dir_ + "/pin-a", kPinA);  // no newline at all
  config = Load(good_);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->groups[0].members[0].pin, kPinA);
}

TEST_F(ConfigTest, MissingFieldNamesContainer) {
  std::string text = Edit("    label: hsmux-demo\n", "");
  ExpectError(text, LineOf(text, "- slot_id: 1"),
              "groups[0]: label is required");
}

TEST_F(ConfigTest, MissingMemberLibrary) {
  std::string text = Edit("        library: " + dir_ + "/libfake.so\n" +
                              "        token_label: member-a\n",
                          "        token_label: member-a\n");
  ExpectError(text, LineOf(text, "- name: a"),
              "groups[0].members[0]: library is required");
}

TEST_F(ConfigTest, MissingTls) {
  std::string text = good_;
  const size_t from = text.find("tls:");
  const size_t to = text.find("state_dir:");
  text.erase(from, to - from);
  ExpectError(text, LineOf(text, "listen:"), "tls is required");
}

TEST_F(ConfigTest, UnknownKeyIsAnError) {
  std::string text = Edit("    serial: HSMUX0001", "    serail: HSMUX0001");
  ExpectError(text, LineOf(text, "serail"), "groups[0]: unknown key 'serail'");
}

TEST_F(ConfigTest, UnknownTopLevelKeyIsAnError) {
  std::string text = Edit("lease_seconds: 30\n", "lease_second: 30\n");
  ExpectError(text, LineOf(text, "lease_second:"),
              "unknown key 'lease_second'");
}

TEST_F(ConfigTest, InlinePinKeyIsRejectedWithoutEchoingIt) {
  std::string text = Edit("        pin_file: " + dir_ + "/pin-a\n",
                          "        pin: " + std::string(kPinA) + "\n");
  ExpectError(text, LineOf(text, "pin: "), "pin_file or pin_env");
}

TEST_F(ConfigTest, DuplicateKeyIsAnError) {
  std::string text = Edit("    serial: HSMUX0001\n",
                          "    serial: HSMUX0001\n    serial: OTHER\n");
  ExpectError(text, LineOf(text, "serial: OTHER"), "duplicate key 'serial'");
}

TEST_F(ConfigTest, DuplicateSlotId) {
  std::string text = good_;
  ReplaceAll(&text, "clients:\n",
             "  - slot_id: 1\n"
             "    label: other\n"
             "    serial: OTHER\n"
             "    members:\n"
             "      - name: a\n"
             "        library: " +
                 dir_ +
                 "/libfake.so\n"
                 "        token_label: x\n"
                 "        pin_env: HSMUX_TEST_PIN_B\n"
                 "clients:\n");
  ExpectError(text, LineOf(text, "label: other") - 1,
              "groups[1].slot_id: duplicate slot_id 1 (also groups[0])");
}

TEST_F(ConfigTest, DuplicateMemberName) {
  std::string text = Edit("      - name: b\n", "      - name: a\n");
  ExpectError(text, LineOf(text, "token_serial") - 2,
              "groups[0].members[1].name: duplicate member name 'a'");
}

TEST_F(ConfigTest, BadPinHash) {
  std::string text = Edit(*hash_, "scrypt$15$8$1$abc");
  ExpectError(text, LineOf(text, "pin_hash:"),
              "clients[0].groups[0].pin_hash: expected scrypt$");
}

TEST_F(ConfigTest, PinHashCostAboveCap) {
  std::string hostile = *hash_;
  hostile.replace(0, std::string("scrypt$15$").size(), "scrypt$30$");
  std::string text = Edit(*hash_, hostile);
  ExpectError(text, LineOf(text, "pin_hash:"), "log2 N must be between");
}

TEST_F(ConfigTest, MissingPinFile) {
  std::string text =
      Edit("pin_file: " + dir_ + "/pin-a", "pin_file: " + dir_ + "/nope");
  ExpectError(text, LineOf(text, "pin_file:"),
              "groups[0].members[0].pin_file: cannot open");
}

TEST_F(ConfigTest, EmptyPinFile) {
  WriteFile(dir_ + "/pin-a", "\n");
  ExpectError(good_, LineOf(good_, "pin_file:"), "is empty");
}

TEST_F(ConfigTest, OverlongPinFileIsNotEchoed) {
  // A wrong file (here: a long secret-looking line) must not end up in the
  // message, not even in part.
  WriteFile(dir_ + "/pin-long", std::string(300, 'Q') + kPinA + "\n");
  std::string text =
      Edit("pin_file: " + dir_ + "/pin-a", "pin_file: " + dir_ + "/pin-long");
  ExpectError(text, LineOf(text, "pin_file:"), "longer than 255 bytes");
  absl::StatusOr<AgentConfig> config = Load(text);
  EXPECT_EQ(std::string(config.status().message()).find("QQQQ"),
            std::string::npos);
}

TEST_F(ConfigTest, PinFileMustBeRegular) {
  ASSERT_EQ(mkdir((dir_ + "/subdir").c_str(), 0700), 0);
  std::string text =
      Edit("pin_file: " + dir_ + "/pin-a", "pin_file: " + dir_ + "/subdir");
  ExpectError(text, LineOf(text, "pin_file:"), "not a regular file");
}

TEST_F(ConfigTest, PinEnvUnset) {
  unsetenv(kEnvB);
  ExpectError(good_, LineOf(good_, "pin_env:"),
              "groups[0].members[1].pin_env: environment variable "
              "HSMUX_TEST_PIN_B is not set");
}

TEST_F(ConfigTest, PinEnvEmpty) {
  ASSERT_EQ(setenv(kEnvB, "", 1), 0);
  ExpectError(good_, LineOf(good_, "pin_env:"), "is empty");
}

TEST_F(ConfigTest, BothPinFileAndPinEnv) {
  std::string text = Edit("        pin_env: HSMUX_TEST_PIN_B\n",
                          "        pin_env: HSMUX_TEST_PIN_B\n"
                          "        pin_file: " +
                              dir_ + "/pin-a\n");
  ExpectError(text, LineOf(text, "- name: b"),
              "exactly one of pin_file and pin_env");
}

TEST_F(ConfigTest, NeitherTokenLabelNorSerial) {
  std::string text = Edit("        token_label: member-a\n", "");
  ExpectError(text, LineOf(text, "- name: a"),
              "token_label or token_serial is required");
}

TEST_F(ConfigTest, TooLongLabel) {
  const std::string label(33, 'L');
  std::string text = Edit("label: hsmux-demo", "label: " + label);
  ExpectError(text, LineOf(text, label),
              "groups[0].label: must be at most 32 bytes (is 33)");
}

TEST_F(ConfigTest, LabelOfExactly32BytesIsFine) {
  std::string text =
      Edit("label: hsmux-demo", "label: " + std::string(32, 'L'));
  absl::StatusOr<AgentConfig> config = Load(text);
  EXPECT_TRUE(config.ok()) << config.status();
}

TEST_F(ConfigTest, TooLongSerialAndModel) {
  std::string text =
      Edit("serial: HSMUX0001", "serial: " + std::string(17, '9'));
  ExpectError(text, LineOf(text, "serial:"), "at most 16 bytes");
  text = Edit("model: hsmux", "model: " + std::string(17, 'm'));
  ExpectError(text, LineOf(text, "model:"), "at most 16 bytes");
}

TEST_F(ConfigTest, TrailingBlankInLabel) {
  std::string text = Edit("label: hsmux-demo", "label: \"hsmux-demo \"");
  ExpectError(text, LineOf(text, "label:"), "blank");
}

TEST_F(ConfigTest, ClientNamesUnknownSlot) {
  std::string text = Edit("      - slot_id: 1\n        pin_hash",
                          "      - slot_id: 7\n        pin_hash");
  ExpectError(text, LineOf(text, "slot_id: 7"),
              "clients[0].groups[0].slot_id: no group has slot_id 7");
}

TEST_F(ConfigTest, ClientWithoutIdentity) {
  std::string text =
      Edit("  - common_name: client-1\n    groups:", "  - groups:");
  ExpectError(text, LineOf(text, "  - groups:"),
              "common_name or san is required");
}

TEST_F(ConfigTest, DuplicateClientCommonName) {
  std::string text = good_ +
                     "  - common_name: client-1\n"
                     "    groups:\n"
                     "      - slot_id: 1\n"
                     "        pin_hash: \"" +
                     *hash_ + "\"\n";
  ExpectError(text, LineOf(text, "pin_hash:") + 1,
              "clients[1].common_name: duplicate common_name 'client-1'");
}

TEST_F(ConfigTest, BadNumbers) {
  for (const char* bad :
       {"-1", "0", "abc", "1.5", "99999999999999999999999", "3601", "[1]"}) {
    std::string text =
        Edit("lease_seconds: 30", std::string("lease_seconds: ") + bad);
    ExpectError(text, LineOf(text, "lease_seconds:"),
                "lease_seconds: must be an integer from 5 to 3600");
  }
  std::string text =
      Edit("- slot_id: 1\n    label", "- slot_id: 4294967296\n    label");
  ExpectError(text, LineOf(text, "4294967296"), "groups[0].slot_id: must be");
}

TEST_F(ConfigTest, BadListen) {
  for (const char* bad : {"7443", "localhost", "host:0", "host:65536",
                          "::1:7443", "[::1:7443", ":7443", "host:port"}) {
    std::string text =
        Edit("listen: 127.0.0.1:7443", std::string("listen: \"") + bad + "\"");
    ExpectError(text, LineOf(text, "listen:"), "listen: must be host:port");
  }
  std::string text = Edit("listen: 127.0.0.1:7443", "listen: \"[::1]:7443\"");
  absl::StatusOr<AgentConfig> config = Load(text);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen, "[::1]:7443");
}

TEST_F(ConfigTest, RelativeOrMissingPaths) {
  std::string text =
      Edit("library: " + dir_ + "/libfake.so", "library: libfake.so");
  ExpectError(text, LineOf(text, "library: libfake.so"),
              "must be an absolute path");
  text =
      Edit("  key: " + dir_ + "/server.key", "  key: " + dir_ + "/missing.key");
  ExpectError(text, LineOf(text, "missing.key"), "tls.key: cannot use");
  text = good_ + "listen_unix: agent.sock\n";
  ExpectError(text, LineOf(text, "listen_unix:"), "must be an absolute path");
  absl::StatusOr<AgentConfig> config = Load(good_ + "listen_unix: /run/hsmux/agent.sock\n");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen_unix, "/run/hsmux/agent.sock");
}

TEST_F(ConfigTest, EmptyGroupsOrMembers) {
  std::string text = good_;
  const size_t from = text.find("groups:\n  - slot_id");
  const size_t to = text.find("clients:");
  text.replace(from, to - from, "groups: []\n");
  ExpectError(text, LineOf(text, "groups: []"), "must be a non-empty list");
}

TEST_F(ConfigTest, WrongTypes) {
  std::string text = good_;
  const size_t from = text.find("tls:");
  text.replace(from, text.find("state_dir:") - from, "tls: yes\n");
  ExpectError(text, LineOf(text, "tls: yes"), "tls: must be a mapping");
  text = Edit("    label: hsmux-demo", "    label: [a, b]");
  ExpectError(text, LineOf(text, "[a, b]"),
              "groups[0].label: must be a string");
}

TEST_F(ConfigTest, EmptyValuePointsAtItsKey) {
  // yaml-cpp places an empty value at the next token; the message must name
  // the key's line instead.
  std::string text = good_;
  const size_t from = text.find("tls:");
  text.replace(from, text.find("state_dir:") - from, "tls:\n");
  ExpectError(text, LineOf(text, "tls:"), "tls: must be a mapping");
  text = Edit("lease_seconds: 30\n", "lease_seconds:\n");
  ExpectError(text, LineOf(text, "lease_seconds:"), "lease_seconds: must be");
  text = Edit("    label: hsmux-demo\n", "    label:\n");
  ExpectError(text, LineOf(text, "label:"),
              "groups[0].label: must not be empty");
}

TEST_F(ConfigTest, YamlSyntaxErrorHasLineAndDoesNotThrow) {
  std::string text = Edit("    serial: HSMUX0001\n",
                          "    serial: HSMUX0001\n   bad: [unclosed\n");
  ExpectError(text, 0, "");
  text = Edit("    serial: HSMUX0001\n", "    serial: \"HSMUX0001\n");
  ExpectError(text, 0, "");
  text = Edit("    serial: HSMUX0001\n", "\tserial: HSMUX0001\n");
  ExpectError(text, LineOf(text, "\tserial"), "");
}

TEST_F(ConfigTest, TopLevelMustBeAMapping) {
  ExpectError("- just\n- a list\n", 1, "must be a mapping");
  ExpectError("just a string\n", 1, "must be a mapping");
}

TEST_F(ConfigTest, EmptyConfig) {
  ExpectError("", 0, "config is empty");
  ExpectError("# only a comment\n", 0, "config is empty");
}

TEST_F(ConfigTest, MoreThanOneDocument) {
  ExpectError(good_ + "---\nlisten: 1.2.3.4:5\n", 0,
              "more than one YAML document");
}

TEST_F(ConfigTest, MissingOrUnreadableConfigFile) {
  absl::StatusOr<AgentConfig> config = LoadAgentConfig(dir_ + "/none.yaml");
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find(dir_ + "/none.yaml"),
            absl::string_view::npos);
  config = LoadAgentConfig(dir_);  // a directory
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("not a regular file"),
            absl::string_view::npos);
}

TEST_F(ConfigTest, AliasesAndOddInputDoNotCrash) {
  // Anchors, aliases, a merge key, binary junk and deep nesting: each must
  // come back as a status, never an exception or a crash.
  ExpectError(good_ + "extra: &a [*a]\n", 0, "");
  ExpectError(Edit("    members:\n", "    <<: {x: 1}\n    members:\n"),
              LineOf(good_, "    members:"), "unknown key '<<'");
  ExpectError(std::string("\x00\xff\xfe garbage: [", 13), 0, "");
  ExpectError(std::string(10000, '[') + std::string(10000, ']'), 0, "");
}

}  // namespace
}  // namespace hsmux::agent
