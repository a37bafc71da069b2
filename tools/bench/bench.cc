// hsmux-bench: loads any PKCS#11 module, finds a token by label, logs in and
// runs one operation from T threads (one session each) for S seconds.
// Prints ops/s, latency p50/p99 and one machine-readable line:
//   BENCH {"module":...,"op":...,"threads":...,"ops_per_s":...,...}
// Round trips per operation are read through the hsmux module's
// HSMUX_STATS_FILE (docs/decisions/0008-round-trip-counter.md); for other
// modules the field is null.
#include <dlfcn.h>
#include <p11-kit/pkcs11.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

const char* const kOps[] = {"random32",      "sha256",        "ecdsa-p256",
                            "rsa2048-sha256", "hmac-sha256",   "aes256-gcm-1k",
                            "open-close",    "find-by-label-1000", "keystore-load"};

struct Options {
  std::string module, token_label, pin_file, op, stats_file;
  int threads = 1;
  double seconds = 3.0;
  double warmup = 0.5;
  bool token_keys = false;
  int hold_sessions = 0;
  int find_objects = 1000;
  int probe_ops = 10;
};

void Usage() {
  std::fprintf(stderr,
               "usage: hsmux-bench --module PATH --token-label LABEL --pin-file FILE --op OP\n"
               "                   [--threads T=1] [--seconds S=3] [--warmup S=0.5]\n"
               "                   [--token-keys] [--hold-sessions N=0] [--find-objects N=1000]\n"
               "                   [--probe-ops N=10] [--stats-file PATH]\n"
               "  --token-keys      keys are token objects (destroyed at the end), not session\n"
               "                    objects; hsmux replicates token keys to all members\n"
               "  --hold-sessions N keep N extra sessions open during the run\n"
               "ops:");
  for (const char* op : kOps) std::fprintf(stderr, " %s", op);
  std::fprintf(stderr, "\n");
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '\n' || s.back() == '\r' || s.back() == '\0'))
    s.pop_back();
  return s;
}

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char b[8];
      std::snprintf(b, sizeof(b), "\\u%04x", c);
      out += b;
    } else {
      out += c;
    }
  }
  return out;
}

CK_FUNCTION_LIST_PTR p11 = nullptr;
CK_SLOT_ID g_slot = 0;

[[noreturn]] void Die(const char* what, CK_RV rv) {
  std::fprintf(stderr, "hsmux-bench: %s failed: CK_RV 0x%lx\n", what, static_cast<unsigned long>(rv));
  std::exit(3);
}

// Keys and objects made for the run.
struct Setup {
  CK_OBJECT_HANDLE ec_priv = 0, ec_pub = 0, rsa_priv = 0, rsa_pub = 0, hmac = 0, aes = 0;
  std::vector<CK_OBJECT_HANDLE> data;
  std::string tag;
};
Setup g;

CK_BBOOL kTrue = CK_TRUE, kFalse = CK_FALSE;

