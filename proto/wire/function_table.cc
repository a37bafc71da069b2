#include "wire/function_table.h"

namespace hsmux::wire {

const char* FunctionName(uint32_t id) {
  switch (id) {
#define HSMUX_FN_NAME(num, name, params, body) \
  case num:                                    \
    return "C_" #name;
    HSMUX_CRYPTOKI_FUNCTIONS(HSMUX_FN_NAME)
#undef HSMUX_FN_NAME
    default:
      return "C_?";
  }
}

bool IsOperationCall(F f) {
  switch (f) {
    case F::kEncrypt:
    case F::kEncryptUpdate:
    case F::kEncryptFinal:
    case F::kDecrypt:
    case F::kDecryptUpdate:
    case F::kDecryptFinal:
    case F::kDigest:
    case F::kDigestUpdate:
    case F::kDigestKey:
    case F::kDigestFinal:
    case F::kSign:
    case F::kSignUpdate:
    case F::kSignFinal:
    case F::kSignRecover:
    case F::kVerify:
    case F::kVerifyUpdate:
    case F::kVerifyFinal:
    case F::kVerifyRecover:
    case F::kDigestEncryptUpdate:
    case F::kDecryptDigestUpdate:
    case F::kSignEncryptUpdate:
    case F::kDecryptVerifyUpdate:
      return true;
    default:
      return false;
  }
}

}  // namespace hsmux::wire
