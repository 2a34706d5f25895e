#!/usr/bin/env bash
# The benchmark suite: `make bench`. Every benchmark prints `BENCH name=...
# key=value ...` lines; the end is a table of the headline figures against
# the project's goals. Results also go to $BENCH_OUT (default
# bench-results.txt in a temporary directory; printed at the end).
#
#   scripts/bench.sh [NAME...]   run only these: image planner local_copy
#                                clone transfer stream fork_latency pg
#
# The shared volume (a 2 GiB ext4 image with a PostgreSQL cluster, see
# test/e2e/bench/mkpgimage.sh) is cached in test/e2e/.cache/ and rebuilt
# only when missing or when its generator version changed.
#
# Env: BENCH_QUICK=1 for a quick iteration (small image, fewer pairs: the
# figures are not the benchmark's); STREAM_PAIRS, FORKLAT_N override.
# Needs root for loop devices, netns and drop_caches.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

export PATH=/usr/local/go/bin:/usr/sbin:/sbin:$PATH
export GOFLAGS=${GOFLAGS:-}

log() { printf '\n==> [%s] %s\n' "$(date -u +%T)" "$*" >&2; }

QUICK=${BENCH_QUICK:-}
CACHE=$ROOT/test/e2e/.cache
mkdir -p "$CACHE"
if [ -n "$QUICK" ]; then
	IMG=$CACHE/pg-quick.img
	IMG_SIZE=1G
	export PGIMG_SCALE=${PGIMG_SCALE:-6} PGIMG_ROWS=${PGIMG_ROWS:-200000}
	export STREAM_PAIRS=${STREAM_PAIRS:-1} FORKLAT_N=${FORKLAT_N:-30}
	export FORKNODE_BENCH_MB=${FORKNODE_BENCH_MB:-128} FORKNODE_BENCH_PAIRS=${FORKNODE_BENCH_PAIRS:-1}
else
	IMG=$CACHE/pg-2g.img
	IMG_SIZE=2G
	export STREAM_PAIRS=${STREAM_PAIRS:-5} FORKLAT_N=${FORKLAT_N:-200}
fi

OUTDIR=$(mktemp -d /tmp/forknode-bench.XXXXXX)
BENCH_OUT=${BENCH_OUT:-$OUTDIR/bench-results.txt}
: >"$BENCH_OUT"

# Machine, for the record.
{
	echo "# forknode bench $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "# nproc=$(nproc) kernel=$(uname -r) mem_mb=$(awk '/MemTotal/{printf "%d", $2/1024}' /proc/meminfo) go=$(go env GOVERSION) commit=$(git rev-parse --short HEAD 2>/dev/null || echo none)"
	echo "# fs=$(stat -f -c %T "$CACHE") quick=${QUICK:-0} uncommitted_files=$(git status --porcelain -- internal cmd 2>/dev/null | wc -l)"
} | tee -a "$BENCH_OUT"

