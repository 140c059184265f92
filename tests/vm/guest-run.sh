#!/usr/bin/env bash
# Runs inside a kernel-matrix guest (as root, on an overlay of the host's
# root): mounts what redir needs, runs every tests/kernel gtest binary and the
# guest end-to-end checks, writes JUnit XML and a summary to $OUT.
# Environment (from the guest's /config): REPO, BUILD, OUT, MODDIR, KVER, RUN_GTEST, E2E.
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8

# A tree cloned under /tmp (CI may clone there) stays visible: carried over
# the fresh tmpfs with bind mounts.
kept=()
for d in "$REPO" "$BUILD"; do
  case "$d/" in
    /tmp/*) k=/mnt/redir-keep/${#kept[@]}; mkdir -p "$k"; mount --bind "$d" "$k"; kept+=("$k:$d") ;;
  esac
done
mount -t tmpfs tmpfs /tmp
for kd in "${kept[@]}"; do
  mkdir -p "${kd#*:}"; mount --bind "${kd%%:*}" "${kd#*:}"
done
mount -t tmpfs tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t securityfs securityfs /sys/kernel/security
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
# After /tmp's tmpfs: the results directory may live under /tmp.
mkdir -p "$OUT"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 out "$OUT" \
  || { echo "guest: cannot mount the results share on $OUT"; exit 92; }
ip link set lo up

summary="$OUT/summary.txt"
echo "kernel $(uname -r); lsm=$(cat /sys/kernel/security/lsm)" | tee "$summary"
rc=0

# Every gtest binary of tests/kernel, all cases, two at a time (the guest has
# two vCPUs; each binary asserts only on its own cgroups, pins and netns).
# Each binary's gtest output is printed whole when it ends.
GTEST_TIMEOUT=${GTEST_TIMEOUT:-480}
run_gtest() {
  local bin=$1 name t0=$SECONDS r
  name=$(basename "$bin")
  timeout --kill-after=10 "$GTEST_TIMEOUT" "$bin" --gtest_color=no --gtest_output="xml:$OUT/$name.xml" \
    >"$OUT/$name.log" 2>&1
  r=$?
  ((r == 124)) && echo "guest: $name killed after $GTEST_TIMEOUT s" >>"$OUT/$name.log"
  { echo "guest: === $name ==="; cat "$OUT/$name.log"; } >/dev/console
  echo "gtest $name rc=$r seconds=$((SECONDS - t0))" | tee -a "$summary" >/dev/console
  return "$r"
}
for bin in "$BUILD"/tests/kernel/*; do
  [[ -f $bin && -x $bin && $RUN_GTEST == 1 ]] || continue
  while (($(jobs -rp | wc -l) >= 2)); do wait -n; done
  run_gtest "$bin" &
done
wait
[[ $RUN_GTEST != 1 ]] || grep -q '^gtest ' "$summary" || { echo "guest: no gtest binary in $BUILD/tests/kernel" | tee -a "$summary"; rc=1; }
grep -qE '^gtest .* rc=[1-9]' "$summary" && rc=1

# End-to-end checks that need this guest's kernel (BPF LSM), through the
# real redird and redirctl.
echo "guest: === guest end-to-end ==="
t0=$SECONDS
(cd "$REPO/tests/vm" && REDIR_BUILD="$BUILD" REDIR_VM_OUT="$OUT" PYTHONDONTWRITEBYTECODE=1 \
  python3 -m unittest -v test_guest_lsm)
r=$?
echo "e2e test_guest_lsm rc=$r seconds=$((SECONDS - t0))" | tee -a "$summary"
((r == 0)) || rc=1

# Chosen end-to-end modules of tests/e2e (REDIR_VM_E2E on the host): each
# starts its own redird, so under TCG they cost a minute or more apiece.
for m in ${E2E:-}; do
  echo "guest: === e2e $m ==="
  t0=$SECONDS
  (cd "$REPO/tests/e2e" && REDIR_BUILD="$BUILD" PYTHONDONTWRITEBYTECODE=1 python3 -m unittest -v "$m")
  r=$?
  echo "e2e $m rc=$r seconds=$((SECONDS - t0))" | tee -a "$summary"
  ((r == 0)) || rc=1
done

echo "guest rc=$rc" >>"$summary"
exit "$rc"
