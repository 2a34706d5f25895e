// Package cow is the storage side of one host: the Backend contract
// (backend.go), the file backend, and the local snapshot-and-copy engine.
//
// # File backend
//
// NewFileBackend keeps each volume or snapshot as a sparse image file
// <id>.img in one directory, with <id>.json beside it holding the Volume
// record. Metadata is written durably (temp file, fsync, rename, fsync of the
// directory) and is the commit point: an image without metadata, or any
// ".…tmp" file, is debris of an interrupted operation and is removed when the
// backend is opened. Remove deletes metadata first, then the image.
//
// Ids are stamped by the catalog and must be path-safe (ValidateID); names
// follow ValidateName and are unique among volumes. Create with an id that
// exists and the identical spec returns the existing volume (the executor
// retries); any other spec under that id is ErrExists.
//
// Capacity rule: used = sum of provisioned sizes of volumes (snapshots do not
// count); effective budget = min(configured budget, used + statfs available);
// budget 0 means no configured limit. A create that does not fit in
// budget-used fails with ErrNoSpace naming the figures. Copy-based snapshots
// additionally need the source's allocated bytes free on the filesystem.
//
// Clone uses FICLONE. Support is detected at open by reflinking a probe
// file, because it depends on mkfs options (xfs -m reflink=1), not only on
// the filesystem type; Features reports it with the filesystem name. Without
// reflink, Clone is ErrNotSupported and callers use ForkLocal (CloneOrFork
// chooses).
//
// Attach binds the image to a loop device with ioctls (LOOP_CTL_GET_FREE,
// LOOP_CONFIGURE, falling back to LOOP_SET_FD + LOOP_SET_STATUS64), without
// LO_FLAGS_AUTOCLEAR since the backend records the device in the metadata and
// clears it itself (LOOP_CLR_FD) on Detach. On open the backend re-discovers
// bindings from /sys/block/loopN/loop/backing_file, so an attachment survives
// a restart of the process, and a crash between the ioctl and the metadata
// write is repaired. An attached volume cannot be removed or opened for
// writing (ErrBusy); a mounted one cannot be detached (ErrBusy).
//
// # Snapshots and live sources
//
// Snapshot(src) of an attached volume whose loop device is mounted (found in
// /proc/self/mountinfo by major:minor) runs FIFREEZE on the mount point,
// takes the copy, then FITHAW; the thaw is deferred, so errors and panics
// thaw too. Freezing flushes the filesystem, so the snapshot is not merely
// crash-consistent but clean: ext4 writes back its journal and clears
// needs_recovery while frozen, and no write() is cut in half. An attached but
// unmounted volume gets an fsync of its block device first (dirty pages of
// the device are otherwise invisible in the image); an unattached one is
// copied as it is. Mounts are looked up in this process's mount namespace: a
// filesystem mounted only inside another namespace is not seen, and its
// snapshot is then only as consistent as a block-device flush makes it.
//
// On a filesystem without reflink the snapshot is a sparse copy made while
// frozen. That freeze is bounded: past FreezeTimeout (default 30 s) the copy
// is abandoned, the filesystem thawed, the partial file removed, and
// Snapshot fails with ErrBusy advising a reflink filesystem. Writers of the
// source stall for at most that long; with reflink the freeze lasts
// milliseconds.
//
// # Copy engine
//
// Copy reads only the data extents (SEEK_DATA/SEEK_HOLE; the whole file when
// unsupported) in ChunkSize pieces (1 MiB) by Workers goroutines (4), each
// reading, writing and verifying one chunk, so several reads are in flight
// while others write. All-zero chunks, gaps between extents and a larger
// target's tail are made holes with Device.Zero (a punch, skipped where the
// target already has a hole). The source is read with FADV_SEQUENTIAL and a
// WILLNEED prefetch kept 8 chunks ahead of the workers. Written ranges are
// handed to early writeback (sync_file_range WRITE) as they are written, and
// one fsync ends the copy.
// O_DIRECT was measured (reads and writes) and lost to buffered I/O here:
// it gives up readahead and makes the verifying re-read hit the disk.
//
// Verification: the CRC32C of each source chunk is taken as it is read; after
// the write the chunk is read back from the target (from the page cache, so
// it costs a memcpy, not disk I/O) and must have the same CRC32C; a zeroed
// chunk must read back as zeros. This proves the target, as the kernel
// serves it, holds exactly the source's bytes at the right offsets, catching
// short, misplaced or corrupted writes through any Device layer. It does not
// re-read the media after a reboot; durability comes from the final fsync.
//
// ForkLocal = Snapshot(src, "snap_"+id) -> Create -> Copy -> Release; on any
// failure, cancellation included, the partial target is removed and the
// snapshot released, using a context that is not cancelled.
package cow
