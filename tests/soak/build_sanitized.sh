#!/usr/bin/env bash
# Builds redird, redirctl and the DNS unit tests with ASan + UBSan into a
# second build directory (argument), for the soak test. Only those targets:
# a sanitizer build of the whole tree costs too much of CI's 2 cores.
# ccache (scripts/install-deps.sh installs it) makes a rebuild take seconds.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:?usage: build_sanitized.sh BUILD_DIR}
launch=()
if command -v ccache >/dev/null 2>&1; then
  export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$(dirname "$src")} CCACHE_NOHASHDIR=1
  launch=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
san="-fsanitize=address,undefined -fno-omit-frame-pointer"
cmake -S "$src" -B "$out" -DCMAKE_BUILD_TYPE=Debug "${launch[@]}" \
  -DCMAKE_CXX_FLAGS="-O1 -g $san" -DCMAKE_EXE_LINKER_FLAGS="$san" >/dev/null
cmake --build "$out" -j"${REDIR_SANITIZED_JOBS:-2}" --target redird redirctl test_dns
