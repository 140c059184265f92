#!/usr/bin/env bash
# The short demo scripts/setup.sh ends with: a sandboxed command in its own
# network namespace reaches inference.local and an allowed name, is refused a
# denied address and name, and the agent's audit records show it (scripts/demo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "run as root: sudo scripts/demo.sh" >&2; exit 1; }
grep -q ' /sys/fs/bpf bpf ' /proc/mounts || mount -t bpf bpf /sys/fs/bpf
exec python3 scripts/demo.py "$@"
