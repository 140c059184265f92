#!/usr/bin/env bash
# The whole test suite, from a clean clone on a fresh Debian 12 machine (root):
# dependencies, build, then every CTest test (unit, kernel, end-to-end).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "run as root: the kernel and end-to-end tests load BPF programs" >&2; exit 1; }
scripts/install-deps.sh
scripts/build.sh
grep -q ' /sys/fs/bpf bpf ' /proc/mounts || mount -t bpf bpf /sys/fs/bpf
cd build
rc=0
ctest --output-on-failure --timeout 900 "$@" || rc=$?
# CTest names skipped tests but not why: print each reason, then the counts.
python3 ../tests/skip_reasons.py . || true
exit "$rc"
