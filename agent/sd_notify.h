// Readiness notification for systemd (Type=notify) without libsystemd.
#ifndef HSMUX_AGENT_SD_NOTIFY_H_
#define HSMUX_AGENT_SD_NOTIFY_H_

namespace hsmux::agent {

// Sends `state` (e.g. "READY=1") as one datagram to the socket named by
// $NOTIFY_SOCKET (a path, or "@name" in the abstract namespace). Returns true
// if it was sent; false, doing nothing, when not started by systemd.
bool SdNotify(const char* state);

}  // namespace hsmux::agent

#endif  // HSMUX_AGENT_SD_NOTIFY_H_
