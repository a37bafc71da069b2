// libFuzzer target: module/module_config.cc LoadModuleConfigFile on a file
// holding the input. Every input must give a config or an error status
// naming the file; nothing may throw out of the loader (the module runs
// inside someone else's process).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "fuzz_util.h"
#include "module_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = hsmux::fuzz::InputPath("module.yaml");
  hsmux::fuzz::WriteInput(path, data, size);
  auto config = hsmux::module::LoadModuleConfigFile(path);
  if (!config.ok()) {
    const std::string msg(config.status().message());
    if (msg.rfind(path, 0) != 0) {
      std::fprintf(stderr, "error does not start with the file name: %s\n", msg.c_str());
      std::abort();
    }
  }
  return 0;
}
