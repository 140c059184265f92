#!/usr/bin/env bash
# bench/peers: redir's terminator vs direct, nginx, mitmproxy and squid doing
# the same job, measured in one run in a private network namespace (#11).
# Usage: bench/peers/run.sh [--check]; knobs in bench/peers/peers.py's header
# (BENCH_SECONDS=3 for a short run). Root needed. Exit 0: every target met.
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ $(id -u) -eq 0 ]] || { echo "bench/peers: run as root (network namespace, cgroup, BPF)" >&2; exit 77; }
for t in nginx wrk mitmdump squid; do
  command -v "$t" >/dev/null || { echo "bench/peers: $t missing: run scripts/install-deps.sh" >&2; exit 1; }
done
build="${REDIR_BUILD:-build}"
if [[ ! -x "$build/userspace/agent/redird" || ! -x "$build/tools/redirctl/redirctl" ]]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build" -j2 --target redird redirctl
fi
grep -q ' /sys/fs/bpf bpf ' /proc/mounts || mount -t bpf bpf /sys/fs/bpf
export REDIR_BUILD="$(realpath "$build")"
exec /usr/bin/python3 bench/peers/peers.py "$@"
