#!/usr/bin/env bash
# Builds, with ASan + UBSan, into a second build directory (argument) only
# what the sanitizer tests run: redird and redirctl for the soak and the
# detach-in-flight tests, and the DNS, gateway and relay unit tests. -O1 and
# line-only debug info (-g1) keep the compile cheap on CI's 2 cores; ccache
# (scripts/install-deps.sh installs it) makes a rebuild take seconds.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:?usage: build_sanitized.sh BUILD_DIR}
launcher=
if command -v ccache >/dev/null 2>&1; then
  export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$(dirname "$src")} CCACHE_NOHASHDIR=1
  launcher=ccache
fi
# REDIR_SANITIZED_TIMES=FILE: each compile's CPU time and peak RSS appended to
# FILE (how tests/soak/README.md's figures were taken; CCACHE_DISABLE=1 for cold).
if [[ -n ${REDIR_SANITIZED_TIMES:-} ]]; then
  launcher="$src/tests/soak/timed.sh${launcher:+;$launcher}"
fi
launch=(-DCMAKE_C_COMPILER_LAUNCHER="$launcher" -DCMAKE_CXX_COMPILER_LAUNCHER="$launcher")
# Ninja compiles objects of different libraries side by side (Make waits for
# each library before the next): the cold build's wall time on 2 cores.
# A directory configured before keeps its generator.
gen=()
if [[ ! -f $out/CMakeCache.txt ]] && command -v ninja >/dev/null 2>&1; then
  gen=(-G Ninja)
fi
san="-fsanitize=address,undefined -fno-omit-frame-pointer"
# CMAKE_BUILD_TYPE=None: no per-type flags on top of ours. PRE_TEST: the
# sanitized test binaries are never listed at build time (this tree runs no ctest).
cmake -S "$src" -B "$out" "${gen[@]}" -DCMAKE_BUILD_TYPE=None -DREDIR_SOAK=OFF -DREDIR_SANITIZED_TREE=ON "${launch[@]}" \
  -DCMAKE_C_FLAGS="-O1 -g1" -DCMAKE_CXX_FLAGS="-O1 -g1 $san" -DCMAKE_EXE_LINKER_FLAGS="$san" \
  -DCMAKE_GTEST_DISCOVER_TESTS_DISCOVERY_MODE=PRE_TEST >/dev/null
cmake --build "$out" -j"${REDIR_SANITIZED_JOBS:-2}" --target \
  redird redirctl test_dns redir_terminator_tests redir_terminator_limits_tests redir_gateway_tests \
  redir_gateway_hostile_tests redir_relay_tests redir_emfile_vptr_repro
