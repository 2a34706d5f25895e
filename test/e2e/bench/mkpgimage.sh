#!/usr/bin/env bash
# mkpgimage.sh OUT [SIZE]: build the shared benchmark volume, an ext4 image
# (default 2 GiB, sparse) holding a cleanly shut down PostgreSQL 15 cluster:
# pgbench tables plus a table of seeded random text, uuid, jsonb and bytea
# with indexes. About 1.4 GiB allocated, about a third of its 1 MiB blocks
# all zero, like a real database volume.
#
#   mkpgimage.sh --version   prints the generator version (the cache key)
#
# Env: PGIMG_SCALE (pgbench scale, default 36), PGIMG_ROWS (random rows,
# default 1100000): smaller values make a quick image for iteration.
#
# Deterministic as far as PostgreSQL allows: fixed filesystem UUID, hash seed
# and creation time, seeded random(). Page layout and WAL are close to, but
# not byte-for-byte, identical between runs.
#
# Needs root (loop device, mount), e2fsprogs, PostgreSQL 15 and the
# postgres user. Everything it sets up is torn down in a trap, also on
# failure.
set -euo pipefail

GEN_VERSION=4
if [ "${1:-}" = --version ]; then
	echo "$GEN_VERSION scale=${PGIMG_SCALE:-36} rows=${PGIMG_ROWS:-1100000}"
	exit 0
fi
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
	echo "usage: $0 OUT [SIZE] | --version" >&2
	exit 2
fi

OUT=$1
SIZE=${2:-2G}
SCALE=${PGIMG_SCALE:-36}
ROWS=${PGIMG_ROWS:-1100000}
PGBIN=/usr/lib/postgresql/15/bin
PORT=55432
FS_UUID=6f2c3d1e-4b5a-4c7d-9e8f-0a1b2c3d4e5f
HERE=$(cd "$(dirname "$0")" && pwd)
export PATH=/usr/local/go/bin:/usr/sbin:/sbin:$PATH

log() { printf '[mkpgimage %s] %s\n' "$(date -u +%T)" "$*" >&2; }

[ "$(id -u)" = 0 ] || { echo "mkpgimage: needs root (loop device, mount)" >&2; exit 1; }
for c in mkfs.ext4 losetup mount fstrim runuser "$PGBIN/initdb" "$PGBIN/pg_ctl" pgbench psql go; do
	command -v "$c" >/dev/null || { echo "mkpgimage: missing $c" >&2; exit 1; }
done
id postgres >/dev/null

mkdir -p "$(dirname "$OUT")"
TMP=$(mktemp -d /tmp/mkpgimage.XXXXXX)
IMG="$OUT.tmp"
MNT=$TMP/mnt
SOCK=$TMP/sock
DEV=

cleanup() {
	local rc=$?
	set +e
	if [ -n "$DEV" ] && [ -f "$MNT/pgdata/postmaster.pid" ]; then
		runuser -u postgres -- "$PGBIN/pg_ctl" -D "$MNT/pgdata" stop -m immediate -w >/dev/null 2>&1
	fi
	mountpoint -q "$MNT" && umount "$MNT"
	[ -n "$DEV" ] && losetup -d "$DEV"
	[ $rc -ne 0 ] && [ -f "$TMP/pg.log" ] && tail -n 20 "$TMP/pg.log" >&2
	rm -rf "$TMP"
	[ $rc -ne 0 ] && rm -f "$IMG"
	exit $rc
}
trap cleanup EXIT INT TERM

t0=$(date +%s)
rm -f "$IMG"
truncate -s "$SIZE" "$IMG"
log "mkfs.ext4 $SIZE"
# Inode tables and journal are written at mkfs time (no lazy init), so no
# background ext4lazyinit thread races the benchmarks. Fixed UUID, hash seed
# and time make the metadata reproducible.
E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -b 4096 -U "$FS_UUID" \
	-E lazy_itable_init=0,lazy_journal_init=0,nodiscard,hash_seed=$FS_UUID \
	-L pgbench "$IMG"

