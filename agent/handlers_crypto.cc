// Cryptographic operations with the spec's state rules kept by the agent
// (DESIGN §2 "Exact Cryptoki, even where a member is not"): an error other
// than CKR_BUFFER_TOO_SMALL, or a length query, ends the operation; mixing
// single-part and multi-part calls is refused with CKR_OPERATION_ACTIVE; a
// bad key is CKR_KEY_HANDLE_INVALID.
//
// C_*Init is checked against the registry (key, usage attribute, key type,
// mechanism) and answered without touching a member (DESIGN §4): a client
// that calls C_SignInit and stalls holds nothing. The member's Init runs
// together with the first call that carries data; from then on the
// operation holds one member session until it ends. A session that saw an
// error is closed, never pooled, because members (SoftHSM) may leave the
// operation active after errors.
#include <algorithm>
#include <memory>
#include <optional>
#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent.h"
#include "dispatch.h"
#include "log.h"
#include "object_reader.h"
#include "wire/function_table.h"
#include "wire/mechanism_codec.h"
#include "wire/operations.h"

namespace hsmux::agent {
namespace {

using wire::F;

enum class Shape {
  kInit,       // (session, mechanism, key)
  kInitNoKey,  // (session, mechanism): C_DigestInit
  kInOut,      // (session, in, out): single-part calls and output updates
  kIn,         // (session, in): input-only updates, C_VerifyFinal
  kOut,        // (session, out): finals
  kInIn,       // (session, data, signature): C_Verify
  kKey,        // (session, key): C_DigestKey
};

using wire::Part;

// The operation role (wire/operations.h) and the argument shape.
struct OpSpec {
  Shape shape;
  Part part;
  OpKind kind;
  std::optional<OpKind> second;  // dual-function updates
};

using InOutFn = CK_C_Encrypt CK_FUNCTION_LIST::*;
using InFn = CK_C_SignUpdate CK_FUNCTION_LIST::*;
using OutFn = CK_C_EncryptFinal CK_FUNCTION_LIST::*;
using InitFn = CK_C_EncryptInit CK_FUNCTION_LIST::*;

Shape ShapeOf(F f, Part part) {
  switch (f) {
    case F::kDigestInit:
      return Shape::kInitNoKey;
    case F::kVerify:
      return Shape::kInIn;
    case F::kDigestKey:
      return Shape::kKey;
    case F::kDigestUpdate:
    case F::kSignUpdate:
    case F::kVerifyUpdate:
    case F::kVerifyFinal:
      return Shape::kIn;
    default:
      break;
  }
  switch (part) {
    case Part::kInit:
      return Shape::kInit;
    case Part::kFinal:
      return Shape::kOut;
    default:
      return Shape::kInOut;
  }
}

std::optional<OpSpec> SpecOf(F f) {
  const std::optional<wire::OpRole> role = wire::OperationOf(f);
  if (!role.has_value()) return std::nullopt;
  return OpSpec{ShapeOf(f, role->part), role->part, role->kind, role->second};
}

InitFn InitFnOf(F f) {
  switch (f) {
    case F::kEncryptInit:
      return &CK_FUNCTION_LIST::C_EncryptInit;
    case F::kDecryptInit:
      return &CK_FUNCTION_LIST::C_DecryptInit;
    case F::kSignInit:
      return &CK_FUNCTION_LIST::C_SignInit;
    case F::kVerifyInit:
      return &CK_FUNCTION_LIST::C_VerifyInit;
    case F::kSignRecoverInit:
      return &CK_FUNCTION_LIST::C_SignRecoverInit;
    default:
      return &CK_FUNCTION_LIST::C_VerifyRecoverInit;
  }
}

InOutFn InOutFnOf(F f) {
  switch (f) {
    case F::kEncrypt:
      return &CK_FUNCTION_LIST::C_Encrypt;
    case F::kDecrypt:
      return &CK_FUNCTION_LIST::C_Decrypt;
    case F::kDigest:
      return &CK_FUNCTION_LIST::C_Digest;
    case F::kSign:
      return &CK_FUNCTION_LIST::C_Sign;
    case F::kSignRecover:
      return &CK_FUNCTION_LIST::C_SignRecover;
    case F::kVerifyRecover:
      return &CK_FUNCTION_LIST::C_VerifyRecover;
    case F::kEncryptUpdate:
      return &CK_FUNCTION_LIST::C_EncryptUpdate;
    case F::kDecryptUpdate:
      return &CK_FUNCTION_LIST::C_DecryptUpdate;
    case F::kDigestEncryptUpdate:
      return &CK_FUNCTION_LIST::C_DigestEncryptUpdate;
    case F::kDecryptDigestUpdate:
      return &CK_FUNCTION_LIST::C_DecryptDigestUpdate;
    case F::kSignEncryptUpdate:
      return &CK_FUNCTION_LIST::C_SignEncryptUpdate;
    default:
      return &CK_FUNCTION_LIST::C_DecryptVerifyUpdate;
  }
}

InFn InFnOf(F f) {
  switch (f) {
    case F::kDigestUpdate:
      return &CK_FUNCTION_LIST::C_DigestUpdate;
    case F::kSignUpdate:
      return &CK_FUNCTION_LIST::C_SignUpdate;
    case F::kVerifyUpdate:
      return &CK_FUNCTION_LIST::C_VerifyUpdate;
    default:
      return &CK_FUNCTION_LIST::C_VerifyFinal;
  }
}

OutFn OutFnOf(F f) {
  switch (f) {
    case F::kEncryptFinal:
      return &CK_FUNCTION_LIST::C_EncryptFinal;
    case F::kDecryptFinal:
      return &CK_FUNCTION_LIST::C_DecryptFinal;
    case F::kDigestFinal:
      return &CK_FUNCTION_LIST::C_DigestFinal;
    default:
      return &CK_FUNCTION_LIST::C_SignFinal;
  }
}

size_t Index(OpKind k) { return static_cast<size_t>(k); }

// Ends every operation of the session and gives its member session back;
// `dirty` closes it (the member may still hold an operation).
void EndAll(ClientSession& s, bool dirty) {
  s.active = {};
  s.mode = {};
  s.pending = {};
  s.inits = {};
  for (auto& r : s.replay) r.clear();
  if (s.op_member >= 0) {
    s.group->member(s.op_member)->Release(s.op_session, dirty);
    s.op_member = -1;
    s.op_session = CK_INVALID_HANDLE;
  }
}

void EndOne(ClientSession& s, OpKind k) {
  s.active[Index(k)] = false;
  s.mode[Index(k)] = OpMode::kNone;
  s.pending[Index(k)].reset();
  s.inits[Index(k)].reset();
  s.replay[Index(k)].clear();
  if (!s.AnyActive()) EndAll(s, /*dirty=*/false);
}

CK_FLAGS MechanismFlagFor(OpKind k) {
  switch (k) {
    case OpKind::kEncrypt:
      return CKF_ENCRYPT;
    case OpKind::kDecrypt:
      return CKF_DECRYPT;
    case OpKind::kDigest:
      return CKF_DIGEST;
    case OpKind::kSign:
      return CKF_SIGN;
    case OpKind::kVerify:
      return CKF_VERIFY;
    case OpKind::kSignRecover:
      return CKF_SIGN_RECOVER;
    case OpKind::kVerifyRecover:
      return CKF_VERIFY_RECOVER;
  }
  return 0;
}

CK_ATTRIBUTE_TYPE UsageFor(OpKind k) {
  switch (k) {
    case OpKind::kEncrypt:
      return CKA_ENCRYPT;
    case OpKind::kDecrypt:
      return CKA_DECRYPT;
    case OpKind::kSign:
      return CKA_SIGN;
    case OpKind::kVerify:
      return CKA_VERIFY;
    case OpKind::kSignRecover:
      return CKA_SIGN_RECOVER;
    case OpKind::kVerifyRecover:
      return CKA_VERIFY_RECOVER;
    default:
      return 0;
  }
}

// The key types a mechanism works with; empty: not checked here (the
// member decides when the operation runs).
std::vector<CK_KEY_TYPE> KeyTypesFor(CK_MECHANISM_TYPE m) {
  switch (m) {
    case CKM_RSA_PKCS:
    case CKM_RSA_X_509:
    case CKM_RSA_PKCS_OAEP:
    case CKM_RSA_PKCS_PSS:
    case CKM_MD5_RSA_PKCS:
    case CKM_SHA1_RSA_PKCS:
    case CKM_SHA224_RSA_PKCS:
    case CKM_SHA256_RSA_PKCS:
    case CKM_SHA384_RSA_PKCS:
    case CKM_SHA512_RSA_PKCS:
    case CKM_SHA1_RSA_PKCS_PSS:
    case CKM_SHA224_RSA_PKCS_PSS:
    case CKM_SHA256_RSA_PKCS_PSS:
    case CKM_SHA384_RSA_PKCS_PSS:
    case CKM_SHA512_RSA_PKCS_PSS:
      return {CKK_RSA};
    case CKM_ECDSA:
    case CKM_ECDSA_SHA1:
    case CKM_ECDSA_SHA224:
    case CKM_ECDSA_SHA256:
    case CKM_ECDSA_SHA384:
    case CKM_ECDSA_SHA512:
      return {CKK_EC};
    case CKM_AES_ECB:
    case CKM_AES_CBC:
    case CKM_AES_CBC_PAD:
    case CKM_AES_CTR:
    case CKM_AES_GCM:
    case CKM_AES_CMAC:
    case CKM_AES_CMAC_GENERAL:
      return {CKK_AES};
    default:
      return {};
  }
}

struct KeyFacts {
  CK_KEY_TYPE key_type = 0;
  bool known = false;
  std::optional<bool> usage;
  // CKA_ALLOWED_MECHANISMS; empty: any.
  std::vector<CK_MECHANISM_TYPE> allowed;
};

// What Init's errors depend on, from the registry (token keys) or one read
// on the member (session keys).
absl::StatusOr<KeyFacts> FactsOf(CallContext& ctx, ClientSession& s, const ObjectRef& ref,
                                 CK_ATTRIBUTE_TYPE usage) {
  KeyFacts facts;
  if (ref.logical_id != 0) {
    auto obj = s.group->registry().Get(ref.logical_id);
    if (obj == nullptr) return wire::CkError(CKR_KEY_HANDLE_INVALID, "key destroyed");
    facts.key_type = obj->snapshot.key_type;
    facts.known = true;
    if (usage != 0) {
      const v1::Attribute* a = FindAttribute(obj->snapshot.attributes, usage);
      facts.usage = a != nullptr && a->value_case() == v1::Attribute::kBoolean && a->boolean();
    }
    if (const v1::Attribute* a = FindAttribute(obj->snapshot.attributes, CKA_ALLOWED_MECHANISMS)) {
      for (uint64_t m : a->mechanisms().values()) facts.allowed.push_back(m);
    }
    return facts;
  }
  Member* m = s.group->member(ref.member);
  HSMUX_ASSIGN_OR_RETURN(CK_SESSION_HANDLE h, m->Acquire());
  PooledSession ps(m, h);
  CK_KEY_TYPE kt = 0;
  CK_BBOOL use = CK_FALSE;
  CK_ATTRIBUTE attrs[] = {{CKA_KEY_TYPE, &kt, sizeof(kt)}, {usage, &use, sizeof(use)}};
  CK_RV rv = m->fn()->C_GetAttributeValue(h, ref.member_handle, attrs, usage != 0 ? 2 : 1);
  if (rv == CKR_OBJECT_HANDLE_INVALID) return wire::CkError(CKR_KEY_HANDLE_INVALID, "key gone");
  if (rv == CKR_OK) {
    facts.key_type = kt;
    facts.known = true;
    if (usage != 0) facts.usage = use != CK_FALSE;
  } else if (rv == CKR_ATTRIBUTE_TYPE_INVALID) {
    // Not a key at all (a data object or certificate).
    return wire::CkError(CKR_KEY_TYPE_INCONSISTENT, "not a key");
  }
  CK_ATTRIBUTE allowed = {CKA_ALLOWED_MECHANISMS, nullptr, 0};
  if (m->fn()->C_GetAttributeValue(h, ref.member_handle, &allowed, 1) == CKR_OK &&
      allowed.ulValueLen != CK_UNAVAILABLE_INFORMATION && allowed.ulValueLen > 0) {
    facts.allowed.resize(allowed.ulValueLen / sizeof(CK_MECHANISM_TYPE));
    allowed.pValue = facts.allowed.data();
    if (m->fn()->C_GetAttributeValue(h, ref.member_handle, &allowed, 1) != CKR_OK) {
      facts.allowed.clear();
    }
  }
  return facts;
}

// Mechanisms whose parameter the spec requires (an IV, PSS/OAEP
// parameters, a MAC length): without one, Init answers
// CKR_MECHANISM_PARAM_INVALID (SoftHSM says CKR_ARGUMENTS_BAD).
bool RequiresParameter(CK_MECHANISM_TYPE m) {
  switch (m) {
    case CKM_AES_CBC:
    case CKM_AES_CBC_PAD:
    case CKM_AES_CTR:
    case CKM_AES_GCM:
    case CKM_DES_CBC:
    case CKM_DES_CBC_PAD:
    case CKM_DES3_CBC:
    case CKM_DES3_CBC_PAD:
    case CKM_RSA_PKCS_PSS:
    case CKM_SHA1_RSA_PKCS_PSS:
    case CKM_SHA224_RSA_PKCS_PSS:
    case CKM_SHA256_RSA_PKCS_PSS:
    case CKM_SHA384_RSA_PKCS_PSS:
    case CKM_SHA512_RSA_PKCS_PSS:
    case CKM_RSA_PKCS_OAEP:
    case CKM_SHA_1_HMAC_GENERAL:
    case CKM_SHA224_HMAC_GENERAL:
    case CKM_SHA256_HMAC_GENERAL:
    case CKM_SHA384_HMAC_GENERAL:
    case CKM_SHA512_HMAC_GENERAL:
    case CKM_AES_CMAC_GENERAL:
      return true;
    default:
      return false;
  }
}

// A member Init (and the replay of what a moved operation had processed),
// owned by a shared state a worker may outlive the handler with.
struct InitCall {
  v1::Mechanism mechanism;
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
  bool keyed = false;
  CK_SESSION_HANDLE session;
  size_t kind;
  std::string replay;

