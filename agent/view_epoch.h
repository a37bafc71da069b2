// The agent's object-view epoch (CallResponse.epoch): one process-wide
// counter, moved on by every change that can alter what a C_*Init answers —
// an object made, changed or destroyed, a login or logout, a member taken
// out (its session keys go with it). The module reuses an Init answer only
// while the epoch it saw with it is current (docs/decisions/0010).
#pragma once

#include <cstdint>

namespace hsmux::agent {

uint64_t ViewEpoch();
void AdvanceViewEpoch();

}  // namespace hsmux::agent