DEV=$(losetup --find --show "$IMG")
mkdir -p "$MNT" "$SOCK"
mount -o noatime "$DEV" "$MNT"
mkdir "$MNT/pgdata"
chown postgres: "$MNT/pgdata" "$SOCK" "$TMP"
chmod 700 "$MNT/pgdata"

log "initdb --data-checksums"
runuser -u postgres -- "$PGBIN/initdb" -D "$MNT/pgdata" --data-checksums -A trust -U postgres \
	-E UTF8 --locale=C.UTF-8 --no-instructions >/dev/null

runuser -u postgres -- "$PGBIN/pg_ctl" -D "$MNT/pgdata" -l "$TMP/pg.log" -w -o \
	"-c listen_addresses='' -c unix_socket_directories=$SOCK -p $PORT -c max_parallel_workers_per_gather=0 -c max_parallel_maintenance_workers=0 -c max_wal_size=256MB -c min_wal_size=64MB -c maintenance_work_mem=128MB -c synchronous_commit=off" \
	start >/dev/null

psqlc() { runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U postgres -d postgres "$@"; }

log "pgbench -i -s $SCALE"
runuser -u postgres -- pgbench -i -q -s "$SCALE" -h "$SOCK" -p "$PORT" -U postgres postgres >/dev/null 2>&1

log "random table: $ROWS rows"
# One session, so setseed() governs every random() below. uuids come from
# md5 of seeded random() (gen_random_uuid() cannot be seeded). Bodies are
# a few distinct md5s (incompressible by pglz, well below the TOAST
# threshold); blobs are random bytes.
psqlc <<SQL
\\o /dev/null
SELECT setseed(0.42);
CREATE TABLE bench_docs (
	id    bigint PRIMARY KEY,
	uid   uuid NOT NULL,
	title text NOT NULL,
	body  text NOT NULL,
	doc   jsonb NOT NULL,
	blob  bytea NOT NULL
);
INSERT INTO bench_docs
SELECT i,
	md5(random()::text)::uuid,
	substr(md5(random()::text), 1, 8 + (i % 20)),
	(SELECT string_agg(md5(random()::text || k), ' ') FROM generate_series(1, 1 + i % 5) AS g(k)),
	jsonb_build_object('n', i, 'tag', substr(md5(random()::text), 1, 6),
		'score', round((random() * 1000)::numeric, 2), 'flags', jsonb_build_array(i % 3 = 0, i % 7 = 0)),
	decode(md5(random()::text) || md5(random()::text), 'hex')
FROM generate_series(1, $ROWS) AS i;
CREATE INDEX bench_docs_uid ON bench_docs (uid);
CREATE INDEX bench_docs_title ON bench_docs (title);
CREATE INDEX bench_docs_doc ON bench_docs USING gin (doc jsonb_path_ops);
VACUUM ANALYZE;
CHECKPOINT;
SQL
psqlc -At -c "SELECT 'DB size=' || pg_database_size('postgres') || ' bench_docs=' || pg_total_relation_size('bench_docs') || ' accounts=' || pg_total_relation_size('pgbench_accounts')" >&2

log "clean shutdown"
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$MNT/pgdata" stop -m fast -w >/dev/null
# Give freed blocks back (the loop device punches holes): the image holds
# what the filesystem holds, like a thin volume after discard.
fstrim "$MNT" >/dev/null 2>&1 || log "fstrim unsupported; freed blocks stay allocated"
umount "$MNT"
losetup -d "$DEV"
DEV=
sync "$IMG"

stats=$(cd "$HERE/../../.." && go run ./test/e2e/bench/cmd/imgstat "$IMG")
du_alloc=$(du --block-size=1 "$IMG" | cut -f1)
mv -f "$IMG" "$OUT"
echo "$GEN_VERSION scale=$SCALE rows=$ROWS" >"$OUT.version"
# shellcheck disable=SC2086
set -- $stats
size=${2#size=}; pct=${7#zero_blocks_pct=}; zb=${5#zero_blocks=}; blocks=${4#blocks=}; holes=${6#hole_blocks=}
echo "IMAGE path=$OUT size=$size allocated=$du_alloc zero_blocks=$zb hole_blocks=$holes blocks=$blocks zero_blocks_pct=$pct gen_version=$GEN_VERSION seconds=$(( $(date +%s) - t0 ))"