status=0
failed=()
only=("$@")
want() { [ ${#only[@]} -eq 0 ] || [[ " ${only[*]} " == *" $1 "* ]]; }

# step NAME CMD...: run one benchmark, keep its BENCH lines.
step() {
	local name=$1; shift
	want "$name" || return 0
	local t0=$SECONDS
	log "bench: $name"
	if "$@" 2>&1 | tee "$OUTDIR/$name.log"; [ "${PIPESTATUS[0]}" -eq 0 ]; then
		printf '==> bench %s: ok (%ss)\n' "$name" "$((SECONDS - t0))" >&2
	else
		printf '==> bench %s: FAILED (%ss)\n' "$name" "$((SECONDS - t0))" >&2
		status=1
		failed+=("$name")
	fi
	grep -hE '^(BENCH|IMAGE) ' "$OUTDIR/$name.log" >>"$BENCH_OUT" || true
}

# --- the shared PostgreSQL image -------------------------------------------
image() {
	local want_v have_v
	want_v=$(test/e2e/bench/mkpgimage.sh --version)
	have_v=$(cat "$IMG.version" 2>/dev/null || true)
	if [ -f "$IMG" ] && [ "$want_v" = "$have_v" ]; then
		echo "cached image $IMG (generator $have_v)"
		local st
		st=$(go run ./test/e2e/bench/cmd/imgstat "$IMG") || return 1
		echo "$st"
		# shellcheck disable=SC2086
		set -- $st
		echo "IMAGE path=$IMG ${2} allocated=$(du --block-size=1 "$IMG" | cut -f1) ${5} ${6} ${4} ${7} gen_version=${have_v%% *} cached=true"
	else
		echo "building $IMG (generator $want_v; cached: ${have_v:-none})"
		rm -f "$IMG" "$IMG.version"
		test/e2e/bench/mkpgimage.sh "$IMG" "$IMG_SIZE"
	fi
}
step image image
if want stream || want local_copy; then
	[ -f "$IMG" ] || { echo "no image $IMG: cannot run the copy and stream benchmarks" >&2; status=1; }
fi

# --- planner: 100k volumes, 1k hosts -----------------------------------------
step planner go test -count=1 -run '^$' -bench . -timeout 20m ./internal/fsm/

# --- local copy: durable Copy vs cp --sparse=always && sync (5 pairs) --------
step local_copy env FORKNODE_BENCH_IMAGE="$IMG" go test -count=1 -run '^$' -bench 'LocalCopy' -benchtime 1x -timeout 20m ./internal/cow/

# --- clone on XFS: 1 GiB and 16 GiB sources ----------------------------------
clone() {
	go test -count=1 -run '^$' -bench 'Clone' -benchtime 100x ./internal/cow/ | tee "$OUTDIR/clone.raw"
	# BenchmarkClone/1g-2   100   123456 ns/op → a BENCH line per size.
	awk '/^BenchmarkClone\// { split($1, a, "/"); sz = a[2]; sub(/-[0-9]+$/, "", sz);
		for (i = 1; i <= NF; i++) if ($(i) == "ns/op") printf "BENCH name=clone backend=file fs=xfs size=%s iterations=%s ms=%.3f\n", sz, $2, $(i-1) / 1e6 }' "$OUTDIR/clone.raw"
	grep -q '^BenchmarkClone/' "$OUTDIR/clone.raw"
}
step clone clone

# --- transfer over loopback, in process (internal/transfer's own bench) ------
step transfer go test -count=1 -run '^$' -bench 'StreamLoopback' -benchtime 1x -timeout 20m ./internal/transfer/

# --- stream between two network namespaces -----------------------------------
step stream test/e2e/bench/stream.sh "$IMG"

# --- fork request latency on a 3-node dev cluster ----------------------------
forklat() {
	if ! go build -o "$OUTDIR/forknode" ./cmd/forknode; then
		echo "cmd/forknode does not build: fork latency not measured"
		return 1
	fi
	test/e2e/bench/forklat.sh
}
step fork_latency forklat

# --- PostgreSQL: production impact and recovery (test/e2e) ------------------
# Benchmarks in test/e2e are tests named Test...Bench that skip unless
# FORKNODE_BENCH=1; the recovery figures come from TestPGNetns's pre-fork
# checkpoint subtest.
pg() {
	local rc=0
	if grep -qE '^func Test[A-Za-z0-9_]*Bench\(' test/e2e/*_test.go 2>/dev/null; then
		# 5 rounds of 12 s windows (each state against a fresh no-fork
		# window), plus a fixed 25 MiB/s stream with pacing off for
		# comparison; BENCH_QUICK runs one round.
		FORKNODE_BENCH=1 FORKNODE_BENCH_ROUNDS=${FORKNODE_BENCH_ROUNDS:-$([ -n "${BENCH_QUICK:-}" ] && echo 1 || echo 5)} \
			FORKNODE_BENCH_SECONDS=${FORKNODE_BENCH_SECONDS:-12} FORKNODE_BENCH_RATES=${FORKNODE_BENCH_RATES-25MiB} \
			go test -count=1 -timeout 40m -v -run '^Test[A-Za-z0-9_]*Bench$' ./test/e2e/ || rc=1
	else
		echo "no Test...Bench functions in test/e2e yet"
	fi
	if grep -q '^func TestPGNetns(' test/e2e/*_test.go 2>/dev/null; then
		go test -count=1 -timeout 10m -v -run '^TestPGNetns$/^pre-fork_checkpoint$' ./test/e2e/ || rc=1
	fi
	return $rc
}
step pg pg

# --- summary -----------------------------------------------------------------
log "results ($BENCH_OUT)"
# goal NAME-FILTER KEY OP LIMIT LABEL: one table row for the first matching line.
awk '
function val(k,    i, kv) { for (i = 2; i <= NF; i++) { split($(i), kv, "="); if (kv[1] == k) return kv[2] } return "" }
function row(label, figure, goal, ok) { printf "%-34s %-44s %-14s %s\n", label, figure, goal, ok }
function check(v, op, lim) { if (v == "" || v == "nan") return "n/a"; if (op == "<=") return (v + 0 <= lim) ? "met" : "NOT met"; return (v + 0 >= lim) ? "met" : "NOT met" }
BEGIN { row("BENCHMARK", "MEASURED", "GOAL", "STATUS"); row("---------", "--------", "----", "------") }
$1 == "IMAGE" { row("image", sprintf("alloc=%.2fGiB zero_blocks=%s%%", val("allocated") / 2^30, val("zero_blocks_pct")), "~1.4GiB ~33%", "-") }
$1 != "BENCH" { next }
{ n = val("name") }
n == "planner" { row("planner p99 (100k vol, 1k hosts)", "p50=" val("p50_us") "us p99=" val("p99_us") "us", "p99<=1000us", check(val("p99_us"), "<=", 1000)) }
n == "local_copy" { row("local copy vs cp+sync", "ratio=" val("ratio_median") " " val("forknode_mbps") "MB/s", "<=0.7", check(val("ratio_median"), "<=", 0.7)) }
n == "clone" { row("clone " val("size") " (xfs)", val("ms") "ms", "<=100ms", check(val("ms"), "<=", 100)) }
n == "stream_loopback" { row("transfer loopback " val("codec"), "wall_ratio=" val("wall_ratio_median") " " val("mbps") "MB/s", "(info)", "-") }
n == "stream" {
	c = val("codec"); lim = (c == "s2") ? 0.3 : 0.5
	row("stream " val("src") " " c " wall", "ratio=" val("wall_ratio_median") " " val("mbps") "MB/s", "<=" lim, check(val("wall_ratio_median"), "<=", lim))
	if (c == "zstd") row("stream " val("src") " " c " wire", "ratio=" val("wire_ratio"), "<=1.03", check(val("wire_ratio"), "<=", 1.03))
	r = val("send_rss_mb") + 0; if (val("recv_rss_mb") + 0 > r) r = val("recv_rss_mb") + 0
	row("stream " val("src") " " c " peak RSS", "send=" val("send_rss_mb") "MB recv=" val("recv_rss_mb") "MB", "<=64MiB", check(r, "<=", 64))
	if (val("cmp") != "ok") row("stream " val("src") " " c " cmp", val("cmp"), "identical", "NOT met")
}
n == "stream_rss" { r = val("send_rss_mb") + 0; if (val("recv_rss_mb") + 0 > r) r = val("recv_rss_mb") + 0
	row("stream 16GiB sparse " val("codec") " peak RSS", "send=" val("send_rss_mb") "MB recv=" val("recv_rss_mb") "MB cmp=" val("cmp"), "<=64MiB", (val("cmp") == "ok") ? check(r, "<=", 64) : "NOT met") }
n == "fork_latency" { row("fork request latency (3 nodes)", "p50=" val("p50_ms") "ms p99=" val("p99_ms") "ms err=" val("errors"), "(info)", "-") }
n == "pg_impact" { row("pg impact " val("state"), "tps=" val("tps_median") " ratio=" val("ratio_median"), ">=0.9 @default", (val("state") ~ /default/) ? check(val("ratio_median"), ">=", 0.9) : "-") }
n == "pg_recovery" { row("pg recovery checkpoint=" val("checkpoint"), val("recovery_ms") "ms", "(info)", "-") }
' "$BENCH_OUT"
echo
echo "all BENCH lines: $BENCH_OUT"
if [ $status -ne 0 ]; then
	echo "FAILED: ${failed[*]}"
fi
exit $status
