# TLS policy and certificate reload without a restart.
add_test(NAME e2e_tls
  COMMAND ${E2E_RUNNER} ${CMAKE_BINARY_DIR} ${CMAKE_CURRENT_BINARY_DIR}/work-tls
          -- bash ${CMAKE_CURRENT_SOURCE_DIR}/tls_test.sh)
set_tests_properties(e2e_tls PROPERTIES TIMEOUT 300)
