// Writes the checked-in seed corpora: fuzz/corpus/<target>/seed-*.
//
//   build-fuzz/fuzz/fuzz_make_seeds fuzz/corpus
//
// Run by hand after a wire or config format change; CI only reads the
// corpora. Nothing here is secret: PINs are the dummy fuzz PINs, keys are
// made by the token during fuzzing and never stored.
#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <openssl/evp.h>

#include "hsmux/v1/cryptoki.pb.h"
#include "wire/cryptoki.h"
#include "wire/function_table.h"

namespace {

using hsmux::wire::F;
namespace v1 = hsmux::v1;

std::string g_root;

void Write(const std::string& target, const std::string& name, const std::string& bytes) {
  const std::string dir = g_root + "/" + target;
  mkdir(dir.c_str(), 0755);
  const std::string path = dir + "/seed-" + name;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    std::perror(path.c_str());
    std::exit(1);
  }
  std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
}

// ---------------------------------------------------------------- codecs --

v1::Attribute Ul(uint64_t type, uint64_t v) {
  v1::Attribute a;
  a.set_type(type);
  a.set_ulong(v);
  return a;
}
v1::Attribute Bo(uint64_t type, bool v) {
  v1::Attribute a;
  a.set_type(type);
  a.set_boolean(v);
  return a;
}
v1::Attribute By(uint64_t type, const std::string& v) {
  v1::Attribute a;
  a.set_type(type);
  a.set_bytes(v);
  return a;
}

void AttributeSeeds() {
  v1::AttributeList key;
  *key.add_attributes() = Ul(CKA_CLASS, CKO_SECRET_KEY);
  *key.add_attributes() = Ul(CKA_KEY_TYPE, CKK_AES);
  *key.add_attributes() = Bo(CKA_TOKEN, true);
  *key.add_attributes() = By(CKA_LABEL, "seed key");
  *key.add_attributes() = By(CKA_START_DATE, "20240101");
  v1::Attribute* mechs = key.add_attributes();
  mechs->set_type(CKA_ALLOWED_MECHANISMS);
  mechs->mutable_mechanisms()->add_values(CKM_AES_GCM);
  mechs->mutable_mechanisms()->add_values(CKM_AES_KEY_WRAP);
  v1::Attribute* wrap = key.add_attributes();
  wrap->set_type(CKA_WRAP_TEMPLATE);
  *wrap->mutable_nested()->add_attributes() = Ul(CKA_KEY_TYPE, CKK_AES);
  *wrap->mutable_nested()->add_attributes() = Bo(CKA_EXTRACTABLE, true);
  Write("fuzz_attribute_codec", "decode-key", std::string(1, '\0') + key.SerializeAsString());

  v1::AttributeList deep;
  v1::AttributeList* level = &deep;
  for (int i = 0; i < 5; ++i) {
    v1::Attribute* a = level->add_attributes();
    a->set_type(CKA_UNWRAP_TEMPLATE);
    level = a->mutable_nested();
  }
  Write("fuzz_attribute_codec", "decode-deep", std::string(1, '\0') + deep.SerializeAsString());

  v1::AttributeList bad;
  *bad.add_attributes() = By(CKA_CLASS, "abc");  // a ulong type as bytes
  Write("fuzz_attribute_codec", "decode-mismatch", std::string(1, '\0') + bad.SerializeAsString());

  // Native recipes (mode 1): FuzzedDataProvider takes integers from the end.
  Write("fuzz_attribute_codec", "native-1", std::string("\x01") + std::string(64, '\x41') +
                                                std::string("\x03\x07\x01\x00\x02\x05", 6));
  Write("fuzz_attribute_codec", "native-2",
        std::string("\x01") + "CKA_LABEL value and some more bytes" +
            std::string("\x10\x20\x30\x04\x0f\x0e\x01\x06\x03\x00\x07", 11));

  // Answers (mode 2).
  v1::AttributeAnswerList answers;
  v1::AttributeAnswer* ok = answers.add_answers();
  *ok->mutable_value() = Ul(CKA_CLASS, CKO_SECRET_KEY);
  answers.add_answers()->set_status(v1::AttributeAnswer::SENSITIVE);
  v1::AttributeAnswer* len = answers.add_answers();
  len->set_length(32);
  Write("fuzz_attribute_codec", "answers-1",
        std::string("\x02") + answers.SerializeAsString() + std::string("\x00\x01\x02\x03", 4));
  v1::AttributeAnswerList nested;
  v1::AttributeAnswer* n = nested.add_answers();
  n->mutable_value()->set_type(CKA_WRAP_TEMPLATE);
  *n->mutable_value()->mutable_nested()->add_attributes() = Ul(CKA_KEY_TYPE, CKK_AES);
  *n->mutable_value()->mutable_nested()->add_attributes() = By(CKA_LABEL, "x");
  Write("fuzz_attribute_codec", "answers-nested",
        std::string("\x02") + nested.SerializeAsString() + std::string("\x07\x10\x02\x01", 4));
}

