# Every Cryptoki function family through the real module, agent and members
# (tests/e2e/functions_*_test.cc).
hsmux_e2e_test(e2e_functions_test
  functions_test.cc
  functions_objects_test.cc
  functions_crypto_test.cc
  functions_state_test.cc
  functions_local_answers_test.cc)
