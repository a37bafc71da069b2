// The audit log (DESIGN §6): one JSON object per line for logins, failed
// logins, lockouts, PIN changes, key creation and destruction, and admin
// actions, with the client identity. It never contains a PIN or key
// material: callers pass names, labels-free object classes and outcomes.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace hsmux::agent {

// Opens (creates, mode 0600) the audit file; false if it cannot.
bool OpenAuditLog(const std::string& path);

// Appends {"time":...,"event":...,"identity":...,<fields>}.
void Audit(const std::string& event, const std::string& identity,
           const std::vector<std::pair<std::string, std::string>>& fields = {});

}  // namespace hsmux::agent
