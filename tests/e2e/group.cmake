# Group behaviour end to end (tests/e2e/group_*_test.cc): replication to every
# member, discovery and the registry, session objects, the member session
# pool, routing and crash convergence. Each program runs under with_agent.sh;
# members are checked directly through SoftHSM (group_util.cc).
#
# The helpers (and main(), which also runs the helper processes the tests
# spawn) are built once.
add_library(hsmux_group_e2e_util STATIC group_util.cc)
target_include_directories(hsmux_group_e2e_util PUBLIC ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(hsmux_group_e2e_util PUBLIC hsmux_wire GTest::gtest OpenSSL::Crypto
  ${CMAKE_DL_LIBS} Threads::Threads)

# hsmux_group_e2e_test(NAME SOURCE [ENV VAR=VALUE...]): one program, one CTest
# test through the runner, with the runner's options in ENV.
function(hsmux_group_e2e_test name source)
  cmake_parse_arguments(ARG "" "" "ENV" ${ARGN})
  add_executable(${name} ${source})
  target_link_libraries(${name} PRIVATE hsmux_group_e2e_util)
  add_test(NAME ${name}
    COMMAND ${E2E_RUNNER} ${CMAKE_BINARY_DIR} ${CMAKE_CURRENT_BINARY_DIR}/work-${name}
            -- $<TARGET_FILE:${name}>)
  set_tests_properties(${name} PROPERTIES TIMEOUT 300)
  if(ARG_ENV)
    set_tests_properties(${name} PROPERTIES ENVIRONMENT "${ARG_ENV}")
  endif()
endfunction()

hsmux_group_e2e_test(e2e_group_replication group_replication_test.cc)
hsmux_group_e2e_test(e2e_group_registry group_registry_test.cc)
hsmux_group_e2e_test(e2e_group_pool group_pool_test.cc)
# The runner splits HSMUX_GROUP_EXTRA at ';', which the property list must escape.
set_tests_properties(e2e_group_pool PROPERTIES ENVIRONMENT
  "HSMUX_WITH_TESTWRAP=1;HSMUX_GROUP_EXTRA=pool_max_sessions: 4\\;pool_min_sessions: 1\\;pool_wait_ms: 30000")
hsmux_group_e2e_test(e2e_group_routing group_routing_test.cc ENV "HSMUX_WITH_TESTWRAP=1")
hsmux_group_e2e_test(e2e_group_crash group_crash_test.cc ENV "HSMUX_WITH_TESTWRAP=1")
