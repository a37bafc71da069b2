// Helpers for the group e2e tests (tests/e2e/group_*_test.cc): Cryptoki
// calls that work on any function list (the hsmux module or a member), direct
// access to the member tokens through SoftHSM, the agent's testwrap stats,
// restarting the agent, and helper processes (the test binary re-executed in
// a helper mode; see RunHelper).
#pragma once

#include <sys/types.h>

#include <csignal>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "wire/cryptoki.h"

namespace hsmux::grouptest {

using Bytes = std::vector<CK_BYTE>;

std::string Env(const char* name);
std::string ReadFile(const std::string& path);
std::string FirstLine(const std::string& path);
std::string Hex(const Bytes& b);
std::string RvStr(CK_RV rv);
Bytes ToBytes(const std::string& s);
Bytes RandomBytes(size_t n);
// A label unique to this process and call.
std::string Unique(const std::string& stem);
// The build dir (derived from HSMUX_MODULE).
std::string BuildDir();

// The hsmux slot served by the demo config.
inline constexpr CK_SLOT_ID kSlot = 1;
inline constexpr char kPendingPrefix[] = "hsmux-pending-";
inline constexpr char kReplicationLabel[] = "hsmux-replication-key";
inline const char* const kMembers[3] = {"member-a", "member-b", "member-c"};

// Builds a CK_ATTRIBUTE array; owns every value.
class Attrs {
 public:
  Attrs() = default;
  Attrs(const Attrs&) = delete;
  Attrs& operator=(const Attrs&) = delete;
  Attrs& Bool(CK_ATTRIBUTE_TYPE t, bool v);
  Attrs& Ulong(CK_ATTRIBUTE_TYPE t, CK_ULONG v);
  Attrs& Str(CK_ATTRIBUTE_TYPE t, const std::string& v);
  Attrs& Raw(CK_ATTRIBUTE_TYPE t, const Bytes& v);
  CK_ATTRIBUTE* data() { return attrs_.data(); }
  CK_ULONG size() const { return static_cast<CK_ULONG>(attrs_.size()); }

