#!/bin/sh
# provision-vg.sh DEVICE VG [THIN_POOL [POOL_SIZE]]
#
# Makes DEVICE a physical volume and creates volume group VG on it; with
# THIN_POOL also a thin pool of POOL_SIZE (an lvcreate size such as 256M,
# default 90%FREE). Idempotent: an existing VG is left as it is. Shared by
# the qemu guest (busybox sh) and the Vagrant VMs, so it is plain POSIX sh
# and calls every tool as "lvm <command>".
set -eu
dev=${1:?usage: provision-vg.sh DEVICE VG [THIN_POOL [POOL_SIZE]]}
vg=${2:?usage: provision-vg.sh DEVICE VG [THIN_POOL [POOL_SIZE]]}
pool=${3:-}
pool_size=${4:-90%FREE}

if lvm vgs "$vg" >/dev/null 2>&1; then
	echo "provision-vg: volume group $vg exists"
else
	lvm pvcreate -y -ff "$dev"
	lvm vgcreate -y "$vg" "$dev"
fi
if [ -n "$pool" ] && ! lvm lvs "$vg/$pool" >/dev/null 2>&1; then
	case $pool_size in
	*%*) size_flag="-l" ;;
	*) size_flag="-L" ;;
	esac
	# Zeroing new pool blocks (-Z y) keeps a partial write to a fresh block
	# from exposing what an earlier thin LV left there.
	lvm lvcreate -y --type thin-pool -Z y "$size_flag" "$pool_size" -n "$pool" "$vg"
fi
lvm vgs "$vg"
