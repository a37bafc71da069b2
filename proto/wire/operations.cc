#include "wire/operations.h"

namespace hsmux::wire {

std::optional<OpRole> OperationOf(F f) {
  using K = OpKind;
  switch (f) {
    case F::kEncryptInit:
      return OpRole{Part::kInit, K::kEncrypt, {}};
    case F::kDecryptInit:
      return OpRole{Part::kInit, K::kDecrypt, {}};
    case F::kDigestInit:
      return OpRole{Part::kInit, K::kDigest, {}};
    case F::kSignInit:
      return OpRole{Part::kInit, K::kSign, {}};
    case F::kVerifyInit:
      return OpRole{Part::kInit, K::kVerify, {}};
    case F::kSignRecoverInit:
      return OpRole{Part::kInit, K::kSignRecover, {}};
    case F::kVerifyRecoverInit:
      return OpRole{Part::kInit, K::kVerifyRecover, {}};
    case F::kEncrypt:
      return OpRole{Part::kSingle, K::kEncrypt, {}};
    case F::kDecrypt:
      return OpRole{Part::kSingle, K::kDecrypt, {}};
    case F::kDigest:
      return OpRole{Part::kSingle, K::kDigest, {}};
    case F::kSign:
      return OpRole{Part::kSingle, K::kSign, {}};
    case F::kSignRecover:
      return OpRole{Part::kSingle, K::kSignRecover, {}};
    case F::kVerifyRecover:
      return OpRole{Part::kSingle, K::kVerifyRecover, {}};
    case F::kVerify:
      return OpRole{Part::kSingle, K::kVerify, {}};
    case F::kEncryptUpdate:
      return OpRole{Part::kUpdate, K::kEncrypt, {}};
    case F::kDecryptUpdate:
      return OpRole{Part::kUpdate, K::kDecrypt, {}};
    case F::kDigestUpdate:
      return OpRole{Part::kUpdate, K::kDigest, {}};
    case F::kDigestKey:
      return OpRole{Part::kUpdate, K::kDigest, {}};
    case F::kSignUpdate:
      return OpRole{Part::kUpdate, K::kSign, {}};
    case F::kVerifyUpdate:
      return OpRole{Part::kUpdate, K::kVerify, {}};
    case F::kEncryptFinal:
      return OpRole{Part::kFinal, K::kEncrypt, {}};
    case F::kDecryptFinal:
      return OpRole{Part::kFinal, K::kDecrypt, {}};
    case F::kDigestFinal:
      return OpRole{Part::kFinal, K::kDigest, {}};
    case F::kSignFinal:
      return OpRole{Part::kFinal, K::kSign, {}};
    case F::kVerifyFinal:
      return OpRole{Part::kFinal, K::kVerify, {}};
    case F::kDigestEncryptUpdate:
      return OpRole{Part::kUpdate, K::kDigest, K::kEncrypt};
    case F::kDecryptDigestUpdate:
      return OpRole{Part::kUpdate, K::kDecrypt, K::kDigest};
    case F::kSignEncryptUpdate:
      return OpRole{Part::kUpdate, K::kSign, K::kEncrypt};
    case F::kDecryptVerifyUpdate:
      return OpRole{Part::kUpdate, K::kDecrypt, K::kVerify};
    default:
      return std::nullopt;
  }
}

F InitOf(OpKind kind) {
  switch (kind) {
    case OpKind::kEncrypt:
      return F::kEncryptInit;
    case OpKind::kDecrypt:
      return F::kDecryptInit;
    case OpKind::kDigest:
      return F::kDigestInit;
    case OpKind::kSign:
      return F::kSignInit;
    case OpKind::kVerify:
      return F::kVerifyInit;
    case OpKind::kSignRecover:
      return F::kSignRecoverInit;
    case OpKind::kVerifyRecover:
      return F::kVerifyRecoverInit;
  }
  return F::kSignInit;
}

}  // namespace hsmux::wire
