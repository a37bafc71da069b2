// Round-trip counter for benchmarks and tests, without exporting anything but
// the C_* functions (docs/decisions/0008-round-trip-counter.md): when the
// environment names HSMUX_STATS_FILE, the module writes
//   {"pid":P,"round_trips":N,"streams_opened":S,"streams_refused":R}
// there (temp file + rename) at every C_GetInfo and at C_Finalize. Unset or
// empty: nothing is written and nothing else changes.
#pragma once

#include "agent_client.h"

namespace hsmux::module {

// Writes the file for this client's counter (no-op when the variable is unset).
void WriteStatsFile(const AgentClient::TransportStats& stats);

// C_GetInfo: writes the current client's counter (no-op when uninitialised or unset).
void SnapshotStats();

}  // namespace hsmux::module
