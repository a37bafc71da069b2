# No PIN or key value in any log, the audit log or the state database.
add_test(NAME e2e_secrets_scan
  COMMAND ${E2E_RUNNER} ${CMAKE_BINARY_DIR} ${CMAKE_CURRENT_BINARY_DIR}/work-secrets-scan
          -- bash ${CMAKE_CURRENT_SOURCE_DIR}/secrets_test.sh)
set_tests_properties(e2e_secrets_scan PROPERTIES TIMEOUT 300)
