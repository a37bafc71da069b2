// Agent logging: one line per event on stderr (journald adds the rest).
// Never pass a PIN or key material.
#pragma once

#include <string_view>

namespace hsmux::agent {

void LogInfo(std::string_view line);
void LogWarning(std::string_view line);
void LogError(std::string_view line);

}  // namespace hsmux::agent