void MechanismSeeds() {
  auto wire = [](const v1::Mechanism& m) { return std::string(1, '\0') + m.SerializeAsString(); };
  v1::Mechanism m;
  m.set_type(CKM_AES_CBC_PAD);
  m.set_raw(std::string(16, '\x11'));
  Write("fuzz_mechanism_codec", "wire-cbc", wire(m));
  m.Clear();
  m.set_type(CKM_AES_GCM);
  m.mutable_gcm()->set_iv(std::string(12, '\x22'));
  m.mutable_gcm()->set_aad("aad");
  m.mutable_gcm()->set_tag_bits(128);
  Write("fuzz_mechanism_codec", "wire-gcm", wire(m));
  m.Clear();
  m.set_type(CKM_RSA_PKCS_OAEP);
  m.mutable_oaep()->set_hash_alg(CKM_SHA256);
  m.mutable_oaep()->set_mgf(CKG_MGF1_SHA256);
  m.mutable_oaep()->set_source(CKZ_DATA_SPECIFIED);
  m.mutable_oaep()->set_source_data("label");
  Write("fuzz_mechanism_codec", "wire-oaep", wire(m));
  m.Clear();
  m.set_type(CKM_SHA256_RSA_PKCS_PSS);
  m.mutable_pss()->set_hash_alg(CKM_SHA256);
  m.mutable_pss()->set_mgf(CKG_MGF1_SHA256);
  m.mutable_pss()->set_salt_len(32);
  Write("fuzz_mechanism_codec", "wire-pss", wire(m));
  m.Clear();
  m.set_type(CKM_AES_CTR);
  m.mutable_ctr()->set_counter_bits(32);
  m.mutable_ctr()->set_counter_block(std::string(16, '\x01'));
  Write("fuzz_mechanism_codec", "wire-ctr", wire(m));
  m.Clear();
  m.set_type(CKM_ECDH1_DERIVE);
  m.mutable_ecdh1()->set_kdf(CKD_NULL);
  m.mutable_ecdh1()->set_public_data(std::string(65, '\x04'));
  Write("fuzz_mechanism_codec", "wire-ecdh1", wire(m));
  m.Clear();
  m.set_type(CKM_AES_CBC_ENCRYPT_DATA);
  m.mutable_aes_cbc_data()->set_iv(std::string(16, '\x33'));
  m.mutable_aes_cbc_data()->set_data(std::string(32, '\x44'));
  Write("fuzz_mechanism_codec", "wire-cbc-data", wire(m));
  m.Clear();
  m.set_type(0x1057);  // CKM_EDDSA
  m.mutable_eddsa()->set_context_data("ctx");
  Write("fuzz_mechanism_codec", "wire-eddsa", wire(m));
  m.Clear();
  m.set_type(CKM_SHA256_HMAC_GENERAL);
  m.set_ulong(16);
  Write("fuzz_mechanism_codec", "wire-hmac-general", wire(m));
  m.Clear();
  m.set_type(CKM_XOR_BASE_AND_DATA);
  m.set_raw("xor data");
  Write("fuzz_mechanism_codec", "wire-string-data", wire(m));
  // Native recipes (mode 1).
  Write("fuzz_mechanism_codec", "native-gcm",
        std::string("\x01") + std::string(40, '\x55') + std::string("\x0c\x03\x01\x02\x0d\x01", 6));
  Write("fuzz_mechanism_codec", "native-raw",
        std::string("\x01") + std::string(16, '\x66') + std::string("\x10\x00\x02\x01", 4));
}

// ----------------------------------------------------------- agent calls --

constexpr uint64_t kRef0 = 0xFFFFFFFFFFFFFF00ULL;  // the first handle answered
constexpr char kPin[] = "fuzz-user-pin";

