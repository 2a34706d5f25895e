#!/usr/bin/env bash
# stream.sh IMG: stream a volume image between two hosts in network
# namespaces, forknode's transfer against the shell pipeline baseline.
#
#   baseline  ns A: dd if=SRC bs=1M | zstd -1 -T0 | socat -u - TCP:B:PORT
#             ns B: socat -u TCP-LISTEN:PORT - | zstd -d | dd of=OUT bs=1M iflag=fullblock conv=sparse,fdatasync
#   forknode  ns A: streambench serve (internal/transfer server, extents from SEEK_DATA)
#             ns B: streambench pull  (internal/transfer Pull into a sparse file, durable)
#
# Each round runs the baseline, then forknode with every codec, caches
# dropped before each run; the wall time runs from starting the sender
# until the receiver is durable. Sources: the image file ("file") and the
# same image as a read-only loop device ("loop", where SEEK_DATA does not
# help and the sender has to scan).
#
# Last, the memory bound at 16 GiB: the image grown to a sparse 16 GiB file
# is streamed once per codec (forknode only: dd would read 14 GiB of zeros),
# printing `BENCH name=stream_rss ...` (STREAM_BIG=0 skips it).
#
# Env: STREAM_PAIRS (rounds, default 5), STREAM_CODECS (default "zstd s2"),
# STREAM_SOURCES (default "file loop"), STREAM_WORK (scratch dir, default a
# new dir beside IMG), STREAM_CPUPROFILE (a directory: each forknode run
# writes SRC-CODEC-ROUND.{serve,pull}.pprof there), STREAM_SERVE_ENV and
# STREAM_PULL_ENV (VAR=value words for that side's process, e.g.
# GOMAXPROCS=1), STREAM_SERVE_FLAGS (more streambench serve flags, e.g.
# "-chunk 524288"), STREAM_LOOP_DIO=1 (the loop source with losetup
# --direct-io=on). Prints RUN lines per transfer and BENCH lines per source
# and codec:
#   wall_ratio_median  median over rounds of forknode wall / baseline wall (lower is better)
#   mbps               volume size / forknode wall, MB/s (median)
#   *_cpu_s            user+sys CPU seconds of the sending/receiving side (median)
#   wire_bytes         bytes received on B's veth during the run (IP+TCP included; median)
#   *_rss_mb           peak RSS of the largest process on that side (max over rounds)
#   host_busy_s        CPU seconds the whole machine was busy during the run, both sides and
#                      kernel work (loop driver, softirqs, writeback) included (median)
#   cmp                every result compared byte for byte with the source (imgcmp: cmp(1) that skips common holes)
# RUN lines also carry start= and end= (epoch seconds of the timed span), to line
# them up with a sampler running beside the script.
#
# Needs root, iproute2 (netns, veth), socat, zstd, GNU time (/usr/bin/time).
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 IMG" >&2; exit 2; }
IMG=$(readlink -f "$1")
PAIRS=${STREAM_PAIRS:-5}
CODECS=${STREAM_CODECS:-zstd s2}
SOURCES=${STREAM_SOURCES:-file loop}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
export PATH=/usr/local/go/bin:/usr/sbin:/sbin:$PATH

[ "$(id -u)" = 0 ] || { echo "stream.sh: needs root (netns, loop device)" >&2; exit 1; }
for c in ip socat zstd dd losetup /usr/bin/time go; do
	command -v "$c" >/dev/null || { echo "stream.sh: missing $c" >&2; exit 1; }
done
[ -f "$IMG" ] || { echo "stream.sh: no image $IMG" >&2; exit 1; }

SUF=$$
NSA=fnbench-a-$SUF
NSB=fnbench-b-$SUF
VA=fnba$SUF
VB=fnbb$SUF
ADDR_A=10.214.0.1
ADDR_B=10.214.0.2
if [ -n "${STREAM_WORK:-}" ]; then
	WORK=$STREAM_WORK
	mkdir -p "$WORK"
	OWN_WORK=
else
	WORK=$(mktemp -d "$(dirname "$IMG")/stream.XXXXXX")
	OWN_WORK=1
fi
LOOP=
PIDS=()

cleanup() {
	local rc=$?
	set +e
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
	ip netns del "$NSA" 2>/dev/null
	ip netns del "$NSB" 2>/dev/null
	[ -n "$LOOP" ] && losetup -d "$LOOP"
	rm -f "$WORK/out.img"
	[ -n "$OWN_WORK" ] && rm -rf "$WORK"
	exit $rc
}
trap cleanup EXIT INT TERM

