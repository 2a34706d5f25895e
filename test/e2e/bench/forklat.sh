#!/usr/bin/env bash
# forklat.sh: fork request latency on a 3-node cluster (`forknode dev`).
#
# Starts `forknode dev` in the background, creates a small source volume,
# then issues FORKLAT_N (default 200) fork requests one after another with
# curl against the HTTP API, spread round-robin over the three nodes (two
# of three requests hit a follower and are forwarded to the leader). The
# request latency is curl's time_total for the POST /v1/forks (the fork is
# in the replicated catalog when it answers). Afterwards it waits for all
# forks to finish and reports, from the catalog's own timestamps, the time
# from request to ready. Prints one `BENCH name=fork_latency ...` line.
#
# Env: FORKLAT_N, FORKLAT_PORT (base port, default 27400), FORKLAT_SIZE
# (source volume size, default 1MiB).
set -euo pipefail

N=${FORKLAT_N:-200}
PORT=${FORKLAT_PORT:-27400}
SIZE=${FORKLAT_SIZE:-1MiB}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
export PATH=/usr/local/go/bin:/usr/sbin:/sbin:$PATH

for c in curl go awk sort; do
	command -v "$c" >/dev/null || { echo "forklat.sh: missing $c" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/forklat.XXXXXX)
DEVPID=
cleanup() {
	local rc=$?
	set +e
	if [ -n "$DEVPID" ]; then
		kill -INT "$DEVPID" 2>/dev/null
		for _ in $(seq 100); do kill -0 "$DEVPID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$DEVPID" 2>/dev/null
		wait "$DEVPID" 2>/dev/null
	fi
	[ $rc -ne 0 ] && [ -f "$WORK/dev.log" ] && tail -n 20 "$WORK/dev.log" >&2
	rm -rf "$WORK"
	exit $rc
}
trap cleanup EXIT INT TERM

log() { printf '[forklat %s] %s\n' "$(date -u +%T)" "$*" >&2; }

FN=$WORK/forknode
(cd "$ROOT" && go build -o "$FN" ./cmd/forknode)

"$FN" dev --dir "$WORK/state" --base-port "$PORT" >"$WORK/dev.log" 2>&1 &
DEVPID=$!
for _ in $(seq 300); do
	grep -q 'FORKNODE_TOKEN=' "$WORK/dev.log" && break
	kill -0 "$DEVPID" 2>/dev/null || { echo "forklat.sh: forknode dev exited" >&2; exit 1; }
	sleep 0.1
done
TOKEN=$(grep -o 'FORKNODE_TOKEN=[0-9a-f]*' "$WORK/dev.log" | head -n1 | cut -d= -f2)
[ -n "$TOKEN" ] || { echo "forklat.sh: no token in forknode dev output" >&2; exit 1; }
export FORKNODE_ADDR=http://127.0.0.1:$PORT FORKNODE_TOKEN=$TOKEN

# The cluster needs a leader before it takes writes: retry the first create.
for i in $(seq 60); do
	if "$FN" volume create benchsrc --size "$SIZE" --host dev1 --wait >"$WORK/create.out" 2>&1; then break; fi
	[ "$i" = 60 ] && { cat "$WORK/create.out" >&2; exit 1; }
	sleep 0.5
done
log "$(cat "$WORK/create.out")"

log "$N fork requests"
t0=$(date +%s.%N)
: >"$WORK/lat"
for i in $(seq "$N"); do
	node=$(( i % 3 ))
	curl -sS -o /dev/null -w '%{http_code} %{time_total}\n' -X POST \
		-H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
		-d "{\"source\":\"benchsrc\",\"name\":\"bf$i\"}" \
		"http://127.0.0.1:$((PORT + node))/v1/forks" >>"$WORK/lat" || echo "000 0" >>"$WORK/lat"
done
t1=$(date +%s.%N)
errors=$(awk '$1 !~ /^2/' "$WORK/lat" | wc -l)

# Wait for every fork to leave pending/running.
for _ in $(seq 600); do
	"$FN" forks ls --json >"$WORK/forks.json"
	open=$(grep -cE '"state": "(pending|running|creating|copying|streaming)"' "$WORK/forks.json" || true)
	[ "$open" = 0 ] && break
	sleep 0.2
done
# Pretty-printed JSON: one field a line. Ready time per fork = finished_at - created_at (ns).
read -r ready failed ready_p50 ready_p99 <<<"$(awk -F': ' '
	/"state"/ { gsub(/[",]/, "", $2); st = $2 }
	/"created_at"/ { gsub(/,/, "", $2); c = $2 }
	/"finished_at"/ { gsub(/,/, "", $2); f = $2 }
	/^    }/ { if (st == "ready") { n++; print (f - c) / 1e6 > "/dev/stderr" } else if (st == "failed") fl++; st = ""; c = f = 0 }
	END { printf "%d %d\n", n, fl }' "$WORK/forks.json" 2>"$WORK/ready_ms" | {
	read -r n fl
	sort -g "$WORK/ready_ms" | awk -v n="$n" -v fl="$fl" '{v[NR]=$1} END{ if (NR == 0) { print n, fl, "nan", "nan"; exit }
		i50 = int((NR - 1) * 0.50) + 1; i99 = int((NR - 1) * 0.99) + 1; printf "%d %d %.1f %.1f\n", n, fl, v[i50], v[i99] }'
})"

read -r p50 p99 pmax <<<"$(awk '$1 ~ /^2/ {print $2 * 1000}' "$WORK/lat" | sort -g | awk '{v[NR]=$1} END{
	if (NR == 0) { print "nan nan nan"; exit }
	i50 = int((NR - 1) * 0.50) + 1; i99 = int((NR - 1) * 0.99) + 1; printf "%.1f %.1f %.1f\n", v[i50], v[i99], v[NR] }')"
secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b - a}')
echo "BENCH name=fork_latency nodes=3 requests=$N errors=$errors p50_ms=$p50 p99_ms=$p99 max_ms=$pmax requests_seconds=$secs ready=$ready failed=$failed ready_p50_ms=$ready_p50 ready_p99_ms=$ready_p99"
