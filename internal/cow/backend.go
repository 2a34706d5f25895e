package cow

import (
	"context"
	"errors"
	"io"
	"time"
)

// Sentinel errors. Callers test them with errors.Is; the wrapped message
// carries the detail (names, figures, stderr).
var (
	// ErrNotFound: no volume or snapshot with that id.
	ErrNotFound = errors.New("volume not found")
	// ErrExists: a volume with that id or name already exists.
	ErrExists = errors.New("volume already exists")
	// ErrNoSpace: the operation would exceed the backend's budget or the
	// free space underneath it.
	ErrNoSpace = errors.New("no space")
	// ErrInvalid: a bad name, size or argument.
	ErrInvalid = errors.New("invalid argument")
	// ErrBusy: the volume is attached or otherwise in use.
	ErrBusy = errors.New("volume busy")
	// ErrNotSupported: the backend cannot do this (e.g. O(1) clone on ext4).
	ErrNotSupported = errors.New("not supported by backend")
)

// Kind tells a volume from a snapshot.
type Kind string

const (
	KindVolume   Kind = "volume"
	KindSnapshot Kind = "snapshot"
)

// Volume is what a backend holds. IDs are assigned by the caller (the
// catalog stamps them), which makes every create idempotent to retry.
type Volume struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Size    int64     `json:"size"`
	Kind    Kind      `json:"kind"`
	Owner   string    `json:"owner,omitempty"`  // owner tag, e.g. the fork id that made it
	Origin  string    `json:"origin,omitempty"` // source volume id for snapshots/clones
	Path    string    `json:"path"`             // image file or block device path
	Device  string    `json:"device,omitempty"` // attached loop device, if any
	Created time.Time `json:"created"`
}

// CreateSpec describes a new volume.
type CreateSpec struct {
	ID    string
	Name  string
	Size  int64
	Owner string
}

// Features are detected once at open and reported in the catalog.
type Features struct {
	Backend string `json:"backend"` // "file", "lvm", "lvm-thin"
	Clone   bool   `json:"clone"`   // O(1) copy-on-write clones
	// Filesystem of the backing directory for the file backend (xfs, btrfs, ext4...).
	Filesystem string `json:"filesystem,omitempty"`
	// What a snapshot of a volume of size S takes from the budget while it
	// exists: max(⌈S × SnapshotPermille / 1000⌉, SnapshotMin), at most S
	// plus one SnapshotGrain per started 64 MiB, rounded up to the grain
	// (fsm.SnapshotCost evaluates it for the catalog). All zero: next to
	// nothing (a reflink, a thin snapshot).
	SnapshotPermille int64 `json:"snapshot_permille,omitempty"`
	SnapshotMin      int64 `json:"snapshot_min,omitempty"`
	SnapshotGrain    int64 `json:"snapshot_grain,omitempty"`
}

// Capacity figures in bytes. Used counts provisioned volume sizes.
type Capacity struct {
	Budget int64 `json:"budget"`
	Used   int64 `json:"used"`
	Free   int64 `json:"free"`
}

// Extent is a byte range holding data.
type Extent struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

// Device is an open volume or snapshot.
type Device interface {
	io.ReaderAt
	io.WriterAt
	io.Closer
	Size() int64
	Sync() error
	// Zero makes [off, off+n) read back as zeros (punch a hole, or
	// BLKZEROOUT, or write zeros). Never leaves old data visible.
	Zero(off, n int64) error
}

// Backend is the storage side of one host.
type Backend interface {
	Features() Features
	Capacity(ctx context.Context) (Capacity, error)

	Create(ctx context.Context, spec CreateSpec) (Volume, error)
	Get(ctx context.Context, id string) (Volume, error)
	List(ctx context.Context) ([]Volume, error) // volumes and snapshots
	Remove(ctx context.Context, id string) error
	Open(ctx context.Context, id string, writable bool) (Device, error)

	// Clone makes an O(1) copy-on-write copy of src, or ErrNotSupported.
	Clone(ctx context.Context, srcID string, spec CreateSpec) (Volume, error)
	// Snapshot makes a crash-consistent point-in-time snapshot of src
	// (freezing a mounted filesystem while it is taken). Snapshots do not
	// count against the budget of volumes, but they are listed.
	Snapshot(ctx context.Context, srcID, snapID string) (Volume, error)
	// Release drops a snapshot.
	Release(ctx context.Context, snapID string) error

	// Extents lists the data extents of a volume or snapshot.
	Extents(ctx context.Context, id string) ([]Extent, error)

	Attach(ctx context.Context, id string) (string, error)
	Detach(ctx context.Context, id string) error
}
