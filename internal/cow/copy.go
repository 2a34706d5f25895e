package cow

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
)

// ErrVerify: a chunk read back from the destination does not match the
// checksum taken of the source.
var ErrVerify = errors.New("copy verification failed")

const (
	DefaultChunkSize = 1 << 20
	DefaultWorkers   = 4
)

// CopyOptions tune Copy. Zero values pick the defaults.
type CopyOptions struct {
	ChunkSize int                     // bytes per chunk, default 1 MiB (rounded to 4096)
	Workers   int                     // chunks in flight, default 4
	Progress  func(done, total int64) // called after each chunk, serialised, done rising
	Logger    hclog.Logger
	// Throttle, when set, is called before each chunk is read with its
	// size; it blocks to hold the copy to a rate (the node's fork rate
	// limit), so a copy does not starve the database on the same disks.
	Throttle func(ctx context.Context, n int) error
}

// CopyStats tell what a copy did. Bytes is the logical size covered (the
// source size); DataBytes were written; ZeroBytes were all-zero chunks left
// as holes. Gaps between extents count in neither.
type CopyStats struct {
	Bytes, DataBytes, ZeroBytes int64
	Duration                    time.Duration
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Copy copies src (a snapshot) into dst: only data extents are read,
// all-zero chunks are left as holes (dst.Zero), as are the gaps between
// extents and any tail of a larger dst. Workers each read, write and verify
// one chunk at a time, so reads and writes of different chunks overlap.
//
// Verification: the CRC32C of each source buffer is taken as it is read;
// after the write the chunk is read back from dst (normally from the page
// cache, so it costs a memcpy, not disk I/O) and its CRC32C must match.
// This proves dst holds exactly the bytes read from src at the right
// offsets (catching short or misplaced writes and faulty Device layers). It
// does not prove the media will return them after a reboot; the final
// fsync is what makes them durable. Written ranges are handed to early
// writeback as the copy goes, so the closing fsync has little left to do.
func Copy(ctx context.Context, src Device, extents []Extent, dst Device, opts CopyOptions) (CopyStats, error) {
	start := time.Now()
	chunk := int64(opts.ChunkSize)
	if chunk <= 0 {
		chunk = DefaultChunkSize
	}
	chunk = (chunk + BlockSize - 1) / BlockSize * BlockSize
	workers := opts.Workers
	if workers <= 0 {
		workers = DefaultWorkers
	}
	log := opts.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	srcSize, dstSize := src.Size(), dst.Size()
	if dstSize < srcSize {
		return CopyStats{}, fmt.Errorf("%w: destination (%d bytes) is smaller than source (%d bytes)", ErrInvalid, dstSize, srcSize)
	}
	var total int64
	prevEnd := int64(0)
	for i, e := range extents {
		if e.Offset < prevEnd || e.Length <= 0 || e.Offset+e.Length > srcSize {
			return CopyStats{}, fmt.Errorf("%w: extent %d [%d,+%d) is out of order, empty or past the source size %d",
				ErrInvalid, i, e.Offset, e.Length, srcSize)
		}
		prevEnd = e.Offset + e.Length
		total += e.Length
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		errOnce  sync.Once
		firstErr error
		dataB    atomic.Int64
		zeroB    atomic.Int64
		progMu   sync.Mutex
		done     int64
	)
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err; cancel() })
	}
	type job struct {
		off int64
		n   int
	}
	jobs := make(chan job, workers)

	// Producer: zero the gaps (cheap on a fresh file) and hand out chunks
	// aligned to absolute chunk boundaries, keeping readahead a few chunks
	// in front of the workers when the source can prefetch.
	pf, _ := src.(Prefetcher)
	go func() {
		defer close(jobs)
		ahead := &chunkIter{ext: extents, chunk: chunk}
		if pf != nil {
			for i := 0; i < prefetchChunks; i++ {
				if off, n, ok := ahead.next(); ok {
					pf.Prefetch(off, n)
				}
			}
		}
		it := &chunkIter{ext: extents, chunk: chunk}
		pos := int64(0)
		for {
			off, n, ok := it.next()
			if !ok {
				break
			}
			if off > pos {
				if err := dst.Zero(pos, off-pos); err != nil {
					fail(fmt.Errorf("zero gap [%d,%d): %w", pos, off, err))
					return
				}
			}
			if pf != nil {
				if poff, pn, ok := ahead.next(); ok {
					pf.Prefetch(poff, pn)
				}
			}
			select {
			case jobs <- job{off, int(n)}:
			case <-ctx.Done():
				return
			}
			pos = off + n
		}
		if pos < dstSize {
			if err := dst.Zero(pos, dstSize-pos); err != nil {
				fail(fmt.Errorf("zero tail [%d,%d): %w", pos, dstSize, err))
			}
		}
	}()

	// Early writeback: each written chunk is handed to the disk at once
	// (sync_file_range WRITE, no wait), so the closing fsync finds little
	// left to do. (A separate writeback goroutine measured no better.)
	wb, _ := dst.(WriteBacker)

	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, chunk)
			vbuf := make([]byte, chunk)
			for j := range jobs {
				if ctx.Err() != nil {
					continue // drain
				}
				if opts.Throttle != nil {
					if err := opts.Throttle(ctx, j.n); err != nil {
						fail(err)
						continue
					}
				}
				if err := copyChunk(src, dst, wb, buf[:j.n], vbuf[:j.n], j.off, &dataB, &zeroB); err != nil {
					fail(err)
					continue
				}
				if opts.Progress != nil {
					progMu.Lock()
					done += int64(j.n)
					opts.Progress(done, total)
					progMu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	stats := CopyStats{Bytes: srcSize, DataBytes: dataB.Load(), ZeroBytes: zeroB.Load()}
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	if firstErr != nil {
		stats.Duration = time.Since(start)
		return stats, fmt.Errorf("copy: %w", firstErr)
	}
	if err := dst.Sync(); err != nil {
		return stats, fmt.Errorf("copy: final sync: %w", err)
	}
	stats.Duration = time.Since(start)
	log.Debug("copy done", "bytes", stats.Bytes, "data", stats.DataBytes, "zero", stats.ZeroBytes, "took", stats.Duration)
	return stats, nil
}

// prefetchChunks is how far readahead runs in front of the workers.
const prefetchChunks = 8

// chunkIter walks the extents in chunks aligned to absolute multiples of
// chunk, so chunk boundaries do not depend on where an extent starts.
type chunkIter struct {
	ext   []Extent
	chunk int64
	i     int
	off   int64 // next offset inside ext[i]; 0 means its start
}

func (c *chunkIter) next() (int64, int64, bool) {
	for c.i < len(c.ext) {
		e := c.ext[c.i]
		if c.off < e.Offset {
			c.off = e.Offset
		}
		end := e.Offset + e.Length
		if c.off >= end {
			c.i++
			continue
		}
		off := c.off
		stop := min((off/c.chunk+1)*c.chunk, end)
		c.off = stop
		return off, stop - off, true
	}
	return 0, 0, false
}

func copyChunk(src, dst Device, wb WriteBacker, buf, vbuf []byte, off int64, dataB, zeroB *atomic.Int64) error {
	if n, err := src.ReadAt(buf, off); n < len(buf) {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("read source at %d: %w", off, err)
	}
	n := int64(len(buf))
	if isZero(buf) {
		if err := dst.Zero(off, n); err != nil {
			return fmt.Errorf("zero destination at %d: %w", off, err)
		}
		if err := readFull(dst, vbuf, off); err != nil {
			return err
		}
		if !isZero(vbuf) {
			return fmt.Errorf("%w: range [%d,+%d) is not zero after Zero", ErrVerify, off, n)
		}
		zeroB.Add(n)
		return nil
	}
	sum := crc32.Checksum(buf, castagnoli)
	if w, err := dst.WriteAt(buf, off); err != nil || w < len(buf) {
		if err == nil {
			err = io.ErrShortWrite
		}
		return fmt.Errorf("write destination at %d: %w", off, err)
	}
	if wb != nil {
		// Only a hint: a real write error surfaces in the final fsync.
		_ = wb.StartWriteback(off, n)
	}
	if err := readFull(dst, vbuf, off); err != nil {
		return err
	}
	if got := crc32.Checksum(vbuf, castagnoli); got != sum {
		return fmt.Errorf("%w: chunk at %d: crc32c %08x read back, %08x written", ErrVerify, off, got, sum)
	}
	dataB.Add(n)
	return nil
}

func readFull(d Device, p []byte, off int64) error {
	if n, err := d.ReadAt(p, off); n < len(p) {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("verify: read back destination at %d: %w", off, err)
	}
	return nil
}

// isZero reports whether p is all zero bytes (memequal against a zero
// block runs at memory speed).
func isZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeroBlock))
		if !bytes.Equal(p[:n], zeroBlock[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

// ForkLocal forks srcID into a new volume on the same backend:
// Snapshot(src, "snap_"+spec.ID) -> Create(spec) -> Copy -> Release.
// spec.Size 0 means the source's size. On any failure (ctx cancel
// included) the partial target is removed and the snapshot released.
func ForkLocal(ctx context.Context, b Backend, srcID string, spec CreateSpec, opts CopyOptions) (stats CopyStats, err error) {
	if err := ValidateID(spec.ID); err != nil {
		return stats, err
	}
	if err := ValidateName(spec.Name); err != nil {
		return stats, err
	}
	if spec.Size != 0 {
		if err := ValidateSize(spec.Size); err != nil {
			return stats, err
		}
	}
	log := opts.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	// Cleanup must run even when ctx is what failed.
	bg := context.WithoutCancel(ctx)
	snapID := "snap_" + spec.ID
	snap, err := b.Snapshot(ctx, srcID, snapID)
	if err != nil {
		return stats, fmt.Errorf("fork %s: %w", spec.ID, err)
	}
	defer func() {
		if rerr := b.Release(bg, snapID); rerr != nil {
			log.Error("release snapshot", "snapshot", snapID, "error", rerr)
			if err == nil {
				err = fmt.Errorf("fork %s: release snapshot: %w", spec.ID, rerr)
			}
		}
	}()
	if spec.Size == 0 {
		spec.Size = snap.Size
	}
	if spec.Size < snap.Size {
		return stats, fmt.Errorf("fork %s: %w: size %d is smaller than source %s (%d)", spec.ID, ErrInvalid, spec.Size, srcID, snap.Size)
	}
	if _, err := b.Create(ctx, spec); err != nil {
		return stats, fmt.Errorf("fork %s: %w", spec.ID, err)
	}
	defer func() {
		if err != nil {
			// Not found: a cancel's cleanup removed it first, as it should.
			if rerr := b.Remove(bg, spec.ID); rerr != nil && !errors.Is(rerr, ErrNotFound) {
				log.Error("remove partial fork target", "id", spec.ID, "error", rerr)
			}
		}
	}()
	stats, err = copyVolume(ctx, b, snapID, spec.ID, opts)
	if err != nil {
		return stats, fmt.Errorf("fork %s: %w", spec.ID, err)
	}
	log.Info("local fork done", "id", spec.ID, "source", srcID, "data", stats.DataBytes, "took", stats.Duration)
	return stats, nil
}

func copyVolume(ctx context.Context, b Backend, srcID, dstID string, opts CopyOptions) (CopyStats, error) {
	// Open first: it activates an LV, and a thin LV's map is read from the
	// kernel's tables of the active device.
	sd, err := b.Open(ctx, srcID, false)
	if err != nil {
		return CopyStats{}, err
	}
	defer sd.Close()
	ext, err := b.Extents(ctx, srcID)
	if err != nil {
		return CopyStats{}, err
	}
	dd, err := b.Open(ctx, dstID, true)
	if err != nil {
		return CopyStats{}, err
	}
	stats, err := Copy(ctx, sd, ext, dd, opts)
	if cerr := dd.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close destination: %w", cerr)
	}
	return stats, err
}

// CloneOrFork makes spec from srcID by the cheapest local path: an O(1)
// clone when the backend has them, else ForkLocal. The stats are zero for
// a clone.
func CloneOrFork(ctx context.Context, b Backend, srcID string, spec CreateSpec, opts CopyOptions) (Volume, CopyStats, error) {
	if b.Features().Clone {
		v, err := b.Clone(ctx, srcID, spec)
		return v, CopyStats{}, err
	}
	stats, err := ForkLocal(ctx, b, srcID, spec, opts)
	if err != nil {
		return Volume{}, stats, err
	}
	v, err := b.Get(ctx, spec.ID)
	return v, stats, err
}
