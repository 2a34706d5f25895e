package transfer

import (
	"errors"
	"io"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Source is what the sending host reads: a snapshot. cow.Device satisfies it.
// Optional extras the sender uses when present: Prefetch(off, n int64)
// (readahead a window ahead), and Fd() uintptr (SEEK_DATA finds holes when
// the Opener gives no extents; fadvise readahead; a block device is read
// with O_DIRECT through its own descriptor, so a source exposing Fd() must
// read ReadAt(p, off) from offset off of it).
type Source interface {
	io.ReaderAt
	Size() int64
}

// Sink is what the receiving host writes: the new volume. cow.Device
// satisfies it. Zero must make a range read back as zeros on any backend.
// Optional extras the puller uses when present: Fd() uintptr — it reopens
// that descriptor with O_DIRECT and writes aligned blocks there, so a sink
// exposing Fd() must write WriteAt(p, off) at offset off of it — and
// StartWriteback(off, n int64) error (a writeback hint after each buffered
// write; cow.WriteBacker).
type Sink interface {
	io.WriterAt
	Size() int64
	Sync() error
	Zero(off, n int64) error
}

// Extent is a byte range of the source that holds data.
type Extent struct{ Offset, Length int64 }

// Options tune one side of a transfer. Zero values mean the defaults.
type Options struct {
	Codec     string         // "zstd" (default), "s2", "auto" (pick by measured link speed), "none"
	ChunkSize int            // default 1 MiB, clamped to [MinChunk, MaxChunk]
	Window    int            // in-flight chunks per side; default 8
	RateLimit int64          // bytes/s of volume data per transfer (a server: each session; Pull: its one); 0 = unlimited
	Limiter   *Limiter       // optional shared per-node limiter; both apply
	Progress  func(Progress) // called at most every ~250 ms and at the end
	Logger    hclog.Logger
	IOTimeout time.Duration // deadline on every network read/write (default 30 s)
	// GiveUp bounds how long Pull keeps reconnecting without any progress
	// before it fails with ErrAborted (default 30 s).
	GiveUp time.Duration
	// PlainPeers lets a server take the puller's name from its hello on a
	// connection without TLS, for benchmarks and tests on plain TCP. Off
	// (the default), such a connection is refused as unauthorized: the
	// name that authorizes a pull must come from a verified certificate.
	PlainPeers bool
	// Resume (Pull only) continues a transfer that an earlier Pull, in
	// this process or one before a restart, left at a checkpoint it
	// reported to OnCheckpoint. The puller re-reads the sink's first
	// Durable bytes to rebuild its digest and totals (the sink must then
	// be an io.ReaderAt) and asks the source to continue there. A
	// checkpoint that does not fit the sink, cannot be read back or does
	// not match the source's grid is dropped with a warning and the
	// transfer starts from zero, which rewrites every block: a stale
	// checkpoint costs time, never data.
	Resume *Checkpoint
	// OnCheckpoint (Pull only) is told each new durable offset, after the
	// fsync that made it durable, from one goroutine at a time; offsets
	// increase, unless a checkpoint the source refused was dropped (the
	// count starts again from zero). None is given after any fsync of the
	// sink failed. Saving the latest lets a restarted process resume.
	OnCheckpoint func(Checkpoint)
}

// Checkpoint is a puller's resume point: the target holds the bytes
// [0, Durable) it received, written and fsynced, on the Chunk-byte grid of
// a Size-byte volume. They are verified against the source only by the
// whole-volume digest at the end (Durable = Size is reported before that
// check), which a resumed Pull computes over the re-read prefix.
type Checkpoint struct {
	Size    int64 `json:"size"`
	Chunk   int64 `json:"chunk"`
	Durable int64 `json:"durable"`
}

// Progress is a snapshot of a running transfer.
type Progress struct {
	Done, Total, Wire, Resent int64
	Rate                      float64 // volume bytes per second since the start
	ETA                       time.Duration
}

// Stats summarise a finished transfer. Bytes = DataBytes + ZeroBytes = the
// volume size; Wire counts frame bytes over all connections.
type Stats struct {
	Bytes, DataBytes, ZeroBytes, Wire, Resent int64
	Reconnects                                int
	// Resumed is the checkpoint offset this Pull started from (0: none).
	Resumed  int64
	Digest   string
	Duration time.Duration
}

// Sentinel errors, checked with errors.Is.
var (
	// ErrUnauthorized: the source host refused the pull.
	ErrUnauthorized = errors.New("transfer: unauthorized")
	// ErrCorrupt: a checksum, decompression or digest check failed.
	ErrCorrupt = errors.New("transfer: corrupt data")
	// ErrProtocol: a malformed or unexpected frame.
	ErrProtocol = errors.New("transfer: protocol error")
	// ErrAborted: the transfer gave up (no progress in time, peer gone,
	// fatal error reported by the peer, or cancelled).
	ErrAborted = errors.New("transfer: aborted")
	// ErrNotReady: the source is still preparing what it will send (a
	// snapshot being taken). An Opener returns it (wrapped) to have the
	// puller come back later; Pull waits for such a source without giving
	// up, since the source answers and is working.
	ErrNotReady = errors.New("transfer: source not ready yet")
	// ErrRetry: a transient refusal (e.g. the source's catalog lags the
	// target's); the puller retries, and gives up after GiveUp as usual.
	ErrRetry = errors.New("transfer: retry")
)

const (
	defaultChunk     = 1 << 20
	defaultWindow    = 8
	defaultIOTimeout = 30 * time.Second
	defaultGiveUp    = 30 * time.Second
	progressEvery    = 250 * time.Millisecond
)

func (o Options) withDefaults() Options {
	if o.Codec == "" {
		o.Codec = "zstd"
	}
	if o.ChunkSize <= 0 {
		o.ChunkSize = defaultChunk
	}
	if o.ChunkSize < MinChunk {
		o.ChunkSize = MinChunk
	}
	if o.ChunkSize > MaxChunk {
		o.ChunkSize = MaxChunk
	}
	if o.Window <= 0 {
		o.Window = defaultWindow
	}
	// Memory bound: Window × (chunk + compressed chunk) must stay well
	// under 64 MiB per side.
	if maxW := (48 << 20) / (2 * o.ChunkSize); o.Window > maxW {
		o.Window = maxW
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.IOTimeout <= 0 {
		o.IOTimeout = defaultIOTimeout
	}
	if o.GiveUp <= 0 {
		o.GiveUp = defaultGiveUp
	}
	return o
}