struct Call {
  v1::CallRequest req;
  explicit Call(F f) { req.set_function(static_cast<uint32_t>(f)); }
  Call& U(uint64_t v) { req.add_args()->set_ulong(v); return *this; }
  Call& B(const std::string& v) { req.add_args()->set_bytes(v); return *this; }
  Call& Cap(uint64_t c, bool null = false) {
    auto* cap = req.add_args()->mutable_capacity();
    cap->set_capacity(c);
    cap->set_is_null(null);
    return *this;
  }
  Call& T(const std::vector<v1::Attribute>& attrs) {
    auto* list = req.add_args()->mutable_attributes();
    for (const auto& a : attrs) *list->add_attributes() = a;
    return *this;
  }
  Call& M(const v1::Mechanism& m) { *req.add_args()->mutable_mechanism() = m; return *this; }
  Call& Q(const std::vector<std::pair<uint64_t, uint64_t>>& qs) {
    auto* list = req.add_args()->mutable_queries();
    for (auto [type, cap] : qs) {
      auto* q = list->add_queries();
      q->set_type(type);
      q->set_want_value(cap > 0);
      q->set_capacity(cap);
    }
    return *this;
  }
};

v1::Mechanism Mech(uint64_t type) {
  v1::Mechanism m;
  m.set_type(type);
  return m;
}

void AgentSeed(const std::string& name, const std::vector<Call>& calls) {
  std::string out;
  for (const Call& c : calls) {
    std::string b = c.req.SerializeAsString();
    out.push_back(static_cast<char>(b.size() & 0xff));
    out.push_back(static_cast<char>(b.size() >> 8));
    out += b;
  }
  Write("fuzz_agent_request", name, out);
}

Call Open() { return std::move(Call(F::kOpenSession).U(1).U(CKF_SERIAL_SESSION | CKF_RW_SESSION)); }
Call Login() { return std::move(Call(F::kLogin).U(kRef0).U(CKU_USER).B(kPin)); }