void GenKeyPair(CK_SESSION_HANDLE s, bool token, bool rsa, const std::string& label,
                CK_OBJECT_HANDLE* pub, CK_OBJECT_HANDLE* priv) {
  static CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
  static CK_BYTE e65537[] = {0x01, 0x00, 0x01};
  CK_ULONG bits = 2048;
  CK_BBOOL tok = token ? CK_TRUE : CK_FALSE;
  std::string id = label;
  CK_MECHANISM mech = {rsa ? CKM_RSA_PKCS_KEY_PAIR_GEN : CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  std::vector<CK_ATTRIBUTE> pubt = {
      {CKA_TOKEN, &tok, sizeof(tok)},
      {CKA_VERIFY, &kTrue, sizeof(kTrue)},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
      {CKA_ID, const_cast<char*>(id.data()), id.size()},
  };
  if (rsa) {
    pubt.push_back({CKA_MODULUS_BITS, &bits, sizeof(bits)});
    pubt.push_back({CKA_PUBLIC_EXPONENT, e65537, sizeof(e65537)});
  } else {
    pubt.push_back({CKA_EC_PARAMS, p256, sizeof(p256)});
  }
  CK_ATTRIBUTE privt[] = {
      {CKA_TOKEN, &tok, sizeof(tok)},
      {CKA_PRIVATE, &kTrue, sizeof(kTrue)},
      {CKA_SENSITIVE, &kTrue, sizeof(kTrue)},
      {CKA_SIGN, &kTrue, sizeof(kTrue)},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
      {CKA_ID, const_cast<char*>(id.data()), id.size()},
  };
  CK_RV rv = p11->C_GenerateKeyPair(s, &mech, pubt.data(), pubt.size(), privt,
                                    sizeof(privt) / sizeof(privt[0]), pub, priv);
  if (rv != CKR_OK) Die(rsa ? "C_GenerateKeyPair(RSA-2048)" : "C_GenerateKeyPair(EC P-256)", rv);
}

CK_OBJECT_HANDLE GenSecret(CK_SESSION_HANDLE s, bool token, bool aes, const std::string& label) {
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE kt = aes ? CKK_AES : CKK_GENERIC_SECRET;
  CK_ULONG len = 32;
  CK_BBOOL tok = token ? CK_TRUE : CK_FALSE;
  CK_MECHANISM mech = {aes ? CKM_AES_KEY_GEN : CKM_GENERIC_SECRET_KEY_GEN, nullptr, 0};
  std::vector<CK_ATTRIBUTE> t = {
      {CKA_CLASS, &cls, sizeof(cls)},
      {CKA_KEY_TYPE, &kt, sizeof(kt)},
      {CKA_TOKEN, &tok, sizeof(tok)},
      {CKA_PRIVATE, &kTrue, sizeof(kTrue)},
      {CKA_SENSITIVE, &kTrue, sizeof(kTrue)},
      {CKA_VALUE_LEN, &len, sizeof(len)},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
  };
  if (aes) {
    t.push_back({CKA_ENCRYPT, &kTrue, sizeof(kTrue)});
    t.push_back({CKA_DECRYPT, &kTrue, sizeof(kTrue)});
  } else {
    t.push_back({CKA_SIGN, &kTrue, sizeof(kTrue)});
    t.push_back({CKA_VERIFY, &kTrue, sizeof(kTrue)});
  }
  CK_OBJECT_HANDLE h = 0;
  CK_RV rv = p11->C_GenerateKey(s, &mech, t.data(), t.size(), &h);
  if (rv != CKR_OK) Die(aes ? "C_GenerateKey(AES-256)" : "C_GenerateKey(generic secret 32)", rv);
  return h;
}

void DoSetup(CK_SESSION_HANDLE s, const Options& o) {
  const std::string& op = o.op;
  g.tag = "hsmux-bench-" + std::to_string(getpid());
  if (op == "ecdsa-p256" || op == "find-by-label-1000" || op == "keystore-load")
    GenKeyPair(s, o.token_keys, false, g.tag + "-ec", &g.ec_pub, &g.ec_priv);
  if (op == "rsa2048-sha256" || op == "keystore-load")
    GenKeyPair(s, o.token_keys, true, g.tag + "-rsa", &g.rsa_pub, &g.rsa_priv);
  if (op == "hmac-sha256") g.hmac = GenSecret(s, o.token_keys, false, g.tag + "-hmac");
  if (op == "aes256-gcm-1k") g.aes = GenSecret(s, o.token_keys, true, g.tag + "-aes");
  if (op == "find-by-label-1000") {
    // The key is found among find_objects objects: the key pair plus data objects.
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_BYTE value[16] = {1, 2, 3};
    for (int i = 0; i + 2 < o.find_objects; ++i) {
      char label[96];
      std::snprintf(label, sizeof(label), "%s-data-%04d", g.tag.c_str(), i);
      CK_ATTRIBUTE t[] = {
          {CKA_CLASS, &cls, sizeof(cls)},
          {CKA_TOKEN, &kFalse, sizeof(kFalse)},
          {CKA_LABEL, label, std::strlen(label)},
          {CKA_VALUE, value, sizeof(value)},
      };
      CK_OBJECT_HANDLE h = 0;
      CK_RV rv = p11->C_CreateObject(s, t, 4, &h);
      if (rv != CKR_OK) Die("C_CreateObject(data)", rv);
      g.data.push_back(h);
    }
  }
}

void DoCleanup(CK_SESSION_HANDLE s) {
  std::vector<CK_OBJECT_HANDLE> all = g.data;
  for (CK_OBJECT_HANDLE h : {g.ec_priv, g.ec_pub, g.rsa_priv, g.rsa_pub, g.hmac, g.aes})
    if (h != 0) all.push_back(h);
  int failed = 0;
  for (CK_OBJECT_HANDLE h : all)
    if (p11->C_DestroyObject(s, h) != CKR_OK) ++failed;
  if (failed) std::fprintf(stderr, "hsmux-bench: %d objects could not be destroyed\n", failed);
}

struct ThreadState {
  int index = 0;
  CK_SESSION_HANDLE session = 0;
  uint64_t counter = 0;
  std::vector<uint32_t> lat_ns;  // measured operations only
  uint64_t errors = 0;
  CK_RV first_error = CKR_OK;
  std::string first_error_where;
};

CK_BYTE g_msg[1024];

#define CHECK(call)                    \
  do {                                 \
    CK_RV rv_ = (call);                \
    if (rv_ != CKR_OK) {               \
      *where = #call;                  \
      return rv_;                      \
    }                                  \
  } while (0)

// Reads attributes as SunPKCS11 does: a length query, then the values.
CK_RV ReadAttrs(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, std::vector<CK_ATTRIBUTE_TYPE> types,
                std::vector<std::vector<CK_BYTE>>* out, const char** where) {
  std::vector<CK_ATTRIBUTE> t;
  for (auto ty : types) t.push_back({ty, nullptr, 0});
  CHECK(p11->C_GetAttributeValue(s, h, t.data(), t.size()));
  out->assign(types.size(), {});
  for (size_t i = 0; i < t.size(); ++i) {
    (*out)[i].resize(t[i].ulValueLen == CK_UNAVAILABLE_INFORMATION ? 0 : t[i].ulValueLen);
    t[i].pValue = (*out)[i].data();
  }
  CHECK(p11->C_GetAttributeValue(s, h, t.data(), t.size()));
  return CKR_OK;
}

CK_RV FindAll(CK_SESSION_HANDLE s, CK_ATTRIBUTE* t, CK_ULONG n, std::vector<CK_OBJECT_HANDLE>* out,
              const char** where) {
  out->clear();
  CHECK(p11->C_FindObjectsInit(s, t, n));
  CK_OBJECT_HANDLE buf[64];
  while (true) {
    CK_ULONG got = 0;
    CK_RV rv = p11->C_FindObjects(s, buf, 64, &got);
    if (rv != CKR_OK) {
      p11->C_FindObjectsFinal(s);
      *where = "C_FindObjects";
      return rv;
    }
    if (got == 0) break;
    out->insert(out->end(), buf, buf + got);
  }
  CHECK(p11->C_FindObjectsFinal(s));
  return CKR_OK;
}

CK_RV KeystoreLoad(CK_SESSION_HANDLE s, const char** where) {
  CK_OBJECT_CLASS priv = CKO_PRIVATE_KEY, pub = CKO_PUBLIC_KEY, cert = CKO_CERTIFICATE;
  CK_ATTRIBUTE tp[] = {{CKA_CLASS, &priv, sizeof(priv)}};
  std::vector<CK_OBJECT_HANDLE> keys, certs, pubs;
  CK_RV rv = FindAll(s, tp, 1, &keys, where);
  if (rv != CKR_OK) return rv;
  if (keys.size() < 2) {
    *where = "keystore-load: fewer than 2 private keys found";
    return CKR_GENERAL_ERROR;
  }
  std::vector<std::vector<CK_BYTE>> v;
  for (CK_OBJECT_HANDLE k : keys) {
    if ((rv = ReadAttrs(s, k, {CKA_LABEL, CKA_ID}, &v, where)) != CKR_OK) return rv;
    std::vector<CK_BYTE> id = v[1];
    CK_KEY_TYPE kt = 0;
    CK_ATTRIBUTE a = {CKA_KEY_TYPE, &kt, sizeof(kt)};
    CHECK(p11->C_GetAttributeValue(s, k, &a, 1));
    if (kt == CKK_RSA) {
      if ((rv = ReadAttrs(s, k, {CKA_MODULUS, CKA_PUBLIC_EXPONENT}, &v, where)) != CKR_OK) return rv;
    } else if (kt == CKK_EC) {
      if ((rv = ReadAttrs(s, k, {CKA_EC_PARAMS}, &v, where)) != CKR_OK) return rv;
      // The point is on the public key: find it by CKA_ID.
      CK_ATTRIBUTE tq[] = {{CKA_CLASS, &pub, sizeof(pub)}, {CKA_ID, id.data(), id.size()}};
      if ((rv = FindAll(s, tq, 2, &pubs, where)) != CKR_OK) return rv;
      for (CK_OBJECT_HANDLE p : pubs)
        if ((rv = ReadAttrs(s, p, {CKA_EC_POINT}, &v, where)) != CKR_OK) return rv;
    }
  }
  CK_ATTRIBUTE tc[] = {{CKA_CLASS, &cert, sizeof(cert)}};
  if ((rv = FindAll(s, tc, 1, &certs, where)) != CKR_OK) return rv;
  for (CK_OBJECT_HANDLE c : certs)
    if ((rv = ReadAttrs(s, c, {CKA_LABEL, CKA_ID, CKA_VALUE}, &v, where)) != CKR_OK) return rv;
  return CKR_OK;
}

CK_RV RunOp(const std::string& op, ThreadState& ts, const char** where) {
  CK_SESSION_HANDLE s = ts.session;
  CK_BYTE out[1100];
  CK_ULONG len = sizeof(out);
  if (op == "random32") {
    CHECK(p11->C_GenerateRandom(s, out, 32));
  } else if (op == "sha256") {
    CK_MECHANISM m = {CKM_SHA256, nullptr, 0};
    CHECK(p11->C_DigestInit(s, &m));
    CHECK(p11->C_Digest(s, g_msg, 1024, out, &len));
    if (len != 32) { *where = "sha256: digest length"; return CKR_GENERAL_ERROR; }
  } else if (op == "ecdsa-p256") {
    CK_MECHANISM m = {CKM_ECDSA, nullptr, 0};
    CHECK(p11->C_SignInit(s, &m, g.ec_priv));
    CHECK(p11->C_Sign(s, g_msg, 32, out, &len));
    if (len != 64) { *where = "ecdsa: signature length"; return CKR_GENERAL_ERROR; }
  } else if (op == "rsa2048-sha256") {
    CK_MECHANISM m = {CKM_SHA256_RSA_PKCS, nullptr, 0};
    CHECK(p11->C_SignInit(s, &m, g.rsa_priv));
    CHECK(p11->C_Sign(s, g_msg, 32, out, &len));
    if (len != 256) { *where = "rsa: signature length"; return CKR_GENERAL_ERROR; }
  } else if (op == "hmac-sha256") {
    CK_MECHANISM m = {CKM_SHA256_HMAC, nullptr, 0};
    CHECK(p11->C_SignInit(s, &m, g.hmac));
    CHECK(p11->C_Sign(s, g_msg, 64, out, &len));
    if (len != 32) { *where = "hmac: mac length"; return CKR_GENERAL_ERROR; }
  } else if (op == "aes256-gcm-1k") {
    CK_BYTE iv[12] = {0};
    uint64_t c = ++ts.counter;
    std::memcpy(iv, &c, sizeof(c));
    iv[8] = static_cast<CK_BYTE>(ts.index);
    iv[9] = static_cast<CK_BYTE>(ts.index >> 8);
    CK_GCM_PARAMS gcm = {iv, sizeof(iv), sizeof(iv) * 8, nullptr, 0, 128};
    CK_MECHANISM m = {CKM_AES_GCM, &gcm, sizeof(gcm)};
    CHECK(p11->C_EncryptInit(s, &m, g.aes));
    CHECK(p11->C_Encrypt(s, g_msg, 1024, out, &len));
    if (len != 1040) { *where = "aes-gcm: ciphertext length"; return CKR_GENERAL_ERROR; }
  } else if (op == "open-close") {
    CK_SESSION_HANDLE h = 0;
    CHECK(p11->C_OpenSession(g_slot, CKF_SERIAL_SESSION, nullptr, nullptr, &h));
    CHECK(p11->C_CloseSession(h));
  } else if (op == "find-by-label-1000") {
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    std::string label = g.tag + "-ec";
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_LABEL, const_cast<char*>(label.data()), label.size()}};
    CK_OBJECT_HANDLE found[4];
    CK_ULONG n = 0;
    CHECK(p11->C_FindObjectsInit(s, t, 2));
    CHECK(p11->C_FindObjects(s, found, 4, &n));
    CHECK(p11->C_FindObjectsFinal(s));
    if (n != 1) { *where = "find: not exactly one key"; return CKR_GENERAL_ERROR; }
  } else if (op == "keystore-load") {
    return KeystoreLoad(s, where);
  }
  return CKR_OK;
}