  CK_RV Run(CK_FUNCTION_LIST* fn) {
    InitCall& c = *this;
    auto nm = wire::NativeMechanism::Decode(c.mechanism);
    if (!nm.ok()) return wire::GetCkRv(nm.status());
    CK_RV r = c.keyed ? (fn->*InitFnOf(wire::InitOf(static_cast<OpKind>(c.kind))))(c.session,
                                                                                   nm->get(), c.key)
                      : fn->C_DigestInit(c.session, nm->get());
    if (r != CKR_OK || c.replay.empty()) return r;
    // Replay what the operation processed on the member that failed; its
    // output went to the caller already and is discarded here.
    CK_BYTE_PTR in = reinterpret_cast<CK_BYTE_PTR>(c.replay.data());
    const CK_ULONG n = c.replay.size();
    std::string sink(n + 256, '\0');
    CK_ULONG sink_len = sink.size();
    CK_BYTE_PTR out = reinterpret_cast<CK_BYTE_PTR>(sink.data());
    switch (static_cast<OpKind>(c.kind)) {
      case OpKind::kEncrypt:
        return fn->C_EncryptUpdate(c.session, in, n, out, &sink_len);
      case OpKind::kDecrypt:
        return fn->C_DecryptUpdate(c.session, in, n, out, &sink_len);
      case OpKind::kDigest:
        return fn->C_DigestUpdate(c.session, in, n);
      case OpKind::kSign:
        return fn->C_SignUpdate(c.session, in, n);
      case OpKind::kVerify:
        return fn->C_VerifyUpdate(c.session, in, n);
      default:
        return CKR_FUNCTION_FAILED;
    }
  }
};

// Runs the member Init of every operation still pending on this session, on
// one member session (leased now if the session holds none), and replays
// the input a moved operation had already processed. A device-class rv is
// returned with `*tried` set to the member, so the caller can move on; any
// other error ends the operations.
CK_RV Materialize(CallContext& ctx, ClientSession& s, F f, const std::set<size_t>& excluded,
                  int* tried = nullptr, const std::optional<ObjectRef>& also = std::nullopt,
                  std::vector<std::shared_ptr<InitCall>>* deferred = nullptr) {
  Group& group = *s.group;
  std::vector<size_t> to_init;
  for (size_t k = 0; k < kOpKinds; ++k) {
    if (s.active[k] && s.pending[k].has_value()) to_init.push_back(k);
  }
  if (to_init.empty()) return CKR_OK;
  if (s.op_member < 0) {
    // A healthy member holding every key the pending operations name.
    auto member = group.RouteWhere([&](size_t i) {
      if (excluded.count(i)) return false;
      if (also.has_value() && ctx.HandleOn(group, *also, i) == CK_INVALID_HANDLE) return false;
      for (size_t k : to_init) {
        const auto& key = s.pending[k]->key;
        if (key.has_value() && ctx.HandleOn(group, *key, i) == CK_INVALID_HANDLE) return false;
      }
      return true;
    });
    if (!member.has_value()) {
      bool moved = false;
      for (size_t k : to_init) {
        auto& key = s.pending[k]->key;
        if (!key.has_value() || key->logical_id != 0 || group.member(key->member)->healthy.load()) {
          continue;
        }
        // A session key whose member failed: made again elsewhere if
        // C_CreateObject made it, else lost with it (DESIGN §3).
        auto again = ctx.Object(s, s.pending[k]->key_handle, CKR_KEY_HANDLE_INVALID);
        if (!again.ok()) {
          EndAll(s, /*dirty=*/true);
          return CKR_KEY_HANDLE_INVALID;
        }
        key = *again;
        if (s.inits[k].has_value()) s.inits[k]->key = *again;
        moved = true;
      }
      if (moved) return Materialize(ctx, s, f, excluded, tried, also, deferred);
      return CKR_DEVICE_ERROR;
    }
    if (tried != nullptr) *tried = static_cast<int>(*member);
    Member* m = group.member(*member);
    auto h = m->Acquire();
    if (!h.ok()) return CKR_DEVICE_ERROR;
    s.op_member = static_cast<int>(*member);
    s.op_session = *h;
  }
  if (tried != nullptr) *tried = s.op_member;
  Member* m = group.member(s.op_member);
  InFlight inflight(m);
  const absl::Duration timeout = absl::Milliseconds(group.config().call_timeout_ms);
  for (size_t k : to_init) {
    const PendingOp& op = *s.pending[k];
    auto call = std::make_shared<InitCall>();
    call->mechanism = op.mechanism;
    call->session = s.op_session;
    call->kind = k;
    call->replay = s.replay[k];
    if (!call->replay.empty()) m->replays.fetch_add(1);
    if (op.key.has_value()) {
      call->keyed = true;
      call->key = ctx.HandleOn(group, *op.key, static_cast<size_t>(s.op_member));
      if (call->key == CK_INVALID_HANDLE) {
        EndAll(s, /*dirty=*/true);
        return CKR_KEY_HANDLE_INVALID;
      }
    }
    if (deferred != nullptr) {
      // Runs in front of the data call, in the same worker hand-off.
      deferred->push_back(call);
      s.pending[k].reset();
      continue;
    }
    CK_RV rv = m->Invoke<InitCall>(
        timeout, call, [](CK_FUNCTION_LIST* fn, InitCall& c) { return c.Run(fn); }, s.op_session);
    if (rv != CKR_OK) {
      if (IsDeviceFailure(rv)) return rv;
      // The member refused what the agent's checks let through: the error
      // surfaces on this call, and the operation ends as the spec says.
      LogInfo(absl::StrCat("member ", m->name(), ": deferred Init for ",
                           wire::FunctionName(static_cast<uint32_t>(f)),
                           " refused: ", wire::CkRvName(rv)));
      EndAll(s, /*dirty=*/true);
      return rv == CKR_OBJECT_HANDLE_INVALID ? CKR_KEY_HANDLE_INVALID : rv;
    }
    s.pending[k].reset();
  }
  return CKR_OK;
}

// Whether a multi-part operation gives the same result when replayed on
// another member: digest, sign, verify, decrypt, MAC — and encrypt when the
// caller supplied the IV (a member-generated GCM IV would differ).
bool Replayable(OpKind kind, const v1::Mechanism& mech) {
  if (kind == OpKind::kSignRecover || kind == OpKind::kVerifyRecover) return false;
  if (kind != OpKind::kEncrypt) return true;
  if (mech.has_gcm()) return !mech.gcm().iv().empty();
  return true;
}

// One data-carrying call, owned by a shared state: a worker that overruns
// its deadline keeps using it after the handler has moved on.
struct DataCall {
  F f;
  Shape shape;
  // Member Inits deferred from C_*Init, run first in the same hand-off.
  std::vector<std::shared_ptr<InitCall>> inits;
  bool init_failed = false;
  CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
  std::string in, in2;
  std::unique_ptr<OutputBuffer> out;
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;

