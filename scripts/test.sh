#!/usr/bin/env bash
# The whole test suite: the README's test command (`make test`) and .ci/run.
#
# Installs the Debian packages the tiers need when they are missing, then
# runs every tier. Under CI=true a tier that cannot run fails the run instead
# of being skipped (see internal/testutil).
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH=/usr/local/go/bin:/usr/sbin:/sbin:$PATH
export GOFLAGS=${GOFLAGS:-}

log() { printf '\n==> %s\n' "$*"; }

# --- packages ---------------------------------------------------------------
need_pkgs=()
want() { # want CMD PACKAGE
	command -v "$1" >/dev/null 2>&1 || need_pkgs+=("$2")
}
want mkfs.xfs xfsprogs
want mkfs.btrfs btrfs-progs
want mkfs.ext4 e2fsprogs
want zstd zstd
want socat socat
want ip iproute2
want losetup mount
want qemu-system-x86_64 qemu-system-x86
want lvm lvm2
want busybox busybox-static
want depmod kmod
want cpio cpio
want tcpdump tcpdump
want nft nftables
want ss iproute2
want curl curl
[ -x /usr/bin/time ] || need_pkgs+=(time)
want pgbench postgresql-contrib
[ -x /usr/lib/postgresql/15/bin/postgres ] || need_pkgs+=(postgresql-15)
dpkg -s thin-provisioning-tools >/dev/null 2>&1 || need_pkgs+=(thin-provisioning-tools)
if [ ${#need_pkgs[@]} -gt 0 ]; then
	if [ "$(id -u)" = 0 ]; then
		log "installing Debian packages: ${need_pkgs[*]}"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
	else
		echo "missing packages (run as root to install): ${need_pkgs[*]}" >&2
	fi
fi

# --- tiers ------------------------------------------------------------------
start=$(date +%s)
status=0
only=("$@") # optional tier names; default all
tier() { # tier NAME CMD...
	local name=$1; shift
	if [ ${#only[@]} -gt 0 ] && [[ " ${only[*]} " != *" $name "* ]]; then return 0; fi
	local t0=$(date +%s)
	log "tier: $name"
	if "$@"; then
		printf '==> tier %s: ok (%ss)\n' "$name" "$(( $(date +%s) - t0 ))"
	else
		printf '==> tier %s: FAILED (%ss)\n' "$name" "$(( $(date +%s) - t0 ))"
		status=1
	fi
}

tier build go build ./...
tier vet go vet ./...
# Unit and root tiers (loop devices, XFS/ext4/btrfs) in one go test run.
tier unit go test -count=1 -timeout 15m ./internal/... ./cmd/... ./test/e2e/bench/...

# Each fuzz target runs briefly; the seed corpora also run in the unit tier.
fuzz() {
	local rc=0
	while read -r pkg target; do
		echo "fuzz $pkg $target"
		go test -run '^$' -fuzz "^${target}\$" -fuzztime 8s "$pkg" || rc=1
	done < <(grep -rl --include='*_test.go' -E '^func Fuzz' internal cmd 2>/dev/null |
		xargs -r grep -hoE '^func (Fuzz[A-Za-z0-9_]+)' --with-filename |
		sed -E 's#^(.*)/[^/]+_test.go:func (Fuzz[A-Za-z0-9_]+)#./\1 \2#' | sort -u)
	return $rc
}
tier fuzz fuzz

# End-to-end: real processes in network namespaces, PostgreSQL, and real LVM
# inside a qemu guest.
# One package, so -v streams progress as it happens.
tier e2e go test -count=1 -timeout 40m -v ./test/e2e/

# `vagrant validate` runs inside the e2e tier (TestVagrantfileValidates)
# where vagrant is installed; the brief asks for it only then.

log "total $(( $(date +%s) - start ))s"
if [ $status -ne 0 ]; then
	echo "FAILED"
fi
exit $status