log() { printf '[stream %s] %s\n' "$(date -u +%T)" "$*" >&2; }

# --- hosts ------------------------------------------------------------------
ip netns add "$NSA"
ip netns add "$NSB"
ip link add "$VA" type veth peer name "$VB"
ip link set "$VA" netns "$NSA"
ip link set "$VB" netns "$NSB"
ip -n "$NSA" addr add "$ADDR_A/24" dev "$VA"
ip -n "$NSB" addr add "$ADDR_B/24" dev "$VB"
for ns in "$NSA" "$NSB"; do ip -n "$ns" link set lo up; done
ip -n "$NSA" link set "$VA" up
ip -n "$NSB" link set "$VB" up

SB=$WORK/streambench
IC=$WORK/imgcmp
(cd "$ROOT" && go build -o "$SB" ./test/e2e/bench/cmd/streambench && go build -o "$IC" ./test/e2e/bench/cmd/imgcmp)

SIZE=$(stat -c %s "$IMG")
OUT=$WORK/out.img
PORT=47000
TIMEFMT='%e %U %S %M'

rx_bytes() { ip netns exec "$NSB" cat "/sys/class/net/$VB/statistics/rx_bytes"; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
# cpu_rss FILE: "cpu_seconds rss_kb" from a GNU time -f "$TIMEFMT" file.
cpu_rss() { tail -n1 "$1" | awk '{printf "%.2f %d", $2 + $3, $4}'; }
# host_cpu: "busy idle" jiffies of the whole machine (both "hosts" share it,
# and kernel work such as the loop driver, softirqs and writeback is in no
# process's rusage). idle counts iowait too.
host_cpu() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat; }
HZ=$(getconf CLK_TCK)
wait_listen() { # wait_listen NS PORT
	for _ in $(seq 500); do
		ip netns exec "$1" ss -Hltn "sport = :$2" | grep -q . && return 0
		sleep 0.01
	done
	echo "nothing listens on $2 in $1" >&2
	return 1
}

# record KIND CODEC SRCNAME ROUND SRC T0 T1 RX0 — verify and print a RUN line.
# HOST0 and HOST1 hold host_cpu readings taken at T0 and T1.
record() {
	local kind=$1 codec=$2 src=$3 round=$4 path=$5 t0=$6 t1=$7 rx0=$8
	local rx1 secs scpu srss rcpu rrss ok=ok hbusy hidle
	rx1=$(rx_bytes)
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b - a}')
	read -r scpu srss <<<"$(cpu_rss "$WORK/send.time")"
	read -r rcpu rrss <<<"$(cpu_rss "$WORK/recv.time")"
	read -r hbusy hidle <<<"$(awk -v hz="$HZ" -v a="$HOST0" -v b="$HOST1" 'BEGIN{split(a, x, " "); split(b, y, " "); printf "%.2f %.2f", (y[1]-x[1])/hz, (y[2]-x[2])/hz}')"
	[ "$(stat -c %s "$OUT")" = "$SIZE" ] || ok=SIZE
	"$IC" "$path" "$OUT" >&2 || ok=DIFF # cmp(1), faster on sparse images
	local alloc
	alloc=$(du --block-size=1 "$OUT" | cut -f1)
	echo "RUN kind=$kind codec=$codec src=$src round=$round seconds=$secs send_cpu_s=$scpu recv_cpu_s=$rcpu send_rss_kb=$srss recv_rss_kb=$rrss host_busy_s=$hbusy host_idle_s=$hidle wire_bytes=$((rx1 - rx0)) out_allocated=$alloc cmp=$ok start=$t0 end=$t1" | tee -a "$WORK/runs"
	rm -f "$OUT"
	[ "$ok" = ok ] || { echo "stream.sh: $kind $codec $src round $round: result differs from source ($ok)" >&2; return 1; }
}

run_baseline() { # run_baseline SRCNAME ROUND PATH
	local src=$1 round=$2 path=$3 t0 t1 rx0 rpid
	PORT=$((PORT + 1))
	rm -f "$OUT"
	drop_caches
	ip netns exec "$NSB" /usr/bin/time -f "$TIMEFMT" -o "$WORK/recv.time" sh -c \
		"socat -u TCP-LISTEN:$PORT,bind=$ADDR_B,reuseaddr - | zstd -d -q | dd of='$OUT' bs=1M iflag=fullblock conv=sparse,fdatasync status=none" &
	rpid=$!
	PIDS+=("$rpid")
	wait_listen "$NSB" "$PORT"
	rx0=$(rx_bytes)
	HOST0=$(host_cpu)
	t0=$(now)
	ip netns exec "$NSA" /usr/bin/time -f "$TIMEFMT" -o "$WORK/send.time" sh -c \
		"dd if='$path' bs=1M status=none | zstd -1 -T0 -q | socat -u - TCP:$ADDR_B:$PORT"
	wait "$rpid"
	t1=$(now)
	HOST1=$(host_cpu)
	PIDS=()
	record baseline zstd-1 "$src" "$round" "$path" "$t0" "$t1" "$rx0"
}

