#!/usr/bin/env bash
# Boots each kernel of the matrix under qemu (no network) and runs
# redir's kernel tests and guest end-to-end checks inside it; see docs/kernels.md.
#
#   scripts/kernel-matrix.sh [KERNEL...]      KERNEL: debian-6.1 (default), debian-6.12,
#                                             or either + "-nolsm" (booted without BPF LSM)
#
# Exit code: 0 all kernels passed, 1 a test failed or a guest did not finish,
# 77 skipped (this host cannot boot the guest in time, or cannot get qemu or
# the kernel package); the reason is printed.
# Environment: REDIR_BUILD (build dir, default ./build), REDIR_VM_RESULTS
# (results, default $REDIR_BUILD/kernel-matrix), REDIR_VM_CACHE
# (extracted kernels, default /var/cache/redir-vm), REDIR_VM_TIMEOUT (seconds
# per guest, default 780), REDIR_VM_BOOT_DEADLINE (seconds to reach the
# guest's /init before skipping, default 150), REDIR_VM_ACCEL (kvm|tcg),
# REDIR_VM_GTEST=0 (only the guest end-to-end checks, for quick iteration),
# REDIR_VM_KERNEL_ARGS (added to the guest kernel's command line),
# REDIR_VM_CPU (TCG CPU model, default max), REDIR_VM_E2E (tests/e2e modules
# to run in the guest too, e.g. "test_escape_protocols test_datapath_agent").
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${REDIR_BUILD:-$REPO/build}" 2>/dev/null && pwd) || { echo "kernel-matrix: build directory ${REDIR_BUILD:-$REPO/build} missing: run scripts/build.sh first" >&2; exit 1; }
RESULTS=${REDIR_VM_RESULTS:-$BUILD/kernel-matrix}
CACHE=${REDIR_VM_CACHE:-/var/cache/redir-vm}
TIMEOUT=${REDIR_VM_TIMEOUT:-780}
BOOT_DEADLINE=${REDIR_VM_BOOT_DEADLINE:-150}
SKIP=77
TOOLS=(qemu-system-x86 busybox-static kmod cpio xz-utils zstd)
# The guest's modules loaded by its /init, in this order with their dependencies.
# (Paths under lib/modules/<ver>, without the .ko[.xz|.zst|.gz] suffix.)
GUEST_MODULES=(kernel/net/9p/9pnet_virtio kernel/drivers/virtio/virtio_pci kernel/fs/9p/9p
               kernel/fs/overlayfs/overlay)

skip() { echo "kernel-matrix: SKIPPED: $*" >&2; exit "$SKIP"; }
die() { echo "kernel-matrix: $*" >&2; exit 1; }

# Debian package name (a regex over package names) for each matrix kernel;
# "<kernel>-nolsm" is the same kernel booted without bpf in its LSM list.
package_regex() {
  case "${1%-nolsm}" in
    debian-6.1) echo '^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$' ;;
    debian-6.12) echo '^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' ;;
    *) die "unknown kernel '$1': known kernels are debian-6.1 and debian-6.12, each also as <kernel>-nolsm" ;;
  esac
}

# Kernel command line additions per matrix entry.
kernel_args() {
  case "$1" in
    *-nolsm) echo "lsm=lockdown,capability,landlock,yama,apparmor,tomoyo ${REDIR_VM_KERNEL_ARGS:-}" ;;
    *) echo "${REDIR_VM_KERNEL_ARGS:-}" ;;
  esac
}

# What the guest must report for packet-socket refusal: Debian kernels as
# their distribution boots them enforce it (lsm_cgroup: 6.0+, bpf in their
# LSM list); without bpf the agent must run and say why it cannot.
expected_refusal() {
  case "$1" in
    *-nolsm) echo "not enforced" ;;
    debian-6.1 | debian-6.12) echo "enforced" ;;
    *) echo "" ;;
  esac
}