// The module's round-trip counter (hsmux only): C_GetInfo makes it write the file.
long long ReadRoundTrips(const std::string& path) {
  if (path.empty()) return -1;
  CK_INFO info;
  if (p11->C_GetInfo(&info) != CKR_OK) return -1;
  std::ifstream in(path);
  if (!in) return -1;
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  size_t p = s.find("\"round_trips\":");
  if (p == std::string::npos) return -1;
  return std::atoll(s.c_str() + p + 14);
}

uint32_t Percentile(const std::vector<uint32_t>& sorted, double q) {
  if (sorted.empty()) return 0;
  size_t i = static_cast<size_t>(q * (sorted.size() - 1) + 0.5);
  return sorted[std::min(i, sorted.size() - 1)];
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "hsmux-bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--module") o.module = val();
    else if (a == "--token-label") o.token_label = val();
    else if (a == "--pin-file") o.pin_file = val();
    else if (a == "--op") o.op = val();
    else if (a == "--threads") o.threads = std::atoi(val().c_str());
    else if (a == "--seconds") o.seconds = std::atof(val().c_str());
    else if (a == "--warmup") o.warmup = std::atof(val().c_str());
    else if (a == "--token-keys") o.token_keys = true;
    else if (a == "--hold-sessions") o.hold_sessions = std::atoi(val().c_str());
    else if (a == "--find-objects") o.find_objects = std::atoi(val().c_str());
    else if (a == "--probe-ops") o.probe_ops = std::atoi(val().c_str());
    else if (a == "--stats-file") o.stats_file = val();
    else if (a == "-h" || a == "--help") { Usage(); return 0; }
    else { std::fprintf(stderr, "hsmux-bench: unknown argument %s\n", a.c_str()); Usage(); return 2; }
  }
  bool known = false;
  for (const char* op : kOps) known |= o.op == op;
  if (o.module.empty() || o.token_label.empty() || o.pin_file.empty() || !known || o.threads < 1 ||
      o.seconds <= 0 || o.warmup < 0 || o.hold_sessions < 0 || o.find_objects < 3) {
    Usage();
    return 2;
  }
  std::string pin;
  {
    std::ifstream in(o.pin_file);
    if (!in || !std::getline(in, pin)) {
      std::fprintf(stderr, "hsmux-bench: cannot read %s\n", o.pin_file.c_str());
      return 2;
    }
    pin = Trim(pin);
  }
  // The hsmux module reports its round trips here (others ignore it).
  bool own_stats = false;
  if (o.stats_file.empty()) {
    const char* env = std::getenv("HSMUX_STATS_FILE");
    if (env != nullptr && env[0] != '\0') {
      o.stats_file = env;
    } else {
      o.stats_file = "/tmp/hsmux-bench-stats-" + std::to_string(getpid()) + ".json";
      own_stats = true;
    }
  }
  setenv("HSMUX_STATS_FILE", o.stats_file.c_str(), 1);
  std::remove(o.stats_file.c_str());

  void* lib = dlopen(o.module.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    std::fprintf(stderr, "hsmux-bench: dlopen %s: %s\n", o.module.c_str(), dlerror());
    return 3;
  }
  auto get_list = reinterpret_cast<CK_C_GetFunctionList>(dlsym(lib, "C_GetFunctionList"));
  if (get_list == nullptr) {
    std::fprintf(stderr, "hsmux-bench: no C_GetFunctionList in %s\n", o.module.c_str());
    return 3;
  }
  CK_RV rv = get_list(&p11);
  if (rv != CKR_OK) Die("C_GetFunctionList", rv);
  CK_C_INITIALIZE_ARGS init_args = {};
  init_args.flags = CKF_OS_LOCKING_OK;
  if ((rv = p11->C_Initialize(&init_args)) != CKR_OK) Die("C_Initialize", rv);

  // The slot whose token has the label.
  CK_ULONG nslots = 0;
  if ((rv = p11->C_GetSlotList(CK_TRUE, nullptr, &nslots)) != CKR_OK) Die("C_GetSlotList", rv);
  std::vector<CK_SLOT_ID> slots(nslots);
  if ((rv = p11->C_GetSlotList(CK_TRUE, slots.data(), &nslots)) != CKR_OK) Die("C_GetSlotList", rv);
  bool found = false;
  for (CK_ULONG i = 0; i < nslots && !found; ++i) {
    CK_TOKEN_INFO ti;
    if (p11->C_GetTokenInfo(slots[i], &ti) != CKR_OK) continue;
    std::string label(reinterpret_cast<char*>(ti.label), sizeof(ti.label));
    if (Trim(label) == o.token_label) {
      g_slot = slots[i];
      found = true;
    }
  }
  if (!found) {
    std::fprintf(stderr, "hsmux-bench: no token labelled '%s'\n", o.token_label.c_str());
    return 3;
  }
  const CK_FLAGS rw = CKF_SERIAL_SESSION | CKF_RW_SESSION;
  CK_SESSION_HANDLE main_session = 0;
  if ((rv = p11->C_OpenSession(g_slot, rw, nullptr, nullptr, &main_session)) != CKR_OK)
    Die("C_OpenSession", rv);
  rv = p11->C_Login(main_session, CKU_USER, reinterpret_cast<CK_UTF8CHAR_PTR>(pin.data()), pin.size());
  if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) Die("C_Login", rv);
  std::fill(pin.begin(), pin.end(), '\0');
  for (size_t i = 0; i < sizeof(g_msg); ++i) g_msg[i] = static_cast<CK_BYTE>(i * 7 + 1);

  const auto setup_start = Clock::now();
  DoSetup(main_session, o);
  const double setup_s = std::chrono::duration<double>(Clock::now() - setup_start).count();

  std::vector<CK_SESSION_HANDLE> held;
  for (int i = 0; i < o.hold_sessions; ++i) {
    CK_SESSION_HANDLE h = 0;
    if ((rv = p11->C_OpenSession(g_slot, CKF_SERIAL_SESSION, nullptr, nullptr, &h)) != CKR_OK)
      Die("C_OpenSession (--hold-sessions)", rv);
    held.push_back(h);
  }

  std::vector<ThreadState> ts(o.threads);
  for (int i = 0; i < o.threads; ++i) {
    ts[i].index = i;
    ts[i].lat_ns.reserve(1 << 16);
    if ((rv = p11->C_OpenSession(g_slot, CKF_SERIAL_SESSION, nullptr, nullptr, &ts[i].session)) != CKR_OK)
      Die("C_OpenSession (thread)", rv);
  }

  // Round trips per operation: a few operations from one thread after a warm one.
  double rt_per_op = -1;
  {
    const char* where = "";
    ThreadState probe;
    probe.session = ts[0].session;
    probe.index = 9999;
    if ((rv = RunOp(o.op, probe, &where)) != CKR_OK) {
      std::fprintf(stderr, "hsmux-bench: first %s failed in %s: CK_RV 0x%lx\n", o.op.c_str(), where,
                   static_cast<unsigned long>(rv));
      return 1;
    }
    long long before = ReadRoundTrips(o.stats_file);
    int n = 0;
    for (; n < o.probe_ops; ++n)
      if (RunOp(o.op, probe, &where) != CKR_OK) break;
    long long after = ReadRoundTrips(o.stats_file);
    if (before >= 0 && after >= before && n > 0) rt_per_op = double(after - before) / n;
  }

  // 0 warm-up, 1 measuring, 2 stop.
  std::atomic<int> phase{0};
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < o.threads; ++i) {
    threads.emplace_back([&, i] {
      ThreadState& t = ts[i];
      ready.fetch_add(1);
      while (true) {
        const int p0 = phase.load(std::memory_order_acquire);
        if (p0 == 2) break;
        const char* where = "";
        const auto t0 = Clock::now();
        CK_RV r = RunOp(o.op, t, &where);
        const auto t1 = Clock::now();
        const int p1 = phase.load(std::memory_order_acquire);
        if (r != CKR_OK) {
          if (t.errors++ == 0) {
            t.first_error = r;
            t.first_error_where = where;
          }
          continue;
        }
        if (p0 == 1 && p1 == 1) {
          auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count();
          t.lat_ns.push_back(static_cast<uint32_t>(std::min<int64_t>(ns, UINT32_MAX)));
        }
      }
    });
  }
  while (ready.load() < o.threads) std::this_thread::yield();
  std::this_thread::sleep_for(std::chrono::duration<double>(o.warmup));
  const auto m0 = Clock::now();
  phase.store(1, std::memory_order_release);
  std::this_thread::sleep_for(std::chrono::duration<double>(o.seconds));
  phase.store(2, std::memory_order_release);
  const auto m1 = Clock::now();
  for (auto& th : threads) th.join();
  const double elapsed = std::chrono::duration<double>(m1 - m0).count();

  std::vector<uint32_t> all;
  uint64_t errors = 0;
  CK_RV first_error = CKR_OK;
  std::string first_where;
  for (auto& t : ts) {
    all.insert(all.end(), t.lat_ns.begin(), t.lat_ns.end());
    if (t.errors && !errors) {
      first_error = t.first_error;
      first_where = t.first_error_where;
    }
    errors += t.errors;
    p11->C_CloseSession(t.session);
  }
  for (CK_SESSION_HANDLE h : held) p11->C_CloseSession(h);
  std::sort(all.begin(), all.end());
  double mean_us = 0;
  for (uint32_t v : all) mean_us += v / 1000.0;
  if (!all.empty()) mean_us /= all.size();
  const double ops_per_s = all.size() / elapsed;
  const double p50 = Percentile(all, 0.50) / 1000.0, p99 = Percentile(all, 0.99) / 1000.0;

  DoCleanup(main_session);
  p11->C_Logout(main_session);
  p11->C_CloseSession(main_session);
  p11->C_Finalize(nullptr);
  if (own_stats) std::remove(o.stats_file.c_str());

  std::printf("%s  %-20s threads=%-3d ops=%-8zu %10.1f ops/s  p50 %8.1f us  p99 %8.1f us  errors %llu",
              o.module.c_str(), o.op.c_str(), o.threads, all.size(), ops_per_s, p50, p99,
              static_cast<unsigned long long>(errors));
  if (rt_per_op >= 0) std::printf("  round trips/op %.2f", rt_per_op);
  std::printf("\n");
  if (errors) {
    std::printf("first error: %s -> CK_RV 0x%lx\n", first_where.c_str(),
                static_cast<unsigned long>(first_error));
  }
  char rt[32];
  if (rt_per_op >= 0) std::snprintf(rt, sizeof(rt), "%.2f", rt_per_op);
  else std::snprintf(rt, sizeof(rt), "null");
  std::printf(
      "BENCH {\"module\":\"%s\",\"token\":\"%s\",\"op\":\"%s\",\"threads\":%d,\"seconds\":%.2f,"
      "\"ops\":%zu,\"errors\":%llu,\"ops_per_s\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,"
      "\"mean_us\":%.1f,\"round_trips_per_op\":%s,\"token_keys\":%s,\"hold_sessions\":%d,"
      "\"setup_s\":%.2f}\n",
      JsonEscape(o.module).c_str(), JsonEscape(o.token_label).c_str(), o.op.c_str(), o.threads,
      elapsed, all.size(), static_cast<unsigned long long>(errors), ops_per_s, p50, p99, mean_us, rt,
      o.token_keys ? "true" : "false", o.hold_sessions, setup_s);
  std::fflush(stdout);
  return (errors == 0 && !all.empty()) ? 0 : 1;
}