run_ours() { # run_ours SRCNAME ROUND PATH CODEC
	local src=$1 round=$2 path=$3 codec=$4 t0 t1 rx0 spid
	local sprof=() pprof=()
	if [ -n "${STREAM_CPUPROFILE:-}" ]; then
		mkdir -p "$STREAM_CPUPROFILE"
		sprof=(-cpuprofile "$STREAM_CPUPROFILE/$src-$codec-$round.serve.pprof")
		pprof=(-cpuprofile "$STREAM_CPUPROFILE/$src-$codec-$round.pull.pprof")
	fi
	PORT=$((PORT + 1))
	rm -f "$OUT"
	drop_caches
	rx0=$(rx_bytes)
	HOST0=$(host_cpu)
	t0=$(now)
	ip netns exec "$NSA" env ${STREAM_SERVE_ENV:-} /usr/bin/time -f "$TIMEFMT" -o "$WORK/send.time" \
		"$SB" serve -listen "$ADDR_A:$PORT" -src "$path" -codec "$codec" ${STREAM_SERVE_FLAGS:-} "${sprof[@]}" 2>"$WORK/serve.log" &
	spid=$!
	PIDS+=("$spid")
	ip netns exec "$NSB" env ${STREAM_PULL_ENV:-} /usr/bin/time -f "$TIMEFMT" -o "$WORK/recv.time" \
		"$SB" pull -connect "$ADDR_A:$PORT" -out "$OUT" -size "$SIZE" "${pprof[@]}" >"$WORK/pull.out"
	t1=$(now)
	HOST1=$(host_cpu)
	wait "$spid"
	PIDS=()
	grep -h '^SERVE' "$WORK/serve.log" >&2 || true
	cat "$WORK/pull.out" >&2
	record forknode "$codec" "$src" "$round" "$path" "$t0" "$t1" "$rx0"
}

for src in $SOURCES; do
	case $src in
	file) path=$IMG ;;
	loop)
		# STREAM_LOOP_DIO=1: the loop driver reads its backing file with
		# direct I/O (no second copy in the page cache), for baseline and
		# forknode alike. An experiment, not the issue's workload.
		if [ "${STREAM_LOOP_DIO:-0}" = 1 ]; then
			LOOP=$(losetup -r --direct-io=on --find --show "$IMG")
			log "loop device $LOOP: direct I/O $(cat "/sys/block/${LOOP#/dev/}/loop/dio")"
		else
			LOOP=$(losetup -r --find --show "$IMG")
		fi
		path=$LOOP
		;;
	*) echo "stream.sh: unknown source $src" >&2; exit 2 ;;
	esac
	for round in $(seq "$PAIRS"); do
		log "src=$src round $round/$PAIRS"
		run_baseline "$src" "$round" "$path"
		for codec in $CODECS; do
			run_ours "$src" "$round" "$path" "$codec"
		done
	done
	if [ -n "$LOOP" ]; then losetup -d "$LOOP"; LOOP=; fi
done

# --- 16 GiB: peak RSS must not grow with the volume -------------------------
if [ "${STREAM_BIG:-1}" != 0 ]; then
	BIG=$WORK/big16.img
	cp --sparse=always "$IMG" "$BIG"
	truncate -s 16G "$BIG"
	BIGSIZE=$(stat -c %s "$BIG")
	for codec in $CODECS; do
		log "src=sparse16g codec=$codec"
		SAVE_SIZE=$SIZE
		SIZE=$BIGSIZE
		run_ours sparse16g 1 "$BIG" "$codec"
		SIZE=$SAVE_SIZE
		line=$(grep -F ' src=sparse16g ' "$WORK/runs" | grep -F " codec=$codec " | tail -n1)
		secs=$(sed -nE 's/.* seconds=([^ ]+).*/\1/p' <<<"$line")
		srss=$(sed -nE 's/.* send_rss_kb=([^ ]+).*/\1/p' <<<"$line")
		rrss=$(sed -nE 's/.* recv_rss_kb=([^ ]+).*/\1/p' <<<"$line")
		cmpres=$(sed -nE 's/.* cmp=([^ ]+).*/\1/p' <<<"$line")
		echo "BENCH name=stream_rss src=sparse16g codec=$codec size=$BIGSIZE seconds=$secs" \
			"send_rss_mb=$(awk -v k="$srss" 'BEGIN{printf "%.1f", k/1024}') recv_rss_mb=$(awk -v k="$rrss" 'BEGIN{printf "%.1f", k/1024}') cmp=$cmpres"
	done
	rm -f "$BIG"
	# The summary below is over the 2 GiB runs only.
	grep -vF ' src=sparse16g ' "$WORK/runs" >"$WORK/runs.2g" || true
	mv "$WORK/runs.2g" "$WORK/runs"
