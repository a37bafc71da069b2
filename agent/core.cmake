# The agent's core (library, so tests can link it) and the hsmuxd binary.
find_package(prometheus-cpp CONFIG REQUIRED)
add_library(hsmux_agent_core STATIC
  admin_service.cc
  agent.cc
  audit.cc
  call_context.cc
  call_executor.cc
  view_epoch.cc
  client_pins.cc
  dispatch.cc
  group.cc
  handlers_crypto.cc
  handlers_objects.cc
  handlers_token.cc
  log.cc
  member.cc
  metrics.cc
  object_reader.cc
  recent_errors.cc
  registry.cc
  service.cc
  writer.cc)
target_include_directories(hsmux_agent_core PUBLIC ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(hsmux_agent_core PUBLIC hsmux_wire hsmux_agent_config OpenSSL::Crypto
  prometheus-cpp::pull
  absl::synchronization absl::time Threads::Threads ${CMAKE_DL_LIBS})

add_executable(hsmuxd main.cc sd_notify.cc)
target_link_libraries(hsmuxd PRIVATE hsmux_agent_core absl::flags absl::flags_parse absl::flags_usage)
