#!/bin/sh
# After every test, no forknode-tagged LV may remain in either VG: each test
# removes what it made, even when it fails.
list_owned() {
	lvm lvs --noheadings -o vg_name,lv_name,lv_tags --select 'tags=forknode' "$FORKNODE_LVM_VG" "$FORKNODE_LVM_THIN_VG"
}
# First prove the check can see a tagged LV at all.
lvm lvcreate -q -y -L 4M -n canary --addtag forknode "$FORKNODE_LVM_VG" >/dev/null || exit 1
seen=$(list_owned)
lvm lvremove -q -y "$FORKNODE_LVM_VG/canary" >/dev/null || exit 1
case $seen in
*canary*) ;;
*)
	echo "the leftover check does not see a tagged LV: $seen"
	exit 1
	;;
esac
left=$(list_owned)
if [ -n "$left" ]; then
	echo "leftover forknode LVs:"
	echo "$left"
	exit 1
fi
echo "no forknode-tagged LVs left"
lvm lvs -a "$FORKNODE_LVM_VG" "$FORKNODE_LVM_THIN_VG"
