# Per-identity allow-lists of keys and mechanisms.
add_test(NAME e2e_allowlist
  COMMAND ${E2E_RUNNER} ${CMAKE_BINARY_DIR} ${CMAKE_CURRENT_BINARY_DIR}/work-allowlist
          -- bash ${CMAKE_CURRENT_SOURCE_DIR}/allowlist_test.sh)
set_tests_properties(e2e_allowlist PROPERTIES TIMEOUT 300)
