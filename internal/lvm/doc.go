// Package lvm is the only code in forknode that runs the lvm tool, and the
// device-mapper tools beside it (dmsetup, thin_dump) for thin maps.
//
// Everything goes through one Runner ("lvm <subcommand> args...", LC_ALL=C,
// stdout and stderr captured), so tests can swap in a fake that records the
// argument lists, and every failure becomes an *LVMError that keeps lvm's
// exit code and stderr. ErrNotFound, ErrExists, ErrNoSpace and ErrInUse are
// recognised from lvm's stderr and checked with errors.Is.
//
// Argument lists are built by pure functions (args.go) with golden tests.
// Reports are always read as JSON with sizes in bytes
// (--reportformat json --units b --nosuffix) and an explicit field list,
// then parsed into typed structs (report.go).
//
// LV tags mark what forknode owns: "forknode" on every LV it made, plus
// "forknode-id:", "forknode-name:", "forknode-fork:", "forknode-origin:" and
// "forknode-kind:" tags whose values are escaped into LVM's tag charset
// (tags.go).
//
// Classic snapshots have a fixed copy-on-write area; SnapshotWatch polls its
// data_percent so a copy can stop with ErrSnapshotOverflow before the
// snapshot fills up and becomes invalid (watch.go).
//
// A thin LV's map (thin.go) says which of its blocks the pool has mapped:
// the rest read as zeros and need not be read at all. It is read with
// thin_dump from the pool's metadata snapshot (dmsetup message
// reserve_metadata_snap), the one consistent view of a live pool's
// mappings. Every device-mapper name derived from LVM's naming rules is
// checked against the device numbers in the kernel's tables before use.
//
// Real LVM needs device-mapper, which the development kernel lacks: the
// tests against real volume groups run inside a qemu guest
// (test/e2e/lvm_qemu_test.go) and skip elsewhere.
package lvm
