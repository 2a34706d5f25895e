#!/bin/sh
# run.sh: the payload entry point inside the qemu guest (started by /init).
#
# It turns the two virtio disks into volume groups, exports their names for
# the tests, then runs every scenario in /payload/scenarios in name order.
# A scenario is a sh script; exit 0 = pass, 77 = skipped (a missing
# optional binary), anything else = fail. To add one (e.g. a two-host
# cluster with one forknode agent per VG) drop NN-name.sh into scenarios/:
# it finds the binaries in /payload/bin and the VGs in the FORKNODE_LVM_*
# variables. The host reads the markers below from the serial console.
# forknode.scenarios=10,20,90 on the kernel command line runs only those
# numbers (boot-guest.sh passes it); "all" or nothing runs every one.
export PATH=/payload/bin:/usr/sbin:/usr/bin:/sbin:/bin
export FORKNODE_LVM_VG=fnthick
export FORKNODE_LVM_THIN_VG=fnthin
export FORKNODE_LVM_THIN_POOL=pool

/payload/provision-vg.sh /dev/vda "$FORKNODE_LVM_VG" || { echo "FORKNODE-GUEST-RESULT: FAIL (provision $FORKNODE_LVM_VG)"; exit 1; }
/payload/provision-vg.sh /dev/vdb "$FORKNODE_LVM_THIN_VG" "$FORKNODE_LVM_THIN_POOL" 256M || { echo "FORKNODE-GUEST-RESULT: FAIL (provision $FORKNODE_LVM_THIN_VG)"; exit 1; }

want=$(sed -n 's/.*forknode\.scenarios=\([0-9a-z,]*\).*/\1/p' /proc/cmdline)
want=${want:-all}
fail=""
ran=0
for s in /payload/scenarios/*.sh; do
	[ -f "$s" ] || continue
	name=$(basename "$s" .sh)
	case ",$want," in
	*",all,"* | *",${name%%-*},"*) ;;
	*) continue ;;
	esac
	ran=$((ran + 1))
	echo "=== SCENARIO $name BEGIN"
	start=$(date +%s)
	sh "$s"
	rc=$?
	echo "=== SCENARIO $name END rc=$rc secs=$(($(date +%s) - start))"
	case $rc in
	0 | 77) ;;
	*) fail="$fail $name" ;;
	esac
done
if [ "$ran" -eq 0 ]; then
	echo "FORKNODE-GUEST-RESULT: FAIL (no scenario matched $want)"
	exit 1
fi
if [ -n "$fail" ]; then
	echo "FORKNODE-GUEST-RESULT: FAIL ($fail )"
	exit 1
fi
echo "FORKNODE-GUEST-RESULT: PASS"
