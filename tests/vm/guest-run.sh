#!/usr/bin/env bash
# Runs inside a kernel-matrix guest (as root, on an overlay of the host's
# root): mounts what redir needs, runs every tests/kernel gtest binary and the
# guest end-to-end checks, writes JUnit XML and a summary to $OUT.
# Environment (from the guest's /config): REPO, BUILD, OUT, MODDIR, KVER.
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8

mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t securityfs securityfs /sys/kernel/security
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
# The guest kernel's modules, so socket(AF_VSOCK) and veth autoload.
mkdir -p /lib/modules && mount --bind "$MODDIR" /lib/modules
ip link set lo up

echo "guest: kernel $(uname -r); lsm=$(cat /sys/kernel/security/lsm)"
summary="$OUT/summary.txt"
: >"$summary"
rc=0

# Every gtest binary of tests/kernel, all cases, with gtest's own output.
for bin in "$BUILD"/tests/kernel/*; do
  [[ -f $bin && -x $bin ]] || continue
  name=$(basename "$bin")
  echo "guest: === $name ==="
  t0=$SECONDS
  "$bin" --gtest_color=no --gtest_output="xml:$OUT/$name.xml"
  r=$?
  echo "gtest $name rc=$r seconds=$((SECONDS - t0))" | tee -a "$summary"
  ((r == 0)) || rc=1
done

# End-to-end checks that need this guest's kernel (BPF LSM), through the
# real redird and redirctl.
echo "guest: === guest end-to-end ==="
t0=$SECONDS
(cd "$REPO/tests/vm" && REDIR_BUILD="$BUILD" REDIR_VM_OUT="$OUT" PYTHONDONTWRITEBYTECODE=1 \
  python3 -m unittest -v test_guest_lsm)
r=$?
echo "e2e test_guest_lsm rc=$r seconds=$((SECONDS - t0))" | tee -a "$summary"
((r == 0)) || rc=1

echo "guest rc=$rc" >>"$summary"
exit "$rc"
