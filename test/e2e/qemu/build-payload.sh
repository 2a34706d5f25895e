#!/usr/bin/env bash
# build-payload.sh REPO_ROOT OUT_CPIO
#
# Builds the guest payload: static test binaries of internal/lvm and
# internal/cow, the forknode binary when it builds, run.sh, provision-vg.sh
# and the scenarios, packed as an uncompressed cpio (newc) that boot-guest.sh
# appends to the base initramfs.
set -euo pipefail
repo=${1:?usage: build-payload.sh REPO_ROOT OUT_CPIO}
out=${2:?usage: build-payload.sh REPO_ROOT OUT_CPIO}
HERE=$(cd "$(dirname "$0")" && pwd)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
p=$stage/payload
mkdir -p "$p/bin" "$p/scenarios"

export CGO_ENABLED=0
cd "$repo"
go test -c -o "$p/bin/lvm.test" ./internal/lvm
# A cow.test that does not build is reported by its scenario, not here, so
# the lvm scenario still runs.
go test -c -o "$p/bin/cow.test" ./internal/cow || echo "build-payload: internal/cow tests do not build" >&2
if [[ -d cmd/forknode ]] && go build -o "$p/bin/forknode" ./cmd/forknode 2>"$stage/forknode.err"; then
	echo "build-payload: forknode binary included" >&2
else
	echo "build-payload: forknode binary not built (optional): $(head -c 300 "$stage/forknode.err" 2>/dev/null)" >&2
	rm -f "$p/bin/forknode"
fi
cp "$HERE/run.sh" "$HERE/provision-vg.sh" "$p/"
cp "$HERE"/scenarios/*.sh "$p/scenarios/"
chmod 0755 "$p"/*.sh "$p"/scenarios/*.sh
(cd "$stage" && find payload -print0 | cpio --null -o -H newc --quiet) >"$out.tmp"
mv "$out.tmp" "$out"
