#!/bin/sh
# Two forknode agents in the guest, host "thick" on the thick VG and host
# "thin" on the VG with a thin pool, joined over the guest's loopback. It
# forks through every LVM path with the real binary and checks the bytes:
#   copy   (thick: classic snapshot + copy engine, on host thick)
#   clone  (thin snapshot, on host thin)
#   stream (thick -> thin, through the block stream)
#   stream (thin -> thick: the source reads only what its thin map holds)
# and that the catalog reserves a thick snapshot's copy-on-write area, that
# a killed stream target resumes, and that a nearly full thin pool takes
# no new work.
# Skipped (77) when the payload has no forknode binary.
command -v forknode >/dev/null 2>&1 || { echo "no forknode binary in the payload: skipped"; exit 77; }
d=/tmp/cluster
mkdir -p "$d"
ip link set lo up

pids=""
stop_agents() {
	for p in $pids; do kill "$p" 2>/dev/null; done
	for p in $pids; do
		i=0
		while kill -0 "$p" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
		kill -9 "$p" 2>/dev/null
	done
	pids=""
}
fail() {
	echo "FAIL: $*"
	for h in thick thin; do
		echo "--- agent $h log (tail)"
		tail -n 40 "$d/$h.log"
	done
	stop_agents
	remove_probes
	exit 1
}
# The agents make their pacing probe LVs; nothing else removes them.
remove_probes() {
	for vg in "$FORKNODE_LVM_VG" "$FORKNODE_LVM_THIN_VG"; do
		lvm lvs "$vg/forknode-ioprobe" >/dev/null 2>&1 && lvm lvremove -q -y "$vg/forknode-ioprobe" >/dev/null
	done
	return 0
}
remove_probes # none may be there yet: the agent's first start makes it

forknode keygen -o "$d/key" >/dev/null || fail "keygen"
FORKNODE_TOKEN=$(forknode token --key "$d/key") || fail "token"
export FORKNODE_TOKEN FORKNODE_ADDR=http://127.0.0.1:7948

agent() { # name ip vg join [more flags]
	n=$1 ip=$2 vg=$3 join=$4
	shift 4
	forknode agent --name "$n" --data-dir "$d/$n" --gossip-addr "$ip:7946" --cluster-addr "$ip:7947" \
		--api-addr "$ip:7948" --join "$join" --bootstrap-expect 2 --region guest --backend lvm --vg "$vg" \
		--key "$d/key" --log-level info "$@" >>"$d/$n.log" 2>&1 &
	last=$!
	pids="$pids $last"
}
# No --pace-probe: on LVM the agent makes its pacing probe an LV of its own
# (PVs carry no file system for a probe file), untagged, so not a volume.
agent thick 127.0.0.1 "$FORKNODE_LVM_VG" 127.0.0.2:7946
thick_pid=$last
agent thin 127.0.0.2 "$FORKNODE_LVM_THIN_VG" 127.0.0.1:7946

# Ready = a leader is elected and both hosts are registered in the
# catalog (the HOST table), not merely gossiping.
ready() {
	forknode status >"$d/status" 2>&1 || return 1
	grep -q "leader (none)" "$d/status" && return 1
	awk '/^HOST /{h=1; next} h && ($1 == "thick" || $1 == "thin") {n++} END {exit n < 2}' "$d/status"
}
i=0
until ready; do
	i=$((i + 1))
	[ $i -lt 120 ] || fail "cluster did not form in 60 s: $(cat "$d/status")"
	sleep 0.5
done
cat "$d/status"
echo "cluster formed after ${i} polls"
# The thick host made its probe LV and the probe claimed it: each write
# starts with its magic.
grep -q "no probe LV\|no I/O probe" "$d/thick.log" && fail "probe LV: $(grep 'no probe LV\|no I/O probe' "$d/thick.log")"
probe=$(lvm lvs --noheadings -o lv_path "$FORKNODE_LVM_VG/forknode-ioprobe" | tr -d ' ')
[ -b "$probe" ] || fail "the agent made no probe LV ($probe)"
[ -z "$(lvm lvs --noheadings -o lv_tags "$FORKNODE_LVM_VG/forknode-ioprobe" | tr -d ' ')" ] || fail "the probe LV is tagged"
i=0
until [ "$(head -c 16 "$probe")" = "forknode-ioprobe" ]; do
	i=$((i + 1))
	[ $i -lt 40 ] || fail "probe LV not written by the probe"
	sleep 0.5
done
echo "pacing probe on LV $probe, made by the agent"

