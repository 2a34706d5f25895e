#!/bin/busybox sh
# /init of the LVM qemu guest. It loads the device-mapper and virtio
# modules, runs /payload/run.sh (appended to the initramfs by
# build-payload.sh) and powers off. Everything between the BEGIN and END
# markers on the serial console is the payload's output; the host reads the
# rc from the END marker.
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TMPDIR=/tmp LC_ALL=C
mkdir -p /proc /sys /dev /run /tmp /root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/lock/lvm /run/lvm
echo 4 >/proc/sys/kernel/printk

# crc32c_generic first: libcrc32c needs the crc32c algorithm, a soft
# dependency that busybox modprobe does not follow.
for m in virtio_pci virtio_blk crc32c_generic dm_mod dm_bufio dm_snapshot dm_thin_pool; do
	modprobe "$m" || echo "guest-init: modprobe $m failed"
done
# virtio disks appear asynchronously after virtio_pci loads.
i=0
while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done

echo "===FORKNODE-GUEST-BEGIN==="
if [ -x /payload/run.sh ]; then
	/payload/run.sh
	rc=$?
else
	echo "guest-init: no /payload/run.sh in the initramfs"
	rc=2
fi
echo "===FORKNODE-GUEST-END rc=$rc==="
sync
poweroff -f
