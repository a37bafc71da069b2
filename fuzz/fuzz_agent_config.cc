// libFuzzer target: agent/config.cc LoadAgentConfig on a file holding the
// input. The loader must answer every input with a config or an error
// status; it must never throw, crash or leak a member PIN into its message.
//
// Seeds use pin_env HSMUX_FUZZ_MEMBER_PIN (set here, a dummy value), files
// that exist on every Debian system for the TLS paths, and PIN hashes of
// the dummy PIN "fuzz-user-pin".
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "config.h"
#include "fuzz_util.h"

namespace {
constexpr char kMemberPin[] = "fuzz-member-pin-e7b1";
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  setenv("HSMUX_FUZZ_MEMBER_PIN", kMemberPin, 1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = hsmux::fuzz::InputPath("hsmuxd.yaml");
  hsmux::fuzz::WriteInput(path, data, size);
  auto config = hsmux::agent::LoadAgentConfig(path);
  if (!config.ok()) {
    // Errors name the file and never carry the member PIN.
    const std::string msg(config.status().message());
    // (Unless the input itself holds it: the fuzzer learns the string from
    // comparisons and may write it into, say, a key name the error quotes.)
    const std::string input(reinterpret_cast<const char*>(data), size);
    if (msg.find(kMemberPin) != std::string::npos &&
        input.find(kMemberPin) == std::string::npos) {
      std::fprintf(stderr, "member PIN in an error message: %s\n", msg.c_str());
      std::abort();
    }
    if (msg.rfind(path, 0) != 0) {
      std::fprintf(stderr, "error does not start with the file name: %s\n", msg.c_str());
      std::abort();
    }
  }
  return 0;
}
