#!/usr/bin/env bash
# Runs docs/examples/inference.sh (or the example script given) against an
# agent of its own in a private network namespace: its own redird (state, run
# and bpffs directories in a temporary place), the fake servers 203.0.113.10
# and 203.0.113.20:8080 on that namespace's loopback, the agent's metrics on
# 127.0.0.1:9100 there, a resolv.conf naming a fake resolver. Nothing leaves
# the machine; the node's agent is not touched.
#   sudo docs/examples/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
script="${1:-$here/inference.sh}"
[[ $(id -u) -eq 0 ]] || { echo "run as root: sudo $0 (it creates a network namespace and loads BPF programs)" >&2; exit 1; }
if [[ "${REDIR_EXAMPLE_INSIDE:-}" != 1 ]]; then
  grep -q ' /sys/fs/bpf bpf ' /proc/mounts || mount -t bpf bpf /sys/fs/bpf
  exec env REDIR_EXAMPLE_INSIDE=1 unshare --net --mount --propagation private -- "$0" "$script"
fi

build="${REDIR_BUILD:-$repo/build}"
[[ -x "$build/userspace/agent/redird" && -x "$build/tools/redirctl/redirctl" ]] ||
  { echo "redird/redirctl not found under $build: build first (scripts/build.sh) or set REDIR_BUILD" >&2; exit 1; }
export PATH="$build/tools/redirctl:$build/userspace/agent:$PATH"

tmp="$(mktemp -d /tmp/redir-example-XXXXXX)"
chmod 755 "$tmp"
bpffs="/sys/fs/bpf/redir-example-$$"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$bpffs" "$tmp"
}
trap cleanup EXIT

ip link set lo up
ip addr add 203.0.113.10/32 dev lo
ip addr add 203.0.113.20/32 dev lo
# The fake internet: each server sends a line every 100 ms to whoever connects.
for addr in 203.0.113.10 203.0.113.20; do
  python3 -c '
import socket, sys, threading, time
def feed(c):
    try:
        while True:
            c.sendall(b"tick\n")
            time.sleep(0.1)
    except OSError:
        c.close()
s = socket.create_server((sys.argv[1], 8080))
while True:
    threading.Thread(target=feed, args=(s.accept()[0],), daemon=True).start()
' "$addr" &
  pids+=($!)
done
# Sandboxes ask a resolver that does not exist: the kernel sends port 53 to the agent.
echo "nameserver 192.0.2.53" > "$tmp/resolv.conf"
chmod 644 "$tmp/resolv.conf"
mount --bind "$tmp/resolv.conf" /etc/resolv.conf

redird --state-dir "$tmp/state" --run-dir "$tmp/run" --bpffs "$bpffs" --dns-upstream 192.0.2.53:53 \
  --metrics 127.0.0.1:9100 >"$tmp/redird.log" 2>&1 &
pids+=($!)
export REDIR_SOCKET="$tmp/run/redird.sock"
for _ in $(seq 150); do redirctl status >/dev/null 2>&1 && break; sleep 0.1; done
redirctl status >/dev/null || { echo "redird did not start:" >&2; cat "$tmp/redird.log" >&2; exit 1; }
bash "$script"