void AgentSeeds() {
  AgentSeed("slot-info", {Call(F::kGetSlotInfo).U(1), Call(F::kGetTokenInfo).U(1),
                          Call(F::kGetMechanismList).U(1).Cap(64),
                          Call(F::kGetMechanismInfo).U(1).U(CKM_AES_GCM)});
  AgentSeed("bad-slot", {Call(F::kGetTokenInfo).U(7), Call(F::kOpenSession).U(1).U(0)});
  v1::Mechanism gcm = Mech(CKM_AES_GCM);
  gcm.mutable_gcm()->set_iv(std::string(12, '\x01'));
  gcm.mutable_gcm()->set_tag_bits(128);
  AgentSeed("aes-gcm", {Open(), Login(),
                        Call(F::kGenerateKey).U(kRef0).M(Mech(CKM_AES_KEY_GEN))
                            .T({Ul(CKA_VALUE_LEN, 32), Bo(CKA_ENCRYPT, true),
                                Bo(CKA_DECRYPT, true), Bo(CKA_TOKEN, false)}),
                        Call(F::kEncryptInit).U(kRef0).M(gcm).U(kRef0 + 1),
                        Call(F::kEncrypt).U(kRef0).B("hello hsmux").Cap(64),
                        Call(F::kEncryptInit).U(kRef0).M(gcm).U(kRef0 + 1),
                        Call(F::kEncryptUpdate).U(kRef0).B("part one").Cap(64),
                        Call(F::kEncryptFinal).U(kRef0).Cap(64)});
  AgentSeed("objects", {Open(), Login(),
                        Call(F::kCreateObject).U(kRef0)
                            .T({Ul(CKA_CLASS, CKO_DATA), By(CKA_LABEL, "seed"),
                                By(CKA_VALUE, "data"), Bo(CKA_TOKEN, false)}),
                        Call(F::kGetAttributeValue).U(kRef0).U(kRef0 + 1)
                            .Q({{CKA_LABEL, 32}, {CKA_VALUE, 0}, {CKA_CLASS, 8}}),
                        Call(F::kSetAttributeValue).U(kRef0).U(kRef0 + 1).T({By(CKA_LABEL, "new")}),
                        Call(F::kFindObjectsInit).U(kRef0).T({Ul(CKA_CLASS, CKO_DATA)}),
                        Call(F::kFindObjects).U(kRef0).U(10),
                        Call(F::kFindObjectsFinal).U(kRef0),
                        Call(F::kDestroyObject).U(kRef0).U(kRef0 + 1)});
  const std::string p256("\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07", 10);
  AgentSeed("ec-sign", {Open(), Login(),
                        Call(F::kGenerateKeyPair).U(kRef0).M(Mech(CKM_EC_KEY_PAIR_GEN))
                            .T({By(CKA_EC_PARAMS, p256), Bo(CKA_VERIFY, true), Bo(CKA_TOKEN, false)})
                            .T({Bo(CKA_SIGN, true), Bo(CKA_TOKEN, false), Bo(CKA_SENSITIVE, true)}),
                        Call(F::kSignInit).U(kRef0).M(Mech(CKM_ECDSA_SHA256)).U(kRef0 + 2),
                        Call(F::kSign).U(kRef0).B("message").Cap(128),
                        Call(F::kVerifyInit).U(kRef0).M(Mech(CKM_ECDSA_SHA256)).U(kRef0 + 1),
                        Call(F::kVerify).U(kRef0).B("message").B(std::string(64, '\0'))});
  AgentSeed("digest", {Open(), Call(F::kDigestInit).U(kRef0).M(Mech(CKM_SHA256)),
                       Call(F::kDigestUpdate).U(kRef0).B("abc"),
                       Call(F::kDigestFinal).U(kRef0).Cap(32, true),
                       Call(F::kDigestFinal).U(kRef0).Cap(32)});
  AgentSeed("session", {Open(), Call(F::kGetSessionInfo).U(kRef0),
                        Call(F::kGenerateRandom).U(kRef0).Cap(16),
                        Call(F::kSeedRandom).U(kRef0).B("seed"),
                        Call(F::kLogin).U(kRef0).U(CKU_USER).B("wrong-pin"),
                        Call(F::kLogout).U(kRef0), Call(F::kCloseSession).U(kRef0),
                        Call(F::kCloseAllSessions).U(1)});
  v1::Mechanism wrap = Mech(CKM_AES_KEY_WRAP);
  v1::Mechanism derive = Mech(CKM_AES_ECB_ENCRYPT_DATA);
  derive.set_raw(std::string(16, '\x09'));
  AgentSeed("wrap-derive",
            {Open(), Login(),
             Call(F::kGenerateKey).U(kRef0).M(Mech(CKM_AES_KEY_GEN))
                 .T({Ul(CKA_VALUE_LEN, 16), Bo(CKA_WRAP, true), Bo(CKA_UNWRAP, true),
                     Bo(CKA_DERIVE, true), Bo(CKA_TOKEN, false)}),
             Call(F::kGenerateKey).U(kRef0).M(Mech(CKM_AES_KEY_GEN))
                 .T({Ul(CKA_VALUE_LEN, 16), Bo(CKA_EXTRACTABLE, true), Bo(CKA_TOKEN, false)}),
             Call(F::kWrapKey).U(kRef0).M(wrap).U(kRef0 + 1).U(kRef0 + 2).Cap(64),
             Call(F::kUnwrapKey).U(kRef0).M(wrap).U(kRef0 + 1).B(std::string(24, '\x05'))
                 .T({Ul(CKA_CLASS, CKO_SECRET_KEY), Ul(CKA_KEY_TYPE, CKK_AES)}),
             Call(F::kDeriveKey).U(kRef0).M(derive).U(kRef0 + 1)
                 .T({Ul(CKA_CLASS, CKO_SECRET_KEY), Ul(CKA_KEY_TYPE, CKK_AES),
                     Ul(CKA_VALUE_LEN, 16)}),
             Call(F::kCopyObject).U(kRef0).U(kRef0 + 2).T({By(CKA_LABEL, "copy")})});
  AgentSeed("not-served", {Call(F::kInitToken).U(1), Call(F::kGetFunctionStatus).U(kRef0),
                           Call(static_cast<F>(200))});
}

// --------------------------------------------------------------- configs --

std::string B64(const unsigned char* p, size_t n) {
  std::string out(4 * ((n + 2) / 3) + 1, '\0');
  int w = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), p, static_cast<int>(n));
  out.resize(w);
  while (!out.empty() && out.back() == '=') out.pop_back();
  return out;
}

