// The exported C_* shells and CK_FUNCTION_LIST, expanded from the one
// function table. Each shell is the module's only exception barrier: no C++
// exception crosses into the host.
#include <new>

#include "bridge.h"
#include "log.h"
#include "wire/function_table.h"

namespace hsmux::module {
namespace {

template <typename Body>
CK_RV Guard(const char* name, Body&& body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return CKR_HOST_MEMORY;
  } catch (...) {
    LogLine(std::string(name) + ": unexpected exception");
    return CKR_GENERAL_ERROR;
  }
}

}  // namespace
}  // namespace hsmux::module

#define HSMUX_EXPORT __attribute__((visibility("default")))

extern "C" {
#define HSMUX_SHELL(id, name, params, body)                                   \
  HSMUX_EXPORT CK_RV C_##name params {                                        \
    using namespace ::hsmux::module; /* NOLINT(google-build-using-namespace) */ \
    return Guard("C_" #name, [&]() -> CK_RV { return body; });                \
  }
HSMUX_CRYPTOKI_FUNCTIONS(HSMUX_SHELL)
#undef HSMUX_SHELL
}

namespace hsmux::module {

// Static storage of a trivially destructible aggregate: no destructor runs
// at exit.
static CK_FUNCTION_LIST kFunctionList = {
    {CRYPTOKI_VERSION_MAJOR, CRYPTOKI_VERSION_MINOR},
#define HSMUX_FN_PTR(id, name, params, body) &C_##name,
    HSMUX_CRYPTOKI_FUNCTIONS(HSMUX_FN_PTR)
#undef HSMUX_FN_PTR
};

CK_RV GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList) {
  // Works before C_Initialize, as the spec requires; creates nothing.
  if (ppFunctionList == nullptr) return CKR_ARGUMENTS_BAD;
  *ppFunctionList = &kFunctionList;
  return CKR_OK;
}

}  // namespace hsmux::module