t0=$(date +%s)
fn() {
	echo "[+$(($(date +%s) - t0))s] forknode $*"
	timeout 120 forknode "$@" || fail "forknode $*"
}
# Removal is carried out by each host's executor: wait for the LVs to go.
lvs_gone() {
	n=0
	while [ -n "$(lvm lvs --noheadings -o lv_name --select tags=forknode "$FORKNODE_LVM_VG" "$FORKNODE_LVM_THIN_VG")" ]; do
		n=$((n + 1))
		[ $n -lt 60 ] || fail "volumes not removed: $(lvm lvs --noheadings -o lv_name --select tags=forknode)"
		sleep 0.5
	done
}
# lv_path of the volume named $1 (found by forknode's name tag).
lvpath() { lvm lvs --noheadings -o lv_path --select "tags=forknode-name:$1" | tr -d ' '; }

fn volume create db --size 32MiB --host thick --wait
src=$(lvpath db)
[ -b "$src" ] || fail "no LV for volume db"
# Known data in part of the volume; the rest stays zero.
dd if=/dev/urandom of="$src" bs=1M count=4 seek=4 conv=fsync 2>/dev/null || fail "write db"

fn fork db db-copy --via copy --wait
fn fork db db-stream --via stream --host thin --wait
fn volume create tdb --size 32MiB --host thin --wait
tsrc=$(lvpath tdb)
# Only db's data (MiB 4-8): the rest of the thin LV stays unmapped.
dd if="$src" of="$tsrc" bs=1M skip=4 seek=4 count=4 conv=fsync 2>/dev/null || fail "write tdb"
fn fork tdb tdb-clone --via clone --wait
fn fork tdb tdb-stream --via stream --host thick --wait
fn volume ls

# The thin host served tdb-stream from its snapshot's thin map: 4 MiB of
# 32 mapped (thin_dump on a metadata snapshot, released afterwards).
if command -v thin_dump >/dev/null 2>&1; then
	grep -q 'thin map read: .*size=33554432 mapped=4194304' "$d/thin.log" ||
		fail "no thin map of 4 MiB in the thin host's log: $(grep -i 'thin map' "$d/thin.log")"
	pool="$(echo "$FORKNODE_LVM_THIN_VG" | sed 's/-/--/g')-$(echo "$FORKNODE_LVM_THIN_POOL" | sed 's/-/--/g')-tpool"
	dmsetup status "$pool" | awk '{exit $7 != "-"}' || fail "metadata snapshot still held: $(dmsetup status "$pool")"
	[ -z "$(ls "$d/thin" | grep lvm-metadata-snap)" ] || fail "metadata snapshot marker left"
	echo "thin map: the stream read 4 MiB of 32; the metadata snapshot is released"
else
	echo "NOTE: no thin_dump in the guest: the thin-map check did not run (build-guest.sh installs thin-provisioning-tools)"
fi

for pair in "db db-copy" "db db-stream" "tdb tdb-clone" "tdb tdb-stream"; do
	set -- $pair
	a=$(lvpath "$1")
	b=$(lvpath "$2")
	[ -b "$b" ] || fail "no LV for fork $2"
	cmp "$a" "$b" || fail "fork $2 differs from $1"
	echo "fork $2 equals $1 ($b)"
done
lvm lvs -o vg_name,lv_name,lv_size,lv_attr,origin,pool_lv "$FORKNODE_LVM_VG" "$FORKNODE_LVM_THIN_VG"

# The catalog reserves a thick snapshot's copy-on-write area (catalog
# version 4). With a filler taking most of host thick's room (about 88 MiB
# free before it, 48 after), a copy of db needs 32 MiB for the fork and
# 36 MiB for its COW area: refused up front, with that reason, although a
# 32 MiB volume still fits.
fn volume create filler --size 40MiB --host thick --wait
if out=$(timeout 60 forknode fork db db-nofit --via copy 2>&1); then
	fail "a copy on host thick admitted without room for its COW area: $out"
fi
echo "$out" | grep -q "36 MiB for its snapshot, a classic LVM snapshot's copy-on-write area" ||
	fail "the refusal does not give the COW area as the reason: $out"
echo "refused up front: $out"
fn volume create fits --size 32MiB --host thick --wait
echo "thick COW area reserved: the fork was refused, its own size still fits"
fn volume rm fits --wait
fn volume rm filler --wait

