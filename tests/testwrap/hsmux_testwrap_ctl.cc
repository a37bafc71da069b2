// hsmux-testwrap-ctl: drives libhsmux-testwrap.so from shell tests and
// benchmarks (file formats: README.md).
//
//   hsmux-testwrap-ctl DIR LABEL key=value...   merge into LABEL's control file
//   hsmux-testwrap-ctl DIR LABEL --clear        remove every fault
//   hsmux-testwrap-ctl DIR LABEL --show         print the control file
//   hsmux-testwrap-ctl DIR LABEL --stats        print the stats JSON
//
// `key=` (empty value) removes the key. Setting any fail_* key also sets a
// fresh fail_id, so the failure budget is re-armed even when the values are
// the same as before. After writing, the tool waits 30 ms (--no-wait: not),
// so that every call the wrapper starts after it returns sees the change.
#include <time.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "testwrap_files.h"

namespace {

using hsmux::testwrap::ControlPath;
using hsmux::testwrap::ReadFile;
using hsmux::testwrap::StatsPath;
using hsmux::testwrap::WriteFileAtomically;

const char *const kKeys[] = {"latency_ms", "serialize", "fail_rv", "fail_functions",
                             "fail_count", "fail_id",   "hang",    "power"};

int Usage() {
  std::fprintf(stderr,
               "usage: hsmux-testwrap-ctl DIR LABEL [--no-wait] key=value...\n"
               "       hsmux-testwrap-ctl DIR LABEL --clear | --show | --stats\n"
               "keys: latency_ms serialize fail_rv fail_functions fail_count "
               "fail_id hang "
               "power\n");
  return 2;
}

std::string Trim(const std::string &s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

bool KnownKey(const std::string &key) {
  for (const char *k : kKeys) {
    if (key == k) return true;
  }
  return false;
}

}  // namespace

int main(int argc, char **argv) {
  if (argc < 4) return Usage();
  std::string dir = argv[1];
  std::string label = argv[2];
  std::string stats = StatsPath(dir, label);
  std::string control = ControlPath(dir, label);
  std::string first = argv[3];
  if (first == "--stats" || first == "--show") {
    std::string text;
    const std::string &path = first == "--stats" ? stats : control;
    if (!ReadFile(path, &text)) {
      std::fprintf(stderr, "hsmux-testwrap-ctl: cannot read %s\n", path.c_str());
      return 1;
    }
    std::fwrite(text.data(), 1, text.size(), stdout);
    return 0;
  }

  std::vector<std::pair<std::string, std::string>> entries;
  bool wait = true;
  bool clear = false;
  std::vector<std::pair<std::string, std::string>> updates;
  for (int i = 3; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--no-wait") {
      wait = false;
    } else if (arg == "--clear") {
      clear = true;
    } else {
      size_t eq = arg.find('=');
      if (eq == std::string::npos) return Usage();
      std::string key = Trim(arg.substr(0, eq));
      if (!KnownKey(key)) {
        std::fprintf(stderr, "hsmux-testwrap-ctl: unknown key %s\n", key.c_str());
        return 2;
      }
      updates.emplace_back(key, Trim(arg.substr(eq + 1)));
    }
  }

  std::string text;
  if (!clear && ReadFile(control, &text)) {
    size_t pos = 0;
    while (pos < text.size()) {
      size_t nl = text.find('\n', pos);
      if (nl == std::string::npos) nl = text.size();
      std::string line = Trim(text.substr(pos, nl - pos));
      pos = nl + 1;
      size_t eq = line.find('=');
      if (line.empty() || line[0] == '#' || eq == std::string::npos) continue;
      entries.emplace_back(Trim(line.substr(0, eq)), Trim(line.substr(eq + 1)));
    }
  }
  auto set = [&entries](const std::string &key, const std::string &value) {
    for (auto it = entries.begin(); it != entries.end(); ++it) {
      if (it->first == key) {
        if (value.empty()) {
          entries.erase(it);
        } else {
          it->second = value;
        }
        return;
      }
    }
    if (!value.empty()) entries.emplace_back(key, value);
  };
  bool fail_touched = false;
  for (const auto &[key, value] : updates) {
    set(key, value);
    if (key.compare(0, 5, "fail_") == 0 && key != "fail_id") fail_touched = true;
  }
  if (fail_touched) {
    bool explicit_id = false;
    for (const auto &[key, value] : updates) explicit_id |= key == "fail_id";
    if (!explicit_id) {
      timespec ts{};
      clock_gettime(CLOCK_REALTIME, &ts);
      set("fail_id", std::to_string(ts.tv_sec) + "." + std::to_string(ts.tv_nsec));
    }
  }
  std::string out;
  for (const auto &[key, value] : entries) out += key + "=" + value + "\n";
  if (!WriteFileAtomically(control, out)) {
    std::fprintf(stderr, "hsmux-testwrap-ctl: cannot write %s\n", control.c_str());
    return 1;
  }
  if (wait) std::this_thread::sleep_for(std::chrono::milliseconds(30));
  return 0;
}
