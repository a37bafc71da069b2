# Calls on one CallStream per host thread (tests/e2e/transport_stream_test.cc):
# an agent that takes at most two streams, so that refusal and fallback to
# unary calls are exercised.
hsmux_group_e2e_test(e2e_transport transport_stream_test.cc ENV "HSMUX_TOP_EXTRA=max_streams: 2")