install_tools() {
  local missing=() p
  for p in "${TOOLS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  ((${#missing[@]})) || return 0
  echo "kernel-matrix: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } \
    || skip "cannot install ${missing[*]} from Debian's packages (apt-get failed)"
}

# Newest package matching the kernel's regex, from apt's own package lists.
kernel_package() {
  local re=$1 pkg
  pkg=$(apt-cache pkgnames linux-image- | grep -E "$re" | sort -V | tail -n1 || true)
  if [[ -z $pkg ]]; then
    apt-get update -qq >/dev/null 2>&1 || true
    pkg=$(apt-cache pkgnames linux-image- | grep -E "$re" | sort -V | tail -n1 || true)
  fi
  echo "$pkg"
}

# Downloads and unpacks kernel package $1 into $CACHE/<package> (not installed
# on the host: no initramfs or bootloader hooks run), with modules.dep; drops
# older packages matching regex $2.
fetch_kernel() {
  local pkg=$1 dir=$CACHE/$1 tmp
  if [[ ! -f $dir/.complete ]]; then
    echo "kernel-matrix: fetching $pkg"
    rm -rf "$dir"
    tmp=$(mktemp -d "$CACHE/.dl.XXXXXX")
    (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null) \
      || { rm -rf "$tmp"; skip "cannot download $pkg"; }
    dpkg-deb -x "$tmp"/*.deb "$tmp/root"
    local kver
    kver=$(ls "$tmp/root/lib/modules")
    depmod -b "$tmp/root" "$kver"
    mv "$tmp/root" "$dir"
    rm -rf "$tmp"
    touch "$dir/.complete"
    # Older builds of the same kernel series are superseded (~400 MB each).
    local old
    for old in "$CACHE"/*; do
      if [[ $old != "$dir" && -d $old ]] && grep -qE "$2" <<<"$(basename "$old")"; then rm -rf "$old"; fi
    done
  fi
}

# Appends module $2 (its modules.dep name) to MOD_ORDER after its dependencies.
declare -a MOD_ORDER
add_module() {
  local moddir=$1 m=$2 d
  for d in $(grep "^$m:" "$moddir/modules.dep" | cut -d: -f2); do add_module "$moddir" "$d"; done
  [[ " ${MOD_ORDER[*]} " == *" $m "* ]] || MOD_ORDER+=("$m")
}

# modules.dep name of module $2 (a path without suffix), empty when built in;
# distributions compress modules differently (6.1: none, 6.12: xz).
module_name() {
  local name
  name=$(grep -oE "^$2\.ko(\.xz|\.zst|\.gz)?:" "$1/modules.dep" | tr -d :) || true
  [[ -n $name ]] || grep -qE "^$2\.ko$" "$1/modules.builtin" || return 1
  echo "$name"
}

# Copies module $1 to $2 uncompressed (busybox insmod takes plain .ko only).
copy_module() {
  case $1 in
    *.xz) xz -dc "$1" >"$2" ;;
    *.zst) zstd -qdc "$1" >"$2" ;;
    *.gz) gzip -dc "$1" >"$2" ;;
    *) cp "$1" "$2" ;;
  esac
}

# initramfs: busybox, the modules /init needs, /init and its /config.
build_initramfs() {
  local kdir=$1 kver=$2 out=$3 dest=$4 root i=0 m
  root=$(mktemp -d)
  mkdir -p "$root"/{bin,proc,sys,dev,mods}
  cp /usr/bin/busybox "$root/bin/"
  for m in sh mount insmod echo cat cut mkdir chmod printf sleep sync poweroff chroot unshare; do ln -s busybox "$root/bin/$m"; done
  MOD_ORDER=()
  local moddir=$kdir/lib/modules/$kver name
  for m in "${GUEST_MODULES[@]}"; do
    name=$(module_name "$moddir" "$m") || die "module $m is neither in $moddir/modules.dep nor built in: this kernel cannot mount the guest's root"
    [[ -z $name ]] || add_module "$moddir" "$name"
  done
  for m in "${MOD_ORDER[@]}"; do
    i=$((i + 1))
    copy_module "$kdir/lib/modules/$kver/$m" "$root/mods/$(printf %02d "$i")-$(basename "${m%.ko*}").ko"
  done
  cp "$REPO/tests/vm/init.sh" "$root/init"
  cat >"$root/config" <<EOF
export REPO='$REPO' BUILD='$BUILD' OUT='$out' MODDIR='$kdir/lib/modules' KVER='$kver' RUN_GTEST='${REDIR_VM_GTEST:-1}' E2E='${REDIR_VM_E2E:-}'
EOF
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$dest"
  rm -rf "$root"
}

# kvm only where the host has real hardware virtualisation (a PVM-only
# /dev/kvm, as on some cloud sandboxes, cannot run a stock kernel).
accel_args() {
  local want=${REDIR_VM_ACCEL:-}
  if [[ -z $want ]]; then
    want=tcg
    if [[ -w /dev/kvm ]] && grep -qw -E 'vmx|svm' /proc/cpuinfo && grep -qE '^kvm_(intel|amd) ' /proc/modules; then
      want=kvm
    fi
  fi
  case $want in
    kvm) echo "-accel kvm -cpu host" ;;
    tcg) echo "-accel tcg,thread=multi -cpu ${REDIR_VM_CPU:-max}" ;;
    *) die "REDIR_VM_ACCEL must be kvm or tcg, not '$want'" ;;
  esac
}

# Whole seconds of the boot clock: unlike $SECONDS (wall time) it does not
# jump when the host's clock is stepped or the machine is paused, which once
# killed a healthy guest as "timed out" after 215 s.
uptime_s() { local up _; read -r up _ </proc/uptime; echo "${up%.*}"; }

# Boots one guest; prints its console as it goes; returns the guest's rc,
# 124 on timeout, or $SKIP when it did not reach /init by the boot deadline.
boot_guest() {
  local kernel=$1 vmlinuz=$2 initrd=$3 out=$4 log=$4/console.log qpid tpid t0 booted=0
  : >"$log"
  # shellcheck disable=SC2046
  qemu-system-x86_64 $(accel_args) -m 2048 -smp 2 -nographic -no-reboot -nic none \
    -monitor none -serial "file:$log" \
    -kernel "$vmlinuz" -initrd "$initrd" \
    -append "console=ttyS0 panic=-1 quiet loglevel=4 $(kernel_args "$kernel")" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -virtfs local,path="$out",mount_tag=out,security_model=none,multidevs=remap \
    </dev/null >"$out/qemu.log" 2>&1 &
  qpid=$!
  tail -n +1 -f --pid="$qpid" "$log" | sed -u "s/^/[$kernel] /" &
  tpid=$!
  t0=$(uptime_s)
  while kill -0 "$qpid" 2>/dev/null; do
    if ((!booted)) && grep -q 'REDIR-VM: init reached' "$log"; then
      booted=1
      echo "kernel-matrix: $kernel reached /init after $(($(uptime_s) - t0)) s"
    fi
    if ((!booted && $(uptime_s) - t0 > BOOT_DEADLINE)); then
      kill "$qpid"; wait "$qpid" 2>/dev/null || true; wait "$tpid" 2>/dev/null || true
      printf '\nkernel-matrix: %s did not reach /init within %s s (qemu: %s)\n' "$kernel" "$BOOT_DEADLINE" \
        "$(tail -n3 "$out/qemu.log" | tr '\n' ' ')"
      return "$SKIP"
    fi
    if (($(uptime_s) - t0 > TIMEOUT)); then
      kill "$qpid"; wait "$qpid" 2>/dev/null || true; wait "$tpid" 2>/dev/null || true
      printf '\nkernel-matrix: %s did not finish within %s s (REDIR_VM_TIMEOUT); killed\n' "$kernel" "$TIMEOUT"
      return 124
    fi
    sleep 1
  done
  wait "$qpid" 2>/dev/null || true
  wait "$tpid" 2>/dev/null || true
  local rc
  rc=$(sed -n 's/.*REDIR-VM-RESULT rc=\([0-9]*\).*/\1/p' "$log" | tail -n1)
  if [[ -z $rc ]]; then
    echo "kernel-matrix: $kernel ended without a result line (qemu: $(tail -n3 "$out/qemu.log" | tr '\n' ' '))"
    return 1
  fi
  return "$rc"
}

