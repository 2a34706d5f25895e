#!/usr/bin/env bash
# build-guest.sh CACHE_DIR
#
# Builds (once) what the LVM qemu guest boots: Debian's kernel, the modules
# LVM needs and a base initramfs with busybox, lvm, dmsetup and
# thin-provisioning-tools. The host kernel has no device-mapper, so real LVM
# only runs inside this guest (see shared/notes/lvm-in-qemu.md).
#
# Outputs, cached in CACHE_DIR:
#   CACHE_DIR/vmlinuz         the guest kernel
#   CACHE_DIR/base.cpio.gz    the base initramfs (no payload)
#   CACHE_DIR/stamp           inputs hash; a changed script or init rebuilds
#
# The payload (test binaries, scenarios) is a second cpio made by
# build-payload.sh and appended at boot; the kernel unpacks both.
set -euo pipefail

CACHE_DIR=${1:?usage: build-guest.sh CACHE_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$CACHE_DIR"
CACHE_DIR=$(cd "$CACHE_DIR" && pwd)

log() { echo "build-guest: $*" >&2; }

# The stamp covers this script and the guest-side files baked into the base.
stamp=$(cat "$0" "$HERE/guest-init.sh" "$HERE/lvm.conf" | sha256sum | cut -d' ' -f1)
if [[ -f $CACHE_DIR/stamp && $(cat "$CACHE_DIR/stamp") == "$stamp" &&
	-f $CACHE_DIR/vmlinuz && -f $CACHE_DIR/base.cpio.gz ]]; then
	log "cached in $CACHE_DIR"
	exit 0
fi

# Host tools, installed only when missing.
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v lvm >/dev/null || need+=(lvm2)
# A static busybox: ldd fails on a static binary.
{ [[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1; } || need+=(busybox-static)
command -v depmod >/dev/null || need+=(kmod)
command -v cpio >/dev/null || need+=(cpio)
command -v pdata_tools >/dev/null || [[ -x /usr/sbin/pdata_tools ]] || need+=(thin-provisioning-tools)
if ((${#need[@]})); then
	log "installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# thin-provisioning-tools is optional: lvm.conf then disables thin_check.
	apt-get install -y -qq "${need[@]/thin-provisioning-tools/}" >/dev/null
	if [[ " ${need[*]} " == *" thin-provisioning-tools "* ]]; then
		apt-get install -y -qq thin-provisioning-tools >/dev/null || log "thin-provisioning-tools unavailable"
	fi
fi
BUSYBOX=$(command -v busybox || echo /bin/busybox)
# Module subtrees LVM and virtio disks need: dm-*, persistent-data,
# virtio_blk, virtio_pci, libcrc32c and the crc32c it loads.
MODULE_SUBTREES="drivers/md drivers/block drivers/virtio lib crypto arch/x86/crypto"

# The kernel: the package linux-image-amd64 depends on.
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
if [[ -z $kpkg ]]; then
	apt-get update -qq
	kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
fi
[[ -n $kpkg ]] || { log "cannot resolve the kernel package of linux-image-amd64"; exit 1; }
kver=${kpkg#linux-image-}
kdir=$CACHE_DIR/kernel-$kver
if [[ ! -d $kdir/lib/modules/$kver ]]; then
	log "downloading $kpkg"
	dl=$(mktemp -d "$CACHE_DIR/dl.XXXXXX")
	(cd "$dl" && apt-get download -qq "$kpkg")
	rm -rf "$kdir.full" "$kdir.tmp"
	dpkg -x "$dl"/"$kpkg"_*.deb "$kdir.full"
	# Keep only the kernel and the module subtrees the guest needs (the
	# whole package unpacks to ~400 MB).
	mkdir -p "$kdir.tmp/boot" "$kdir.tmp/lib/modules/$kver/kernel"
	cp "$kdir.full/boot/vmlinuz-$kver" "$kdir.tmp/boot/"
	for sub in $MODULE_SUBTREES; do
		if [[ -d $kdir.full/lib/modules/$kver/kernel/$sub ]]; then
			mkdir -p "$kdir.tmp/lib/modules/$kver/kernel/$sub"
			cp -a "$kdir.full/lib/modules/$kver/kernel/$sub/." "$kdir.tmp/lib/modules/$kver/kernel/$sub/"
		fi
	done
	cp -a "$kdir.full/lib/modules/$kver"/modules.order "$kdir.full/lib/modules/$kver"/modules.builtin* "$kdir.tmp/lib/modules/$kver/" 2>/dev/null || true
	rm -rf "$dl" "$kdir" "$kdir.full"
	mv "$kdir.tmp" "$kdir"
fi
cp "$kdir/boot/vmlinuz-$kver" "$CACHE_DIR/vmlinuz.tmp"
mv "$CACHE_DIR/vmlinuz.tmp" "$CACHE_DIR/vmlinuz"

root=$(mktemp -d "$CACHE_DIR/root.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc/lvm,proc,sys,dev,run,tmp,mnt,payload}

# Modules: only the subtrees LVM and virtio disks need; depmod makes
# modules.dep, which the Debian package does not ship.
msrc=$kdir/lib/modules/$kver
mdst=$root/lib/modules/$kver
for sub in $MODULE_SUBTREES; do
	if [[ -d $msrc/kernel/$sub ]]; then
		mkdir -p "$mdst/kernel/$sub"
		cp -a "$msrc/kernel/$sub/." "$mdst/kernel/$sub/"
	fi
done
cp -a "$msrc"/modules.order "$msrc"/modules.builtin* "$mdst/" 2>/dev/null || true
depmod -b "$root" "$kver"

# Userspace: static busybox, lvm, dmsetup, thin tools and their libraries.
cp "$BUSYBOX" "$root/bin/busybox"
bins=(/usr/sbin/lvm /usr/sbin/dmsetup)
[[ -x /usr/sbin/pdata_tools ]] && bins+=(/usr/sbin/pdata_tools)
for b in "${bins[@]}"; do
	cp "$b" "$root$b"
	ldd "$b" | awk '/=> \//{print $3} /^\s*\/lib/{print $1}' | while read -r lib; do
		[[ -e $root$lib ]] && continue
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done
done
# The dynamic loader under the name binaries ask for.
mkdir -p "$root/lib64"
cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
if [[ -x $root/usr/sbin/pdata_tools ]]; then
	for t in thin_check thin_repair thin_dump thin_restore cache_check; do
		ln -s pdata_tools "$root/usr/sbin/$t"
	done
	cp "$HERE/lvm.conf" "$root/etc/lvm/lvm.conf"
else
	sed 's|thin_check_executable = "/usr/sbin/thin_check"|thin_check_executable = ""|' \
		"$HERE/lvm.conf" >"$root/etc/lvm/lvm.conf"
fi
cp "$HERE/guest-init.sh" "$root/init"
chmod 0755 "$root/init"
echo "$kver" >"$root/etc/guest-kernel"

(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -6 >"$CACHE_DIR/base.cpio.gz.tmp"
mv "$CACHE_DIR/base.cpio.gz.tmp" "$CACHE_DIR/base.cpio.gz"
echo "$stamp" >"$CACHE_DIR/stamp"
log "built kernel $kver and base initramfs ($(du -h "$CACHE_DIR/base.cpio.gz" | cut -f1)) in $CACHE_DIR"
