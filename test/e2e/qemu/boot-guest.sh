#!/usr/bin/env bash
# boot-guest.sh CACHE_DIR PAYLOAD_CPIO WORK_DIR [TIMEOUT_SECONDS [SCENARIOS]]
#
# Boots the LVM guest under TCG (KVM hung on these machines) with two fresh
# sparse virtio disks in WORK_DIR, and copies the serial console to stdout.
# SCENARIOS is a comma-separated list of scenario numbers (e.g. "10,20,90";
# default: all), passed to run.sh on the kernel command line.
# Exits with the payload's rc from the END marker, 124 on timeout.
set -euo pipefail
cache=${1:?usage: boot-guest.sh CACHE_DIR PAYLOAD_CPIO WORK_DIR [TIMEOUT]}
payload=${2:?}
work=${3:?}
timeout_s=${4:-300}
scenarios=${5:-all}
[[ $scenarios =~ ^[0-9a-z,]+$ ]] || { echo "boot-guest: bad SCENARIOS $scenarios" >&2; exit 2; }
mkdir -p "$work"
# The kernel takes concatenated archives, but an uncompressed cpio must
# start 4-byte aligned: pad the gzip member with zeros, which it skips.
cp "$cache/base.cpio.gz" "$work/initrd.img"
pad=$(((4 - $(stat -c %s "$work/initrd.img") % 4) % 4))
head -c "$pad" /dev/zero >>"$work/initrd.img"
cat "$payload" >>"$work/initrd.img"
rm -f "$work/disk1.img" "$work/disk2.img"
truncate -s 192M "$work/disk1.img" # thick VG
truncate -s 512M "$work/disk2.img" # VG with a 256 MiB thin pool
set +e
timeout --kill-after=10 "$timeout_s" qemu-system-x86_64 -accel tcg -m 1024 -smp 2 -nographic -no-reboot \
	-kernel "$cache/vmlinuz" -initrd "$work/initrd.img" \
	-drive file="$work/disk1.img",format=raw,if=virtio \
	-drive file="$work/disk2.img",format=raw,if=virtio \
	-append "console=ttyS0 quiet panic=-1 forknode.scenarios=$scenarios" </dev/null | tee "$work/console.log"
qrc=${PIPESTATUS[0]}
set -e
rm -f "$work/disk1.img" "$work/disk2.img" "$work/initrd.img"
if [[ $qrc -eq 124 || $qrc -eq 137 ]]; then
	echo "boot-guest: timed out after ${timeout_s}s" >&2
	exit 124
fi
rc=$(sed -n 's/.*===FORKNODE-GUEST-END rc=\([0-9]*\)===.*/\1/p' "$work/console.log" | tail -1)
if [[ -z $rc ]]; then
	echo "boot-guest: no END marker on the console (qemu exit $qrc)" >&2
	exit 1
fi
exit "$rc"
