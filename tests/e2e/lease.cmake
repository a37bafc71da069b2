# Instance leases: a process that dies without C_Finalize loses its sessions.
hsmux_e2e_test(e2e_lease lease_test.cc)
set_tests_properties(e2e_lease PROPERTIES ENVIRONMENT "HSMUX_LEASE_SECONDS=5")