# One line per gtest binary from its JUnit XML: tests, failures, skipped.
report_xml() {
  local x
  for x in "$1"/*.xml; do
    [[ -f $x ]] || continue
    local head
    head=$(grep -m1 '<testsuites' "$x")
    echo "  $(basename "$x" .xml): tests=$(sed -n 's/.* tests="\([0-9]*\)".*/\1/p' <<<"$head")" \
         "failures=$(sed -n 's/.* failures="\([0-9]*\)".*/\1/p' <<<"$head")" \
         "skipped=$(grep -c '<skipped' "$x" || true)"
  done
}

run_kernel() {
  local kernel=$1 re pkg kdir kver out rc=0
  re=$(package_regex "$kernel")
  pkg=$(kernel_package "$re")
  [[ -n $pkg ]] || skip "no package matching $re in apt's lists (is deb.debian.org bookworm configured?)"
  fetch_kernel "$pkg" "$re"
  kdir=$CACHE/$pkg
  kver=$(ls "$kdir/lib/modules")
  out=$RESULTS/$kernel
  rm -rf "$out" && mkdir -p "$out"
  build_initramfs "$kdir" "$kver" "$out" "$out/initrd.gz"
  echo "kernel-matrix: booting $kernel ($pkg) with $(accel_args), timeout ${TIMEOUT} s"
  boot_guest "$kernel" "$kdir/boot/vmlinuz-$kver" "$out/initrd.gz" "$out" || rc=$?
  echo "kernel-matrix: $kernel ($kver) results in $out:"
  report_xml "$out"
  [[ -f $out/summary.txt ]] && sed 's/^/  /' "$out/summary.txt"
  local refusal="not measured"
  [[ -f $out/packet_socket_refusal ]] && refusal=$(cat "$out/packet_socket_refusal")
  echo "kernel_matrix.$kernel ($kver): packet_socket_refusal: $refusal"
  local want
  want=$(expected_refusal "$kernel")
  if ((rc == 0)) && [[ -n $want && $refusal != "$want"* ]]; then
    echo "kernel-matrix: $kernel must report packet_socket_refusal '$want', but the guest says: $refusal"
    rc=1
  fi
  return "$rc"
}

