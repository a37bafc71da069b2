#include "view_epoch.h"

#include <atomic>

namespace hsmux::agent {
namespace {

// Trivially destructible, constant-initialised: safe at any time.
std::atomic<uint64_t> epoch{1};

}  // namespace

uint64_t ViewEpoch() { return epoch.load(std::memory_order_acquire); }

void AdvanceViewEpoch() { epoch.fetch_add(1, std::memory_order_acq_rel); }

}  // namespace hsmux::agent
