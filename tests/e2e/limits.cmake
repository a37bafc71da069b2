# Hostile-input limits answer with Cryptoki errors (issue 7, DESIGN §6).
hsmux_e2e_test(e2e_limits limits_test.cc)
set_tests_properties(e2e_limits PROPERTIES ENVIRONMENT
  "HSMUX_TOP_EXTRA=max_sessions_per_instance: 5\\;max_template_attributes: 64\\;max_attribute_bytes: 4096\\;max_objects_per_instance: 20")
