#include "wire/function_table.h"

#include "wire/operations.h"

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
  const std::optional<OpRole> role = OperationOf(f);
  return role.has_value() && role->part != Part::kInit;
}

}  // namespace hsmux::wire
