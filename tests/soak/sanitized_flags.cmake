# Per-file sanitizer flags of the soak's sanitized tree (tests/soak/build_sanitized.sh,
# REDIR_SANITIZED_TREE): the Boost.Beast translation units get ASan without
# UBSan. UBSan's checks on every inlined Beast/Asio template made them the
# bulk of the cold build (tests/soak/README.md: figures); ASan, the sanitizer
# that finds the lifetime bugs of their asynchronous code, stays on, and
# UBSan still covers every other file (DNS, policy, control, agent).
set(REDIR_SANITIZED_ASAN_ONLY
    userspace/terminator:gateway.cpp
    userspace/agent:metrics.cpp
    tests/unit/terminator:gateway_test.cpp
    tests/unit/terminator:hostile_gateway_test.cpp)
foreach(entry ${REDIR_SANITIZED_ASAN_ONLY})
  string(REPLACE ":" ";" entry ${entry})
  list(GET entry 0 dir)
  list(GET entry 1 file)
  set_source_files_properties(${CMAKE_SOURCE_DIR}/${dir}/${file} DIRECTORY ${CMAKE_SOURCE_DIR}/${dir}
                              PROPERTIES COMPILE_OPTIONS "-fno-sanitize=undefined")
endforeach()

# The deliberate leaks that prove the soak can fail (userspace/control/leak_mutant.*,
# switched on per run by REDIR_LEAK_MUTANT): this one file only, so turning
# them on costs one small compile, and no other build ever contains them.
set_source_files_properties(${CMAKE_SOURCE_DIR}/userspace/control/leak_mutant.cpp
                            DIRECTORY ${CMAKE_SOURCE_DIR}/userspace/control
                            PROPERTIES COMPILE_DEFINITIONS REDIR_SANITIZED_MUTANTS)
