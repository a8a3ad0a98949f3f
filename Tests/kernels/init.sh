#!/bin/busybox sh
# shellcheck shell=dash
# PID 1 of a kernel-matrix VM (Tests/kernels/run_kernels.py packs it as /init with busybox-static and
# the guest kernel's own modules). Mounts the host's root read-only over virtiofs under a tmpfs
# overlay, links the guest kernel's modules into /lib/modules, runs the host-written run script in a
# chroot of that, prints its exit code on the console and powers off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# shellcheck disable=SC2013 # the kernel command line is words, one line
for arg in $(cat /proc/cmdline); do
	case $arg in
	crk.out=*) OUT=${arg#crk.out=} ;;
	crk.mods=*) MODS=${arg#crk.mods=} ;;
	esac
done
say() { echo "crk-init: $*"; }
fail() { say "FAILED: $*"; echo "CRK-EXIT=99"; sync; poweroff -f; }
say "up on $(uname -r)"
# shellcheck disable=SC2013 # one module file name a line, no spaces
for ko in $(cat /modules.order); do
	insmod "/modules/$ko" || fail "insmod $ko"
done
mkdir -p /host /rw /newroot
mount -t virtiofs hostroot /host -o ro || fail "mount the host's root (virtiofs)"
mount -t tmpfs -o size=2g tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot || fail "overlay"
for d in proc sys dev; do mount --bind /$d /newroot/$d; done
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
for d in /tmp /run /var/tmp; do mount -t tmpfs tmpfs /newroot$d; done
mkdir -p /newroot/run/lock /newroot/run/netns
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup 2>/dev/null
# The guest kernel's modules where its modprobe (the host's kmod, run by request_module) looks.
KVER=$(uname -r)
mkdir -p "/newroot/lib/modules/$KVER" "/newroot$OUT"
mount --bind "/host$MODS" "/newroot/lib/modules/$KVER" || fail "modules"
mount -t virtiofs out "/newroot$OUT" || fail "mount the results folder (virtiofs)"
# The kernel runs its module loader (request_module: veth, nf_conntrack_netlink, ...) in the initramfs'
# root, not in the chroot: a wrapper there runs the host's kmod inside the chroot.
printf '#!/bin/sh\nexec /bin/chroot /newroot /sbin/modprobe "$@"\n' >/bin/crk-modprobe
chmod 755 /bin/crk-modprobe
echo /bin/crk-modprobe >/proc/sys/kernel/modprobe
ip link set lo up
hostname crk-vm
say "running $OUT/run.sh"
chroot /newroot /bin/bash "$OUT/run.sh"
rc=$?
sync
echo "CRK-EXIT=$rc"
umount "/newroot$OUT" 2>/dev/null
poweroff -f
