// The module's log. It lives in other people's processes, so it never writes
// to their stderr: lines go to the configured log_file, or nowhere.
#pragma once

#include <string>
#include <string_view>

namespace hsmux::module {

// Sets (or clears, with "") the file log lines are appended to.
void SetLogFile(const std::string& path);
// Appends one line with a timestamp and the pid. Never pass secrets.
void LogLine(std::string_view line);
// Routes gRPC's own log lines into LogLine (errors only).
void RouteGrpcLogs();

}  // namespace hsmux::module
