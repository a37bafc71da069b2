# The module's Cryptoki surface: table-driven argument checks, fork,
# isolation between identities, mTLS refusal, no agent (surface_test.cc);
# the exported symbols (exports_test.sh); pkcs11-tool --test through hsmux
# against SoftHSM directly (compare_pkcs11_tool.sh).
hsmux_e2e_test(e2e_surface surface_test.cc)
# The raw gRPC client of the mTLS test (hsmux.v1 stub): its own program, as
# the generated protobuf code cannot live in a process that loads the
# shared-gRPC module (both would register hsmux/v1/cryptoki.proto).
add_executable(e2e_surface_raw_client surface_raw_client.cc)
target_link_libraries(e2e_surface_raw_client PRIVATE hsmux_proto)
add_dependencies(e2e_surface e2e_surface_raw_client)
target_compile_definitions(e2e_surface PRIVATE
  HSMUX_SURFACE_RAW_CLIENT="$<TARGET_FILE:e2e_surface_raw_client>")

add_test(NAME e2e_surface_exports
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/exports_test.sh ${CMAKE_BINARY_DIR})

add_test(NAME e2e_surface_pkcs11_tool_compare
  COMMAND ${E2E_RUNNER} ${CMAKE_BINARY_DIR} ${CMAKE_CURRENT_BINARY_DIR}/work-e2e_surface_pkcs11_tool_compare
          -- bash ${CMAKE_CURRENT_SOURCE_DIR}/compare_pkcs11_tool.sh)
set_tests_properties(e2e_surface_pkcs11_tool_compare PROPERTIES TIMEOUT 900)