 private:
  std::deque<Bytes> store_;  // stable addresses
  std::vector<CK_ATTRIBUTE> attrs_;
};

// ---- Calls on any function list ----
std::vector<CK_OBJECT_HANDLE> Find(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, Attrs& tmpl,
                                   CK_RV* rv_out = nullptr);
std::vector<CK_OBJECT_HANDLE> FindLabel(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s,
                                        const std::string& label);
std::vector<CK_OBJECT_HANDLE> FindLabelClass(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s,
                                             const std::string& label, CK_OBJECT_CLASS cls);
// Reads one attribute (length query then value); empty and *rv on error.
Bytes Attr(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t,
           CK_RV* rv = nullptr);
std::optional<bool> AttrBool(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o,
                             CK_ATTRIBUTE_TYPE t);
std::string AttrStr(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o,
                    CK_ATTRIBUTE_TYPE t);
// One-shot sign/MAC; empty and *rv on error.
Bytes Sign(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, CK_MECHANISM_TYPE mech, CK_OBJECT_HANDLE key,
           const Bytes& data, CK_RV* rv = nullptr);
CK_RV Verify(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, CK_MECHANISM_TYPE mech, CK_OBJECT_HANDLE key,
             const Bytes& data, const Bytes& sig);
Bytes EncryptEcb(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, const Bytes& data,
                 CK_RV* rv = nullptr);
CK_RV Login(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, const std::string& pin);

// DER of the prime256v1 OID (CKA_EC_PARAMS).
Bytes P256Params();

// ---- The hsmux module ----
CK_FUNCTION_LIST* Module();  // loads HSMUX_MODULE (not initialised)
std::string ClientPin();     // client-1's PIN
// Opens a R/W session on the hsmux slot, logged in when `pin` is non-empty.
CK_SESSION_HANDLE OpenSession(CK_FUNCTION_LIST* p, const std::string& pin, CK_RV* rv = nullptr);

struct Pair {
  CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE priv = CK_INVALID_HANDLE;
};
// Token (or session) keys made through `p`; labels and IDs as given.
CK_RV GenEc(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, const std::string& label, const Bytes& id,
            bool token, Pair* out);
CK_RV GenRsa(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, const std::string& label, const Bytes& id,
             Pair* out);
CK_RV GenAes(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, const std::string& label, const Bytes& id,
             bool token, CK_OBJECT_HANDLE* out);
CK_RV GenHmac(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, const std::string& label, const Bytes& id,
              CK_OBJECT_HANDLE* out);
// What a secret key made by CreateTokenSecret may do. Keys are sensitive and
// sealed unless `extractable` (then neither, so that C_DigestKey and
// C_WrapKey take them).
struct SecretUse {
  bool encrypt = false;  // CKA_ENCRYPT and CKA_DECRYPT
  bool sign = false;     // CKA_SIGN and CKA_VERIFY
  bool wrap = false;     // CKA_WRAP and CKA_UNWRAP
  bool derive = false;
  bool extractable = false;
};
// A private token secret key from a known value, made through `p`
// (replicated); label and CKA_ID `label`. CK_INVALID_HANDLE and *rv on error.
CK_OBJECT_HANDLE CreateTokenSecret(CK_FUNCTION_LIST* p, CK_SESSION_HANDLE s, CK_KEY_TYPE kt,
                                   const Bytes& value, const SecretUse& use,
                                   const std::string& label, CK_RV* rv = nullptr);

// ---- OpenSSL checks ----
// CKA_EC_POINT (DER OCTET STRING or raw) -> uncompressed point.
Bytes EcPointOctets(const Bytes& ec_point_attr);
// Verifies a raw r||s P-256 ECDSA signature over `digest` with `point`.
bool OpenSslVerifyEcdsa(const Bytes& point, const Bytes& digest, const Bytes& sig);
// Verifies a CKM_SHA256_RSA_PKCS signature.
bool OpenSslVerifyRsaSha256(const Bytes& modulus, const Bytes& exponent, const Bytes& data,
                            const Bytes& sig);
// A self-signed P-256 certificate (DER) and its subject (DER).
void MakeCertificate(const std::string& cn, Bytes* der, Bytes* subject);
Bytes Sha256(const Bytes& data);

// ---- The members, directly through SoftHSM (SOFTHSM2_CONF) ----
class Members {
 public:
  // Loads SoftHSM, logs in to member-a/b/c with secrets/member-pin. Once.
  static Members& Get();
  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  CK_FUNCTION_LIST* fl() const { return fl_; }
  CK_SESSION_HANDLE s(size_t i) const { return sessions_[i]; }
  std::vector<CK_OBJECT_HANDLE> Label(size_t i, const std::string& label) {
    return FindLabel(fl_, sessions_[i], label);
  }
  std::vector<CK_OBJECT_HANDLE> LabelClass(size_t i, const std::string& label,
                                           CK_OBJECT_CLASS cls) {
    return FindLabelClass(fl_, sessions_[i], label, cls);
  }
  // Labels of every token object on member i.
  std::vector<std::string> AllLabels(size_t i);
  // Labels starting with the pending prefix, on member i.
  std::vector<std::string> Pending(size_t i);
  // Creates a token secret key from a value on member i.
  CK_RV CreateSecret(size_t i, CK_KEY_TYPE kt, const std::string& label, const Bytes& id,
                     const Bytes& value, bool encrypt, bool sign, bool derive,
                     CK_OBJECT_HANDLE* out);

