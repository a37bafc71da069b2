// Test helper: loads the module under test (HSMUX_MODULE) with dlopen, as an
// application would, and reads the test environment set by with_agent.sh.
#pragma once

#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "wire/cryptoki.h"

namespace hsmux::testing {

inline std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

inline std::string ReadFirstLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// client-1's PIN for slot 1.
inline std::string ClientPin() { return ReadFirstLine(Env("HSMUX_TEST_DIR") + "/secrets/client-pin"); }

// The slot the demo config serves.
inline constexpr CK_SLOT_ID kSlot = 1;

// The module's function list; the library stays loaded for the process
// (the module is linked with -z nodelete anyway).
inline CK_FUNCTION_LIST* LoadModule() {
  static CK_FUNCTION_LIST* fl = [] {
    const std::string path = Env("HSMUX_MODULE");
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) return static_cast<CK_FUNCTION_LIST*>(nullptr);
    auto get = reinterpret_cast<CK_C_GetFunctionList>(dlsym(h, "C_GetFunctionList"));
    CK_FUNCTION_LIST* list = nullptr;
    if (get == nullptr || get(&list) != CKR_OK) return static_cast<CK_FUNCTION_LIST*>(nullptr);
    return list;
  }();
  return fl;
}

}  // namespace hsmux::testing
