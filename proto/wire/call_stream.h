// What the two sides agree about CallStream beyond its messages
// (docs/decisions/0012-call-streams.md).
#pragma once

namespace hsmux::wire {

// Trailing metadata the agent sets when it refuses a stream before reading
// any message from it (its stream limit is reached). The module then sends
// the same request as a unary Call: it was never seen, so it runs once.
inline constexpr char kStreamRefusedTrailer[] = "hsmux-stream-refused";

}  // namespace hsmux::wire
