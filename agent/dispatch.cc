#include "dispatch.h"

#include "absl/strings/str_cat.h"
#include "log.h"
#include "wire/function_table.h"

namespace hsmux::agent {

using wire::F;

CK_RV Dispatch(CallContext& ctx) {
  const F f = static_cast<F>(ctx.request().function());
  switch (f) {
    case F::kGetSlotInfo: return GetSlotInfo(ctx);
    case F::kGetTokenInfo: return GetTokenInfo(ctx);
    case F::kGetMechanismList: return GetMechanismList(ctx);
    case F::kGetMechanismInfo: return GetMechanismInfo(ctx);
    case F::kOpenSession: return OpenSession(ctx);
    case F::kCloseSession: return CloseSession(ctx);
    case F::kCloseAllSessions: return CloseAllSessions(ctx);
    case F::kGetSessionInfo: return GetSessionInfo(ctx);
    case F::kLogin: return Login(ctx);
    case F::kLogout: return Logout(ctx);
    case F::kSetPIN: return SetPIN(ctx);
    case F::kCreateObject: return CreateObject(ctx);
    case F::kCopyObject: return CopyObject(ctx);
    case F::kDestroyObject: return DestroyObject(ctx);
    case F::kGetObjectSize: return GetObjectSize(ctx);
    case F::kGetAttributeValue: return GetAttributeValue(ctx);
    case F::kSetAttributeValue: return SetAttributeValue(ctx);
    case F::kFindObjectsInit: return FindObjectsInit(ctx);
    case F::kFindObjects: return FindObjects(ctx);
    case F::kFindObjectsFinal: return FindObjectsFinal(ctx);
    case F::kGenerateKey: return GenerateKey(ctx);
    case F::kGenerateKeyPair: return GenerateKeyPair(ctx);
    case F::kWrapKey: return WrapKey(ctx);
    case F::kUnwrapKey: return UnwrapKey(ctx);
    case F::kDeriveKey: return DeriveKey(ctx);
    case F::kSeedRandom: return SeedRandom(ctx);
    case F::kGenerateRandom: return GenerateRandom(ctx);
    case F::kEncryptInit:
    case F::kDecryptInit:
    case F::kDigestInit:
    case F::kSignInit:
    case F::kVerifyInit:
    case F::kSignRecoverInit:
    case F::kVerifyRecoverInit:
      return OperationCall(ctx);
    default:
      if (wire::IsOperationCall(f)) return OperationCall(ctx);
      LogWarning(absl::StrCat("instance ", ctx.instance().id, ": ",
                              wire::FunctionName(ctx.request().function()),
                              " is not served by the agent"));
      return CKR_FUNCTION_NOT_SUPPORTED;
  }
}

}  // namespace hsmux::agent