  CK_RV Run(CK_FUNCTION_LIST* fn) {
    for (auto& init : inits) {
      CK_RV r = init->Run(fn);
      if (r != CKR_OK) {
        init_failed = true;
        return r;
      }
    }
    std::string a = in, b = in2;  // members may write into input buffers
    switch (shape) {
      case Shape::kInOut:
        return (fn->*InOutFnOf(f))(session, reinterpret_cast<CK_BYTE_PTR>(a.data()), a.size(),
                                   out->ptr(), out->len());
      case Shape::kIn:
        return (fn->*InFnOf(f))(session, reinterpret_cast<CK_BYTE_PTR>(a.data()), a.size());
      case Shape::kOut:
        return (fn->*OutFnOf(f))(session, out->ptr(), out->len());
      case Shape::kInIn:
        return fn->C_Verify(session, reinterpret_cast<CK_BYTE_PTR>(a.data()), a.size(),
                            reinterpret_cast<CK_BYTE_PTR>(b.data()), b.size());
      case Shape::kKey:
        return fn->C_DigestKey(session, key);
      default:
        return CKR_GENERAL_ERROR;
    }
  }
};

// Keeps a multi-part operation's input for replay (DESIGN §5), while it
// fits the configured buffer and replay gives the same result.
void Remember(ClientSession& s, const OpSpec& spec, const std::string& in) {
  const size_t k = Index(spec.kind);
  if (spec.second.has_value() || spec.shape == Shape::kKey) {
    // Dual functions and DigestKey: not replayed. A dual function fed both
    // operations: neither may move (the other's buffer lacks this input).
    s.replayable[k] = false;
    s.replay[k].clear();
    if (spec.second.has_value()) {
      s.replayable[Index(*spec.second)] = false;
      s.replay[Index(*spec.second)].clear();
    }
    return;
  }
  if (!s.replayable[k]) return;
  if (s.replay[k].size() + in.size() > s.group->config().replay_buffer_bytes) {
    s.replayable[k] = false;
    s.replay[k].clear();
    return;
  }
  s.replay[k] += in;
}

// After a member failed: gives up its session and sets every active
// operation up to be initialised (and replayed) again elsewhere. False if
// an operation cannot move.
bool RestartElsewhere(ClientSession& s, const OpSpec& spec) {
  (void)spec;
  if (s.op_member >= 0) {
    s.group->member(s.op_member)->Release(s.op_session, /*dirty=*/true);
    s.op_member = -1;
    s.op_session = CK_INVALID_HANDLE;
  }
  for (size_t k = 0; k < kOpKinds; ++k) {
    if (!s.active[k]) continue;
    if (!s.replayable[k] || !s.inits[k].has_value()) return false;
    s.pending[k] = s.inits[k];
  }
  return true;
}

CK_RV RunInit(CallContext& ctx, ClientSession& s, const OpSpec& spec) {
  if (s.active[Index(spec.kind)]) return CKR_OPERATION_ACTIVE;
  ASSIGN_OR_RV(const v1::Mechanism* mech, ctx.Mechanism(1));
  auto mi = s.group->mechanisms().find(mech->type());
  if (mi == s.group->mechanisms().end()) return CKR_MECHANISM_INVALID;
  if (!ctx.MechanismAllowed(s.slot_id, mech->type())) return CKR_MECHANISM_INVALID;
  if (!(mi->second.flags & MechanismFlagFor(spec.kind))) return CKR_MECHANISM_INVALID;
  // The parameter must decode for this mechanism (CKR_MECHANISM_PARAM_INVALID).
  ASSIGN_OR_RV(wire::NativeMechanism check, wire::NativeMechanism::Decode(*mech));
  (void)check;
  if (RequiresParameter(mech->type()) && mech->params_case() == v1::Mechanism::PARAMS_NOT_SET) {
    return CKR_MECHANISM_PARAM_INVALID;
  }
  PendingOp op;
  op.mechanism = *mech;
  if (spec.shape == Shape::kInit) {
    ASSIGN_OR_RV(uint64_t kh, ctx.Ulong(2));
    ASSIGN_OR_RV(ObjectRef ref, ctx.Object(s, kh, CKR_KEY_HANDLE_INVALID));
    ASSIGN_OR_RV(KeyFacts facts, FactsOf(ctx, s, ref, UsageFor(spec.kind)));
    const std::vector<CK_KEY_TYPE> types = KeyTypesFor(mech->type());
    if (facts.known && !types.empty() &&
        std::find(types.begin(), types.end(), facts.key_type) == types.end()) {
      return CKR_KEY_TYPE_INCONSISTENT;
    }
    if (facts.usage.has_value() && !*facts.usage) return CKR_KEY_FUNCTION_NOT_PERMITTED;
    if (!facts.allowed.empty() && std::find(facts.allowed.begin(), facts.allowed.end(),
                                            mech->type()) == facts.allowed.end()) {
      return CKR_MECHANISM_INVALID;  // not in the key's CKA_ALLOWED_MECHANISMS
    }
    op.key = ref;
    op.key_handle = kh;
  }
  const bool has_params = mech->params_case() != v1::Mechanism::PARAMS_NOT_SET;
  s.inits[Index(spec.kind)] = op;
  s.replay[Index(spec.kind)].clear();
  s.replayable[Index(spec.kind)] = Replayable(spec.kind, *mech);
  s.pending[Index(spec.kind)] = std::move(op);
  s.active[Index(spec.kind)] = true;
  s.mode[Index(spec.kind)] = OpMode::kNone;
  if (has_params) {
    // Whether a member accepts a parameter (an OAEP hash, a GCM tag length)
    // is the member's to say, and the spec says it at Init: run the member
    // Init now, so its error stays on C_*Init. Mechanisms without a
    // parameter (the common ECDSA, RSA PKCS#1, HMAC, digest) stay deferred.
    std::set<size_t> excluded;
    CK_RV rv = CKR_DEVICE_ERROR;
    for (size_t attempt = 0; attempt < s.group->member_count(); ++attempt) {
      int tried = -1;
      rv = Materialize(ctx, s, static_cast<F>(ctx.request().function()), excluded, &tried);
      if (!IsDeviceFailure(rv) || tried < 0) break;
      s.group->Suspect(static_cast<size_t>(tried), rv, "Init");
      excluded.insert(static_cast<size_t>(tried));
      RestartElsewhere(s, spec);
      s.group->member(static_cast<size_t>(tried))->failovers.fetch_add(1);
      LogWarning(absl::StrCat("instance ", ctx.instance().id, ": ",
                              wire::FunctionName(ctx.request().function()), " moves off member ",
                              s.group->member(static_cast<size_t>(tried))->name()));
    }
    if (IsDeviceFailure(rv)) {
      EndOne(s, spec.kind);
      return CKR_DEVICE_ERROR;
    }
    return rv;
  }
  return CKR_OK;
}

}  // namespace

CK_RV MaterializeOperations(CallContext& ctx, ClientSession& s) {
  CK_RV rv = Materialize(ctx, s, static_cast<F>(ctx.request().function()), {});
  return IsDeviceFailure(rv) ? CKR_DEVICE_ERROR : rv;
}

CK_RV OperationCall(CallContext& ctx) {
  const F f = static_cast<F>(ctx.request().function());
  const std::optional<OpSpec> spec = SpecOf(f);
  if (!spec.has_value()) return CKR_FUNCTION_NOT_SUPPORTED;
  ASSIGN_OR_RV(auto session, ctx.Session());
  ClientSession& s = *session;
  absl::MutexLock lock(&s.mu);
  if (ctx.request().local_error() != 0) {
    // The module found an error in the caller's arguments: the operation
    // ends here too.
    if (s.active[Index(spec->kind)] || (spec->second && s.active[Index(*spec->second)])) {
      EndAll(s, /*dirty=*/true);
    }
    return static_cast<CK_RV>(ctx.request().local_error());
  }
  if (spec->part == Part::kInit) return RunInit(ctx, s, *spec);

  if (!s.active[Index(spec->kind)] || (spec->second && !s.active[Index(*spec->second)])) {
    return CKR_OPERATION_NOT_INITIALIZED;
  }
  OpMode& mode = s.mode[Index(spec->kind)];
  const bool single = spec->part == Part::kSingle;
  if ((single && mode == OpMode::kMulti) || (!single && mode == OpMode::kSingle)) {
    EndAll(s, /*dirty=*/true);
    return CKR_OPERATION_ACTIVE;
  }
  // The call's data, owned by a state that a worker can outlive us with.
  auto call = std::make_shared<DataCall>();
  call->f = f;
  call->shape = spec->shape;
  std::optional<v1::OutputCapacity> capacity;  // to give every attempt its own buffer
  std::optional<ObjectRef> digest_key;
  switch (spec->shape) {
    case Shape::kInOut: {
      ASSIGN_OR_RV(const std::string* in, ctx.Bytes(1));
      ASSIGN_OR_RV(const v1::OutputCapacity* cap, ctx.Capacity(2));
      call->in = *in;
      call->out = std::make_unique<OutputBuffer>(*cap);
      capacity = *cap;
      break;
    }
    case Shape::kIn: {
      ASSIGN_OR_RV(const std::string* in, ctx.Bytes(1));
      call->in = *in;
      break;
    }
    case Shape::kOut: {
      ASSIGN_OR_RV(const v1::OutputCapacity* cap, ctx.Capacity(1));
      call->out = std::make_unique<OutputBuffer>(*cap);
      capacity = *cap;
      break;
    }
    case Shape::kInIn: {
      ASSIGN_OR_RV(const std::string* in, ctx.Bytes(1));
      ASSIGN_OR_RV(const std::string* sig, ctx.Bytes(2));
      call->in = *in;
      call->in2 = *sig;
      break;
    }
    case Shape::kKey: {
      ASSIGN_OR_RV(uint64_t kh, ctx.Ulong(1));
      auto key = ctx.Object(s, kh, CKR_KEY_HANDLE_INVALID);
      if (!key.ok()) {
        EndAll(s, /*dirty=*/true);
        return wire::GetCkRv(key.status());
      }
      digest_key = *key;
      break;
    }
    default:
      return CKR_GENERAL_ERROR;
  }

  // Runs on a member; on a device failure, moves the operation to another
  // member holding the key (DESIGN §5: single-part calls are retried, a
  // multi-part operation is replayed from the agent's buffer when replay
  // gives the same result; otherwise CKR_DEVICE_ERROR and the next call
  // works).
  std::set<size_t> excluded;
  CK_RV rv = CKR_DEVICE_ERROR;
  const size_t attempts = s.group->member_count();
  for (size_t attempt = 0; attempt < attempts; ++attempt) {
    if (attempt > 0) {
      // A worker of the attempt before may still be inside the member (it
      // overran its deadline) and owns that DataCall: never touch it again.
      auto fresh = std::make_shared<DataCall>();
      fresh->f = call->f;
      fresh->shape = call->shape;
      fresh->in = call->in;
      fresh->in2 = call->in2;
      if (capacity.has_value()) fresh->out = std::make_unique<OutputBuffer>(*capacity);
      call = std::move(fresh);
    }
    int member = s.op_member;
    if (digest_key.has_value() && s.op_member >= 0 &&
        ctx.HandleOn(*s.group, *digest_key, static_cast<size_t>(s.op_member)) ==
            CK_INVALID_HANDLE) {
      // The digest runs where the key is not: move it (replayed) to where
      // both can be.
      if (!RestartElsewhere(s, *spec)) {
        EndAll(s, /*dirty=*/true);
        return CKR_KEY_HANDLE_INVALID;
      }
    }
    call->inits.clear();
    call->init_failed = false;
    rv = Materialize(ctx, s, f, excluded, &member, digest_key, &call->inits);
    if (rv == CKR_OK) {
      Member* m = s.group->member(s.op_member);
      if (digest_key.has_value()) {
        call->key = ctx.HandleOn(*s.group, *digest_key, static_cast<size_t>(s.op_member));
        if (call->key == CK_INVALID_HANDLE) {
          EndAll(s, /*dirty=*/true);
          return CKR_KEY_HANDLE_INVALID;
        }
      }
      call->session = s.op_session;
      InFlight inflight(m);
      rv = m->Invoke<DataCall>(
          absl::Milliseconds(s.group->config().call_timeout_ms), call,
          [](CK_FUNCTION_LIST* fn, DataCall& c) { return c.Run(fn); }, call->session);
      if (rv == CKR_GENERAL_ERROR && !s.group->Probe(static_cast<size_t>(s.op_member))) {
        rv = CKR_DEVICE_ERROR;  // the member is sick, not the input
      }
      if (call->init_failed && !IsDeviceFailure(rv)) {
        // The member refused at Init what the agent's checks let through:
        // the error surfaces on this call, and the operation ends.
        LogInfo(absl::StrCat("member ", m->name(), ": deferred Init for ",
                             wire::FunctionName(static_cast<uint32_t>(f)),
                             " refused: ", wire::CkRvName(rv)));
        EndAll(s, /*dirty=*/true);
        return rv == CKR_OBJECT_HANDLE_INVALID ? CKR_KEY_HANDLE_INVALID : rv;
      }
    }
    if (!IsDeviceFailure(rv) || member < 0) break;
    // The member failed the call: report it, drop its session, and move on.
    s.group->Suspect(static_cast<size_t>(member), rv, wire::FunctionName(static_cast<uint32_t>(f)));
    excluded.insert(static_cast<size_t>(member));
    if (!RestartElsewhere(s, *spec)) {
      EndAll(s, /*dirty=*/true);
      return CKR_DEVICE_ERROR;
    }
    s.group->member(static_cast<size_t>(member))->failovers.fetch_add(1);
    LogWarning(absl::StrCat("instance ", ctx.instance().id, ": ",
                            wire::FunctionName(static_cast<uint32_t>(f)), " moves off member ",
                            s.group->member(static_cast<size_t>(member))->name()));
  }
  if (IsDeviceFailure(rv)) {
    EndAll(s, /*dirty=*/true);
    return CKR_DEVICE_ERROR;
  }
  if (rv == CKR_OBJECT_HANDLE_INVALID && spec->shape == Shape::kKey) rv = CKR_KEY_HANDLE_INVALID;
  const bool produced = spec->shape == Shape::kIn || spec->shape == Shape::kInIn ||
                        (rv == CKR_OK && call->out != nullptr && !call->out->is_null());
  if (call->out != nullptr && (rv == CKR_OK || rv == CKR_BUFFER_TOO_SMALL)) {
    call->out->Answer(rv, ctx.AddResult());
  }
  if (rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL) {
    EndAll(s, /*dirty=*/true);
    return rv;
  }
  if (spec->part == Part::kUpdate) {
    mode = OpMode::kMulti;
    if (spec->second) s.mode[Index(*spec->second)] = OpMode::kMulti;
    // Kept for replay on another member, up to the configured size.
    Remember(s, *spec, call->in);
    return rv;
  }
  if (single) mode = OpMode::kSingle;
  // A single-part call or a final that produced its output ends the
  // operation; a length query or CKR_BUFFER_TOO_SMALL leaves it active.
  if (rv == CKR_OK && produced) EndOne(s, spec->kind);
  return rv;
}

CK_RV SeedRandom(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(const std::string* seed, ctx.Bytes(1));
  auto data = std::make_shared<std::string>(*seed);
  // Seeding one member is what the caller can observe: any member will do.
  return session->group->RunOnMember(
      [](size_t) { return true; },
      [data](size_t, CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE h) {
        std::string copy = *data;
        return fn->C_SeedRandom(h, reinterpret_cast<CK_BYTE_PTR>(copy.data()), copy.size());
      },
      "C_SeedRandom");
}

CK_RV GenerateRandom(CallContext& ctx) {
  ASSIGN_OR_RV(auto session, ctx.Session());
  ASSIGN_OR_RV(const v1::OutputCapacity* cap, ctx.Capacity(1));
  if (cap->capacity() > kMaxOutputBytes) {
    LogWarning(absl::StrCat("instance ", ctx.instance().id, ": C_GenerateRandom of ",
                            cap->capacity(), " bytes refused (limit ", kMaxOutputBytes, ")"));
    return CKR_DEVICE_MEMORY;
  }
  auto buf = std::make_shared<std::string>(cap->capacity(), '\0');
  CK_RV rv = session->group->RunOnMember(
      [](size_t) { return true; },
      [buf](size_t, CK_FUNCTION_LIST* fn, CK_SESSION_HANDLE h) {
        return fn->C_GenerateRandom(h, reinterpret_cast<CK_BYTE_PTR>(buf->data()), buf->size());
      },
      "C_GenerateRandom");
  if (rv == CKR_OK) {
    auto* out = ctx.AddResult()->mutable_output();
    out->set_length(buf->size());
    out->set_data(*buf);
  }
  return rv;
}

}  // namespace hsmux::agent
