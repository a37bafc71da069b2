# High availability end to end (issue 4, DESIGN §5; tests/e2e/ha_*_test.cc):
# failover, replay, health, recovery, drain/readmit and the standby agent,
# with members behind tests/testwrap so that the tests can power them off,
# hang them or make them fail. Each program runs under with_agent.sh with
# quick failure detection. Built on the group helpers (group.cmake).
#
# The runner splits HSMUX_GROUP_EXTRA at ';', which the property list must escape.
set(HSMUX_HA_GROUP
  "probe_interval_ms: 200\\;probe_timeout_ms: 500\\;call_timeout_ms: 1000\\;keygen_timeout_ms: 5000")

# The chaos test of issue 4 item 5 (about 45 s).
hsmux_group_e2e_test(e2e_ha_chaos ha_chaos_test.cc)
# Garbage input ejects nobody; one member left / none left / service resumes.
hsmux_group_e2e_test(e2e_ha_health ha_health_test.cc)
# Multi-part replay on another member; past the replay buffer, CKR_DEVICE_ERROR.
hsmux_group_e2e_test(e2e_ha_replay ha_replay_test.cc)
# Catch-up after an outage; hsmuxctl drain / readmit.
hsmux_group_e2e_test(e2e_ha_recovery ha_recovery_test.cc)
# Single calls on a failing member: searches, wrap and random retried;
# copy/unwrap/derive not retried and leave nothing; attribute changes caught up.
hsmux_group_e2e_test(e2e_ha_failover ha_failover_test.cc)
foreach(t e2e_ha_chaos e2e_ha_health e2e_ha_recovery e2e_ha_failover)
  set_tests_properties(${t} PROPERTIES ENVIRONMENT
    "HSMUX_WITH_TESTWRAP=1;HSMUX_GROUP_EXTRA=${HSMUX_HA_GROUP}")
endforeach()
set_tests_properties(e2e_ha_replay PROPERTIES ENVIRONMENT
  "HSMUX_WITH_TESTWRAP=1;HSMUX_GROUP_EXTRA=${HSMUX_HA_GROUP}\\;replay_buffer_bytes: 64")
# A standby agent on the same state directory takes over.
hsmux_group_e2e_test(e2e_ha_standby ha_standby_test.cc)
# Session objects when their member fails: made again from the kept template,
# or lost (generated keys).
hsmux_group_e2e_test(e2e_ha_session_objects ha_session_objects_test.cc)
set_tests_properties(e2e_ha_session_objects PROPERTIES ENVIRONMENT
  "HSMUX_WITH_TESTWRAP=1;HSMUX_GROUP_EXTRA=${HSMUX_HA_GROUP}")
