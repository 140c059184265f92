#!/bin/sh
# PID 1 of a kernel-matrix guest (busybox): mounts the host's root read-only
# over 9p under a tmpfs overlay, runs tests/vm/guest-run.sh in it, reports.
# /config (written by scripts/kernel-matrix.sh) sets REPO, BUILD, OUT, MODDIR.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
. /config
echo "REDIR-VM: init reached on $(uname -r) after $(cut -d' ' -f1 /proc/uptime) s"

# Why: virtio, 9p and overlay are modules in distribution kernels.
for m in /mods/*.ko; do
  [ -e "$m" ] || continue
  insmod "$m" 2>/dev/null || echo "REDIR-VM: insmod $m failed"
done

report() {
  echo "REDIR-VM-RESULT rc=$1"
  poweroff -f
  sleep 60
}

mkdir -p /lower /upper /newroot
# cache=loose: the share is read-only for the guest's lifetime.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose hostroot /lower \
  || { echo "REDIR-VM: cannot mount the host root over 9p"; report 90; }
mount -t tmpfs -o size=1g tmpfs /upper
mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot \
  || { echo "REDIR-VM: cannot mount the overlay root"; report 91; }

# The guest kernel's modules at /lib/modules; the kernel's module autoload
# (socket(AF_VSOCK), SCTP, ...) runs its helper in this initramfs' root, so
# the helper is a wrapper running the host's modprobe in the new root.
mkdir -p /newroot/lib/modules
mount -o bind "/newroot$MODDIR" /newroot/lib/modules
printf '#!/bin/sh\nexec /bin/chroot /newroot /sbin/modprobe "$@"\n' >/bin/modprobe-in-root
chmod +x /bin/modprobe-in-root
echo /bin/modprobe-in-root >/proc/sys/kernel/modprobe

mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
# Not a plain chroot: the kernel refuses user namespaces to chrooted callers
# (EPERM), which `redirctl run --user root` needs. In a mount namespace of
# its own the overlay is moved onto / as switch_root does; this PID 1 keeps
# the initramfs (for poweroff and the modprobe wrapper above).
unshare -m sh -c 'cd /newroot && mount -o move . / && exec chroot . /bin/bash "$0"' \
  "$REPO/tests/vm/guest-run.sh" </dev/console >/dev/console 2>&1
rc=$?
sync
report "$rc"