 private:
  Members();
  std::string error_;
  CK_FUNCTION_LIST* fl_ = nullptr;
  CK_SESSION_HANDLE sessions_[3] = {CK_INVALID_HANDLE, CK_INVALID_HANDLE, CK_INVALID_HANDLE};
};

// ---- testwrap stats of the agent's members ----
struct Stats {
  bool ok = false;
  std::string raw;
  uint64_t Get(const std::string& key) const;   // top-level number, 0 if absent
  uint64_t Calls(const std::string& fn) const;  // calls.<fn>, 0 if absent
};
Stats ReadStats(const std::string& member_label);
// hsmux-testwrap-ctl DIR LABEL args...; true on exit 0.
bool TestwrapCtl(const std::string& member_label, const std::vector<std::string>& args);
// Counts of `fn` (a C_* name) on every member (index into kMembers) now,
// after the wrapper has written out earlier calls (it does within ~20 ms).
std::map<size_t, uint64_t> CallCounts(const std::string& fn);
// The members whose count of `fn` grew since `before`: polls the stats until
// at least `at_least` did (or 3 s passed), then lets late writes settle and
// reads once more.
std::set<size_t> GrewOn(const std::string& fn, const std::map<size_t, uint64_t>& before,
                        size_t at_least = 1);
// The one member whose count of `fn` grew since `before`; -1 if none or
// several did.
int OnlyGrew(const std::string& fn, const std::map<size_t, uint64_t>& before);
// Calls answered by an injected fault, on every member now.
std::map<size_t, uint64_t> InjectedFailures();

// ---- The agent's admin CLI (hsmuxctl ... --config $HSMUX_TEST_DIR/hsmuxd.yaml) ----
// Runs `hsmuxctl ARGS --config ...`; exit status, output in *out.
int Hsmuxctl(const std::string& args, std::string* out);
// One member line of `hsmuxctl status` ("  member a: healthy, calls N, ...").
struct MemberStatus {
  std::string state;  // "healthy", "OUT" or "DRAINED"
  uint64_t calls = 0;
  uint64_t failovers = 0;
  uint64_t replays = 0;  // multi-part operations replayed onto the member
  std::string line;
};
// The members of the demo group by name ("a", "b", "c"); empty on error.
std::map<std::string, MemberStatus> GroupStatus(std::string* raw = nullptr);
// Polls `hsmuxctl status` until every member is healthy (true) or the time is up.
bool WaitAllHealthy(int timeout_ms, std::string* last_raw = nullptr);
// `failovers` of member i (index into kMembers) in `hsmuxctl status`.
uint64_t Failovers(size_t member);
// Polls `hsmuxctl status` until member `name` ("a", "b", "c") is in `state`.
bool WaitMemberState(const std::string& name, const std::string& state, int timeout_ms);

// ---- Processes ----
// Runs a shell command, returns exit status; stdout+stderr into *out.
int RunCommand(const std::string& cmd, std::string* out);
// True when `pid` is gone or a zombie (the runner, not us, reaps the first agent).
bool ProcessGone(pid_t pid);
// Sends `sig` to pid and waits (<= timeout) until it is gone.
bool KillAndWait(pid_t pid, int sig, int timeout_ms);

// An agent started by the test with $HSMUX_AGENT_START; stopped (SIGTERM) by
// the destructor. Also dies with the test process (PR_SET_PDEATHSIG).
class AgentProcess {
 public:
  explicit AgentProcess(const std::string& log_name);
  ~AgentProcess();
  // Starts and waits for "hsmuxd: serving on" in the log.
  bool Start(int timeout_ms = 60000);
  bool Stop(int sig = SIGTERM);
  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return log_; }

 private:
  std::string log_;
  pid_t pid_ = -1;
};

// A child process running this binary with `--helper ARGS...`, with `env`
// added; its stdin and stdout are pipes to us.
struct Child {
  pid_t pid = -1;
  int in_fd = -1;   // write end of the child's stdin
  int out_fd = -1;  // read end of the child's stdout
};
Child SpawnHelper(const std::vector<std::string>& args,
                  const std::map<std::string, std::string>& env = {});
// Reads one line from the child's stdout (without '\n'); nullopt at EOF/timeout.
std::optional<std::string> ReadLine(Child& c, int timeout_ms);
// Reads all remaining output until EOF (or timeout).
std::string ReadAll(Child& c, int timeout_ms);
// Waits for the child; exit status, or -1 on timeout (then it is killed).
int WaitChild(Child& c, int timeout_ms);

// A module config like module.yaml with another client identity.
std::string WriteModuleConfig(const std::string& name, const std::string& cert,
                              const std::string& key);

// Helper modes (argv: --helper MODE ARGS...), run by main() in group_util.cc:
//   sign LABEL SESSIONS SIGNS THREADS : opens SESSIONS logged-in sessions,
//       signs SIGNS times with each (ECDSA on the private key LABEL, checked
//       with OpenSSL), using THREADS threads; prints "RESULT ok=N fail=M rv=..."
//   stall LABEL SESSIONS : opens SESSIONS sessions, C_SignInit on each,
//       prints "READY", waits for EOF on stdin, then signs once on each;
//       prints "RESULT ok=N fail=M rv=..."
//   find LABEL PINFILE HANDLE : logs in, prints "COUNT n" (objects with
//       LABEL) and "HANDLE_RV rv" (C_GetAttributeValue on HANDLE)
//   genaes LABEL : generates a token AES key; prints "RV rv"
int RunHelper(int argc, char** argv);

}  // namespace hsmux::grouptest