void ConfigSeeds() {
  const unsigned char salt[16] = {'h', 's', 'm', 'u', 'x', '-', 'f', 'u',
                                  'z', 'z', '-', 's', 'a', 'l', 't', '!'};
  unsigned char key[32];
  EVP_PBE_scrypt(kPin, sizeof kPin - 1, salt, sizeof salt, 1 << 10, 1, 1, 0, key, sizeof key);
  const std::string hash = "scrypt$10$1$1$" + B64(salt, 16) + "$" + B64(key, 32);
  const std::string tls =
      "tls: {ca: /etc/os-release, cert: /etc/os-release, key: /etc/os-release}\n";
  const std::string full =
      "listen: 127.0.0.1:7443\n" + tls +
      "state_dir: /tmp\n"
      "lease_seconds: 30\n"
      "max_sessions_per_instance: 64\n"
      "max_pin_failures: 5\n"
      "groups:\n"
      "  - slot_id: 1\n"
      "    label: fuzz\n"
      "    serial: FUZZ0001\n"
      "    replication: wrap\n"
      "    pool_min_sessions: 1\n"
      "    pool_max_sessions: 4\n"
      "    members:\n"
      "      - {name: a, library: /usr/lib/softhsm/libsofthsm2.so, token_label: member-a,\n"
      "         pin_env: HSMUX_FUZZ_MEMBER_PIN}\n"
      "      - name: b\n"
      "        library: /usr/lib/softhsm/libsofthsm2.so\n"
      "        token_serial: \"0123456789abcdef\"\n"
      "        pin_env: HSMUX_FUZZ_MEMBER_PIN\n"
      "  - slot_id: 2\n"
      "    label: second\n"
      "    replication: none\n"
      "    members:\n"
      "      - {name: c, library: /usr/lib/softhsm/libsofthsm2.so, token_label: member-c,\n"
      "         pin_env: HSMUX_FUZZ_MEMBER_PIN}\n"
      "clients:\n"
      "  - common_name: client-1\n"
      "    groups:\n"
      "      - {slot_id: 1, pin_hash: \"" + hash + "\"}\n"
      "  - san: client-2.example\n"
      "    groups:\n"
      "      - {slot_id: 2, pin_hash: \"" + hash + "\"}\n";
  Write("fuzz_agent_config", "full", full);
  Write("fuzz_agent_config", "minimal",
        tls + "state_dir: /tmp\ngroups:\n  - slot_id: 1\n    label: x\n    members:\n"
              "      - {name: a, library: /usr/lib/softhsm/libsofthsm2.so, token_label: t,"
              " pin_env: HSMUX_FUZZ_MEMBER_PIN}\nclients: []\n");
  Write("fuzz_agent_config", "errors",
        "listen: 127.0.0.1:99999\ntls: {ca: relative.pem}\nstate_dir: /nonexistent\n"
        "groups:\n  - slot_id: 1\n    label: \"" + std::string(40, 'L') + "\"\n"
        "    members: [{name: \"bad name\", pin_file: /etc/os-release, pin_env: X}]\n"
        "clients:\n  - {common_name: c, groups: [{slot_id: 9, pin_hash: \"scrypt$1$1$1$a$b\"}]}\n"
        "unknown: 1\n");
  Write("fuzz_agent_config", "yaml-anchors",
        "a: &x [1, 2, {b: *x}]\ngroups: !!map {}\n---\nsecond: doc\n");

  Write("fuzz_module_config", "full",
        "agents: [\"localhost:7443\", \"10.0.0.2:7443\"]\n"
        "tls: {ca: /etc/hsmux/ca.pem, cert: /etc/hsmux/client.pem, key: /etc/hsmux/client.key,"
        " server_name: localhost}\n"
        "slots: [1, 2]\n"
        "timeouts: {call_ms: 10000, connect_ms: 3000}\n"
        "heartbeat_seconds: 10\n"
        "log_file: /tmp/module.log\n"
        "max_message_bytes: 16777216\n"
        "cant_create_threads: ignore\n");
  Write("fuzz_module_config", "minimal",
        "agents: [a:1]\ntls: {ca: c, cert: d, key: e}\nslots: [1]\n");
  Write("fuzz_module_config", "errors",
        "agents: []\ntls: {ca: 1, bogus: 2}\nslots: [-1, x]\ntimeouts: {call_ms: 99999999999}\n"
        "heartbeat_seconds: [1]\nother: 1\n");
}

}  // namespace

int main(int argc, char** argv) {
  g_root = argc > 1 ? argv[1] : "fuzz/corpus";
  mkdir(g_root.c_str(), 0755);
  AttributeSeeds();
  MechanismSeeds();
  AgentSeeds();
  ConfigSeeds();
  std::printf("seeds written under %s\n", g_root.c_str());
  return 0;
}
