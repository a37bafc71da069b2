# Client PIN rules: counting, lockout across restarts, unlock, C_SetPIN.
add_test(NAME e2e_pin_lockout
  COMMAND ${E2E_RUNNER} ${CMAKE_BINARY_DIR} ${CMAKE_CURRENT_BINARY_DIR}/work-pin-lockout
          -- bash ${CMAKE_CURRENT_SOURCE_DIR}/pin_lockout_test.sh ${CMAKE_BINARY_DIR})
set_tests_properties(e2e_pin_lockout PROPERTIES TIMEOUT 300)
