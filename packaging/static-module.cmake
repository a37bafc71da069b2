# The self-contained libhsmux-pkcs11.so (HSMUX_STATIC_MODULE=ON), included from
# module/CMakeLists.txt after the target is declared. gRPC, protobuf, abseil,
# re2, upb, c-ares, OpenSSL, zlib and yaml-cpp are linked in as PIC archives
# and kept local by the version script plus --exclude-libs,ALL; only libc,
# libm, libstdc++ and libgcc_s stay dynamic (shared/notes/module-build.md §1).
# Debian's gRPC/OpenSSL/c-ares/upb/zlib archives are used as shipped; abseil,
# re2, protobuf and yaml-cpp come from HSMUX_STATIC_DEPS
# (scripts/build-static-deps.sh), because Debian's archives of those use
# local-exec TLS or are not PIC.
#
# The module compiles against the system headers (the same versions) and links
# hsmux_wire/hsmux_proto as archives only: their usage requirements name
# Debian's shared libraries, which must not appear on this link line.
set(_deb_lib /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE})
set(_pic ${HSMUX_STATIC_DEPS}/lib)
foreach(a libprotobuf.a libre2.a libabsl_base.a libyaml-cpp.a)
  if(NOT EXISTS ${_pic}/${a})
    message(FATAL_ERROR "HSMUX_STATIC_MODULE: ${_pic}/${a} not found; run "
      "scripts/build-static-deps.sh ${HSMUX_STATIC_DEPS} or set HSMUX_STATIC_DEPS")
  endif()
endforeach()
file(GLOB _pic_absl ${_pic}/libabsl_*.a)
set(_deb_archives)
foreach(a libgrpc++.a libgrpc.a libgpr.a libupb.a libaddress_sorting.a libcares.a
          libssl.a libcrypto.a libz.a)
  if(NOT EXISTS ${_deb_lib}/${a})
    message(FATAL_ERROR "HSMUX_STATIC_MODULE: ${_deb_lib}/${a} not found")
  endif()
  list(APPEND _deb_archives ${_deb_lib}/${a})
endforeach()
# Debian's libyaml-cpp.a is not PIC (R_X86_64_PC32 against __libc_single_threaded):
# the rebuild's is used, so that no C++ library but libstdc++ stays dynamic.
set(_yaml ${_pic}/libyaml-cpp.a)

target_compile_definitions(hsmux-pkcs11 PRIVATE HSMUX_STATIC_MODULE=1)
target_include_directories(hsmux-pkcs11 PRIVATE
  $<TARGET_PROPERTY:hsmux_wire,INTERFACE_INCLUDE_DIRECTORIES>
  $<TARGET_PROPERTY:hsmux_proto,INTERFACE_INCLUDE_DIRECTORIES>
  $<TARGET_PROPERTY:hsmux_pkcs11_headers,INTERFACE_INCLUDE_DIRECTORIES>
  ${YAMLCPP_INCLUDE_DIRS})
add_dependencies(hsmux-pkcs11 hsmux_wire hsmux_proto)
target_link_options(hsmux-pkcs11 PRIVATE -Wl,--gc-sections)
target_link_libraries(hsmux-pkcs11 PRIVATE
  -Wl,--start-group
  $<TARGET_FILE:hsmux_wire> $<TARGET_FILE:hsmux_proto>
  ${_deb_archives}
  ${_pic}/libprotobuf.a ${_pic}/libre2.a ${_pic_absl}
  ${_yaml}
  -Wl,--end-group
  Threads::Threads ${CMAKE_DL_LIBS})
