// File names and formats shared by libhsmux-testwrap.so and
// hsmux-testwrap-ctl (see README.md in this directory).
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string>

namespace hsmux::testwrap {

// A token label as a file name: trailing blanks trimmed by the caller, every
// byte outside [A-Za-z0-9._-] replaced by '_'; an empty label is "_".
inline std::string FileStem(const std::string &label) {
  std::string out;
  for (char c : label) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    out += ok ? c : '_';
  }
  if (out.empty() || out == "." || out == "..") out = "_" + out;
  return out;
}

inline std::string StatsPath(const std::string &dir, const std::string &label) {
  return dir + "/" + FileStem(label) + ".stats.json";
}

inline std::string ControlPath(const std::string &dir, const std::string &label) {
  return dir + "/" + FileStem(label) + ".ctl";
}

// Writes `data` to `path` atomically (temporary file in the same directory,
// then rename). Returns false on any error.
inline bool WriteFileAtomically(const std::string &path, const std::string &data) {
  std::string tmp = path + ".tmp." + std::to_string(getpid());
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      close(fd);
      unlink(tmp.c_str());
      return false;
    }
    done += static_cast<size_t>(n);
  }
  if (close(fd) != 0 || rename(tmp.c_str(), path.c_str()) != 0) {
    unlink(tmp.c_str());
    return false;
  }
  return true;
}

inline bool ReadFile(const std::string &path, std::string *out) {
  FILE *f = fopen(path.c_str(), "rbe");
  if (f == nullptr) return false;
  out->clear();
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) out->append(buf, n);
  fclose(f);
  return true;
}

}  // namespace hsmux::testwrap