main() {
  [[ $(id -u) -eq 0 ]] || skip "needs root (the guest's tests load BPF programs; apt installs qemu)"
  [[ $(uname -m) == x86_64 ]] || skip "the matrix boots amd64 kernels; this host is $(uname -m)"
  local kernels=("$@")
  ((${#kernels[@]})) || kernels=(debian-6.1)
  for k in "${kernels[@]}"; do package_regex "$k" >/dev/null; done
  [[ -x $BUILD/userspace/agent/redird ]] || die "$BUILD/userspace/agent/redird missing: run scripts/build.sh first"
  install_tools
  mkdir -p "$CACHE"
  local failed=() skipped=() k rc
  for k in "${kernels[@]}"; do
    rc=0
    run_kernel "$k" || rc=$?
    case $rc in
      0) ;;
      "$SKIP") skipped+=("$k") ;;
      *) failed+=("$k (rc=$rc)") ;;
    esac
  done
  ((${#skipped[@]})) && echo "kernel-matrix: skipped: ${skipped[*]}"
  ((${#failed[@]})) && die "failed: ${failed[*]}"
  ((${#skipped[@]} < ${#kernels[@]})) || skip "no kernel could be booted in time on this host"
  echo "kernel-matrix: passed: ${kernels[*]}"
}

main "$@"