# A stream target killed mid-stream (kill -9) and started again resumes
# from its checkpoint: it reads back what its LV holds with O_DIRECT and
# asks the source for the rest. The fork's own rate limit (at the
# target's writes) stretches rdb's 16 MiB of data to about 8 s.
fn volume create rdb --size 48MiB --host thin --wait
rsrc=$(lvpath rdb)
dd if=/dev/urandom of="$rsrc" bs=1M count=16 seek=8 conv=fsync 2>/dev/null || fail "write rdb"
out=$(timeout 60 forknode fork rdb rdb-stream --via stream --host thick --rate-limit 2MiB) || fail "fork rdb: $out"
rid=$(echo "$out" | sed -n 's/^fork \(fork_[0-9a-f]*\):.*/\1/p')
[ -n "$rid" ] || fail "no fork id in: $out"
ck="$d/thick/streams/$rid.json"
i=0
until [ -f "$ck" ] && [ "$(sed -n 's/.*"durable":\([0-9]*\).*/\1/p' "$ck")" -ge $((12 << 20)) ]; do
	i=$((i + 1))
	[ $i -lt 300 ] || fail "no checkpoint past 12 MiB in $ck: $(cat "$ck" 2>&1)"
	sleep 0.1
done
echo "checkpoint before the kill: $(cat "$ck")"
kill -9 "$thick_pid"
i=0
while kill -0 "$thick_pid" 2>/dev/null; do
	i=$((i + 1))
	[ $i -lt 50 ] || fail "agent thick did not die"
	sleep 0.1
done
agent thick 127.0.0.1 "$FORKNODE_LVM_VG" 127.0.0.2:7946
thick_pid=$last
i=0
until forknode forks show "$rid" 2>/dev/null | grep -q "^state: *ready"; do
	i=$((i + 1))
	[ $i -lt 240 ] || fail "fork $rid not ready after the target's restart: $(forknode forks show "$rid" 2>&1)"
	forknode forks show "$rid" 2>/dev/null | grep -q "^state: *failed" && fail "fork $rid failed: $(forknode forks show "$rid" 2>&1)"
	sleep 0.5
done
cmp "$rsrc" "$(lvpath rdb-stream)" || fail "rdb-stream differs from rdb after the resume"
grep "resuming from checkpoint" "$d/thick.log" || fail "the restarted target did not resume from its checkpoint"
grep "stream complete.*resumed=[1-9]" "$d/thick.log" || fail "the stream did not complete from its resume point"
[ ! -f "$ck" ] || fail "checkpoint $ck left after the fork"
echo "stream target restarted mid-stream resumed from its checkpoint on LVM"

for v in rdb-stream rdb db-copy db-stream tdb-clone tdb-stream db tdb; do
	fn volume rm "$v" --wait
done
lvs_gone

# A thin pool nearly full (data or metadata at 90 %) takes no new work,
# whatever the budget still says (240 of 256 MiB), until it is under 80 %
# again: writes to thin LVs that exist can fill a pool, and a full pool
# stops every LV in it.
fn volume create big --size 240MiB --host thin --wait
dd if=/dev/urandom of="$(lvpath big)" bs=1M count=236 conv=fsync 2>/dev/null || fail "fill big"
lvm lvs -o lv_name,data_percent,metadata_percent "$FORKNODE_LVM_THIN_VG/$FORKNODE_LVM_THIN_POOL"
i=0
until grep -q "thin pool nearly full" "$d/thin.log"; do
	i=$((i + 1))
	[ $i -lt 120 ] || fail "the thin host did not notice its pool filling up"
	sleep 0.5
done
grep "thin pool nearly full" "$d/thin.log" | tail -n 1
if out=$(timeout 60 forknode volume create small0 --size 8MiB --host thin --wait 2>&1); then
	fail "a volume was created on a nearly full thin pool: $out"
fi
# Refused by the catalog (the host advertises a budget of 0), not by a
# timeout or the backend after the fact.
echo "$out" | grep -q "host thin has 0 B free" || fail "not refused for the pool: $out"
echo "refused on a nearly full pool: $out"
fn volume rm big --wait
i=0
until out=$(timeout 60 forknode volume create "small$i" --size 8MiB --host thin --wait 2>&1); do
	i=$((i + 1))
	[ $i -lt 60 ] || fail "no room on the thin host after the pool emptied: $out"
	sleep 1
done
grep -q "thin pool has room again" "$d/thin.log" || fail "the thin host did not log its pool's room"
fn volume rm "small$i" --wait
echo "thin pool nearly full: no new work until it had room again"
lvs_gone
stop_agents
lvm lvremove -q -y "$FORKNODE_LVM_VG/forknode-ioprobe" >/dev/null || fail "lvremove probe LV"
remove_probes
echo "two-host cluster on real LVM: copy, stream and clone forks verified"