fi

# --- summary ----------------------------------------------------------------
# field NAME LINE-FILTER...: values of NAME= on the RUN lines matching all filters.
field() {
	local name=$1; shift
	local lines
	lines=$(cat "$WORK/runs")
	for f in "$@"; do lines=$(grep -F " $f " <<<"$lines" || true); done
	sed -nE "s/.* $name=([^ ]+).*/\1/p" <<<"$lines"
}
median() { sort -g | awk '{v[NR]=$1} END{if(NR==0){print "nan"; exit} if(NR%2) print v[(NR+1)/2]; else printf "%.4f\n", (v[NR/2]+v[NR/2+1])/2}'; }
maxv() { sort -g | tail -n1; }

for src in $SOURCES; do
	b_secs=$(field seconds kind=baseline "src=$src")
	b_med=$(median <<<"$b_secs")
	b_line="baseline_mbps=$(awk -v s="$SIZE" -v t="$b_med" 'BEGIN{printf "%.1f", s/1e6/t}') baseline_seconds=$b_med"
	b_line+=" baseline_send_cpu_s=$(field send_cpu_s kind=baseline "src=$src" | median)"
	b_line+=" baseline_recv_cpu_s=$(field recv_cpu_s kind=baseline "src=$src" | median)"
	b_line+=" baseline_host_busy_s=$(field host_busy_s kind=baseline "src=$src" | median)"
	b_line+=" baseline_wire_bytes=$(field wire_bytes kind=baseline "src=$src" | median)"
	b_line+=" baseline_send_rss_mb=$(field send_rss_kb kind=baseline "src=$src" | maxv | awk '{printf "%.1f", $1/1024}')"
	b_line+=" baseline_recv_rss_mb=$(field recv_rss_kb kind=baseline "src=$src" | maxv | awk '{printf "%.1f", $1/1024}')"
	for codec in $CODECS; do
		o_secs=$(field seconds kind=forknode "codec=$codec" "src=$src")
		ratio=$(paste -d' ' <(echo "$o_secs") <(echo "$b_secs") | awk '{printf "%.4f\n", $1/$2}' | median)
		o_med=$(median <<<"$o_secs")
		mbps=$(awk -v s="$SIZE" -v t="$o_med" 'BEGIN{printf "%.1f", s/1e6/t}')
		wire=$(field wire_bytes kind=forknode "codec=$codec" "src=$src" | median)
		bad=$(grep -F " src=$src " "$WORK/runs" | grep -c -v ' cmp=ok' || true)
		cmpres=ok
		[ "$bad" = 0 ] || cmpres="FAILED($bad)"
		echo "BENCH name=stream src=$src codec=$codec pairs=$PAIRS size=$SIZE wall_ratio_median=$ratio mbps=$mbps seconds=$o_med" \
			"send_cpu_s=$(field send_cpu_s kind=forknode "codec=$codec" "src=$src" | median)" \
			"recv_cpu_s=$(field recv_cpu_s kind=forknode "codec=$codec" "src=$src" | median)" \
			"host_busy_s=$(field host_busy_s kind=forknode "codec=$codec" "src=$src" | median)" \
			"wire_bytes=$wire wire_ratio=$(awk -v a="$wire" -v b="$(field wire_bytes kind=baseline "src=$src" | median)" 'BEGIN{printf "%.3f", a/b}')" \
			"send_rss_mb=$(field send_rss_kb kind=forknode "codec=$codec" "src=$src" | maxv | awk '{printf "%.1f", $1/1024}')" \
			"recv_rss_mb=$(field recv_rss_kb kind=forknode "codec=$codec" "src=$src" | maxv | awk '{printf "%.1f", $1/1024}')" \
			"$b_line cmp=$cmpres"
	done
done
