package transfer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
)

const (
	ackEvery       = time.Second // fsync + ack cadence
	backoffInitial = 50 * time.Millisecond
	backoffMax     = 5 * time.Second
	maxCorrupt     = 3 // corrupt sessions in a row without progress before failing
)

// permanentError marks failures a reconnect cannot fix.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

func permanent(err error) error { return permanentError{err} }

const (
	kindNone uint8 = iota
	kindData
	kindZero
)

type recvBuf struct {
	payload []byte
	raw     []byte
}

type rjob struct {
	h       Header
	payload []byte
	buf     *recvBuf
}

type puller struct {
	opts  Options
	sink  Sink
	log   hclog.Logger
	hello []byte
	limit *Limiter // this transfer's own cap (Options.RateLimit), across reconnects

	inited bool
	gr     grid
	bufs   []*recvBuf
	// direct is an O_DIRECT handle on the sink's file (nil: write through
	// Sink.WriteAt); directOff turns it off after the kernel refused it.
	direct    *os.File
	directOff atomic.Bool

	mu        sync.Mutex
	completed []bool
	received  []bool
	kind      []uint8
	hashes    [][16]byte
	watermark int   // first block not yet completed
	durable   int64 // offset up to which data is written and fsynced
	// restored: the state came from Options.Resume and nothing has been
	// received since, so a source on another grid means starting over.
	restored bool
	reported int64 // last offset given to OnCheckpoint
	// syncFailed: an fsync of the sink failed. Linux reports a writeback
	// error once, so a later fsync may succeed although pages were lost:
	// no checkpoint may be given out after it.
	syncFailed atomic.Bool

	progress atomic.Int64 // newly completed bytes, for the give-up clock
	meter    *meter
	stats    Stats
}

// Pull runs on the target host: it dials the source (again on every
// reconnect, with exponential backoff), sends a hello {version, forkID,
// host, resume offset}, writes the received frames into sink (holes via
// Zero), fsyncs and acks durable offsets, and finally checks the source's
// whole-volume digest against its own digest of what it wrote. It gives up
// with ErrAborted after opts.GiveUp without progress.
func Pull(ctx context.Context, dial func(ctx context.Context) (net.Conn, error), forkID, host string, sink Sink, opts Options) (Stats, error) {
	opts = opts.withDefaults()
	hello, err := encodeHello(forkID, host)
	if err != nil {
		return Stats{}, err
	}
	p := &puller{opts: opts, sink: sink, hello: hello, limit: NewLimiter(opts.RateLimit),
		log: opts.Logger.Named("transfer-pull").With("fork", forkID)}
	start := time.Now()
	defer func() {
		if p.meter != nil {
			p.meter.finish()
		}
		if p.direct != nil {
			p.direct.Close()
		}
	}()

	if c := opts.Resume; c != nil {
		if err := p.restore(ctx, *c); err != nil {
			if ctx.Err() != nil {
				return p.stats, fmt.Errorf("%w: %w", ErrAborted, ctx.Err())
			}
			p.log.Warn("cannot resume from the checkpoint, starting from zero", "checkpoint", c.Durable, "reason", err)
		} else {
			p.log.Info("resuming from checkpoint", "offset", c.Durable, "size", c.Size)
		}
	}

	lastProgress := time.Now()
	backoff := backoffInitial
	corrupt := 0
	for {
		before := p.progress.Load()
		err := p.session(ctx, dial)
		if err == nil {
			p.stats.Duration = time.Since(start)
			return p.stats, nil
		}
		if ctx.Err() != nil {
			return p.stats, fmt.Errorf("%w: %w", ErrAborted, ctx.Err())
		}
		var perm permanentError
		if errors.As(err, &perm) || errors.Is(err, ErrUnauthorized) {
			return p.stats, err
		}
		if p.progress.Load() != before {
			lastProgress, backoff, corrupt = time.Now(), backoffInitial, 0
		}
		if errors.Is(err, ErrNotReady) {
			// The source answered and is preparing (a snapshot being
			// taken, which a full copy makes slow): alive, so not idle.
			lastProgress = time.Now()
			backoff = min(backoff, time.Second)
		}
		if errors.Is(err, ErrCorrupt) {
			if corrupt++; corrupt >= maxCorrupt {
				return p.stats, fmt.Errorf("%d corrupt sessions in a row without progress: %w", corrupt, err)
			}
		}
		idle := time.Since(lastProgress)
		if idle >= opts.GiveUp {
			return p.stats, fmt.Errorf("%w: no progress for %s: %w", ErrAborted, idle.Round(time.Millisecond), err)
		}
		wait := min(backoff, opts.GiveUp-idle)
		if errors.Is(err, ErrNotReady) {
			p.log.Info("source not ready yet, waiting", "reason", err, "backoff", wait)
		} else {
			p.log.Warn("transfer interrupted, reconnecting", "error", err, "resume", p.durable, "backoff", wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return p.stats, fmt.Errorf("%w: %w", ErrAborted, ctx.Err())
		}
		backoff = min(2*backoff, backoffMax)
		p.stats.Reconnects++
	}
}

func (p *puller) addWire(n int64) {
	p.stats.Wire += n
	if p.meter != nil {
		p.meter.wire.Add(n)
	}
}

// session runs one connection: hello, accept, stream, and on done the
// verification. A nil return means the transfer is complete.
func (p *puller) session(ctx context.Context, dial func(ctx context.Context) (net.Conn, error)) error {
	dctx, cancel := context.WithTimeout(ctx, p.opts.IOTimeout)
	conn, err := dial(dctx)
	cancel()
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	var hdr [HeaderSize]byte
	conn.SetDeadline(time.Now().Add(p.opts.IOTimeout))
	n, err := writeFrame(conn, &hdr, Header{Type: TypeHello, Offset: p.durable, Length: p.gr.size}, p.hello)
	p.addWire(n)
	if err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	h, pl, err := ReadFrame(conn, &hdr, nil)
	if err != nil {
		return fmt.Errorf("read accept: %w", err)
	}
	p.addWire(int64(HeaderSize + len(pl)))
	switch h.Type {
	case TypeAccept:
	case TypeError:
		err := errorForCode(h.Flags, string(pl))
		if h.Flags == ErrCodeRetry || h.Flags == ErrCodeNotReady {
			return err
		}
		if p.restored && h.Flags == ErrCodeFatal {
			// The source refused the checkpoint's resume point (its grid
			// changed since, say): what it refuses is the checkpoint, so
			// drop it, once, and ask for the whole volume.
			p.log.Warn("source refused the checkpoint, starting from zero", "checkpoint", p.durable, "reason", err)
			p.reset()
			return fmt.Errorf("%w: %w", ErrRetry, err)
		}
		return permanent(err)
	default:
		return permanent(fmt.Errorf("%w: expected accept, got %s", ErrProtocol, h))
	}
	g := int64(binary.LittleEndian.Uint32(pl))
	size := h.Length
	switch {
	case g < MinChunk || g > MaxChunk:
		return permanent(fmt.Errorf("%w: chunk grid %d not in [%d, %d]", ErrProtocol, g, MinChunk, MaxChunk))
	case size > p.sink.Size():
		return permanent(fmt.Errorf("%w: source is %d bytes, target only %d", ErrProtocol, size, p.sink.Size()))
	case p.restored && g != p.gr.g:
		// The source's grid changed across a restart of this process
		// (another chunk size): the checkpoint's digest prefix is on the
		// old grid, so start over. The next hello asks for offset 0.
		p.log.Warn("source grid differs from the checkpoint's, starting from zero", "checkpoint_chunk", p.gr.g, "source_chunk", g)
		p.reset()
		return fmt.Errorf("%w: source grid %d, checkpoint grid %d", ErrRetry, g, p.gr.g)
	case p.inited && (size != p.gr.size || g != p.gr.g):
		return permanent(fmt.Errorf("%w: source changed across reconnect: size %d→%d, grid %d→%d", ErrProtocol, p.gr.size, size, p.gr.g, g))
	case h.Offset != p.durable:
		return permanent(fmt.Errorf("%w: source resumes at %d, asked %d", ErrProtocol, h.Offset, p.durable))
	}
	if !p.inited {
		p.init(grid{size: size, g: g}, 0)
	}
	p.log.Debug("streaming", "size", size, "resume", p.durable, "chunk", g)
	return p.stream(ctx, conn)
}

func (p *puller) init(gr grid, base int64) {
	p.inited = true
	p.gr = gr
	nb := gr.blocks()
	p.completed = make([]bool, nb)
	p.received = make([]bool, nb)
	p.kind = make([]uint8, nb)
	p.hashes = make([][16]byte, nb)
	p.bufs = make([]*recvBuf, p.opts.Window)
	for i := range p.bufs {
		p.bufs[i] = &recvBuf{payload: alignedBuf(int(gr.g)), raw: alignedBuf(int(gr.g))}
	}
	p.direct = openDirect(p.sink)
	p.stats.Bytes = gr.size
	p.meter = newMeter(p.opts.Progress, gr.size, base)
}

// reset forgets a restored checkpoint: the next session starts at zero.
func (p *puller) reset() {
	if p.direct != nil {
		p.direct.Close()
		p.direct = nil
	}
	if p.meter != nil {
		p.meter.finish()
		p.meter = nil
	}
	p.inited, p.restored = false, false
	p.watermark, p.durable, p.reported = 0, 0, 0
	p.stats.Resumed = 0
}

// restore takes up a checkpoint from an earlier Pull: the grid, and the
// hashes and kinds of the durable prefix, re-read from the sink and
// classified the way the source classifies blocks, so the digest and the
// totals come out as if this Pull had received them. Holes of a sparse
// sink (SEEK_DATA) are zero blocks without a read; a block-device sink is
// read with O_DIRECT, as a source is, to keep the host's page cache for
// its databases. On error the puller is left untouched (fresh).
func (p *puller) restore(ctx context.Context, c Checkpoint) error {
	gr := grid{size: c.Size, g: c.Chunk}
	switch {
	case c.Chunk < MinChunk || c.Chunk > MaxChunk:
		return fmt.Errorf("chunk %d not in [%d, %d]", c.Chunk, MinChunk, MaxChunk)
	case c.Size <= 0 || c.Size > p.sink.Size():
		return fmt.Errorf("volume size %d, target holds %d", c.Size, p.sink.Size())
	case c.Durable <= 0 || c.Durable > c.Size || (c.Durable%c.Chunk != 0 && c.Durable != c.Size):
		return fmt.Errorf("offset %d not on the %d-byte grid of a %d-byte volume", c.Durable, c.Chunk, c.Size)
	}
	src, ok := p.sink.(Source)
	if !ok {
		return errors.New("the target cannot be read back")
	}
	first := int((c.Durable + c.Chunk - 1) / c.Chunk)
	kinds := make([]uint8, first)
	hashes := make([][16]byte, first)
	ec := extentCursor{ext: normalizeExtents(dataExtents(src, c.Size), c.Size)}
	direct := openDirectSource(src, p.log)
	defer direct.close()
	buf := alignedBufTo(int(c.Chunk), direct.bufAlign())
	pace := func(ctx context.Context, n int) error { return WaitAll(ctx, n, p.opts.Limiter) }
	for i := range first {
		if err := ctx.Err(); err != nil {
			return err
		}
		off, n := gr.block(i)
		// Local reads, next to whatever else this host serves: the
		// node's shared limiter paces them (not this fork's own cap,
		// which is about the stream).
		var err error
		kinds[i], hashes[i], _, err = hashBlock(ctx, direct, src, &ec, buf, off, n, pace)
		if err != nil {
			return fmt.Errorf("re-read target: %w", err)
		}
	}
	p.init(gr, c.Durable)
	copy(p.kind, kinds)
	copy(p.hashes, hashes)
	for i := range first {
		p.completed[i] = true
	}
	p.watermark = first
	p.durable, p.reported = c.Durable, c.Durable
	p.restored = true
	p.stats.Resumed = c.Durable
	return nil
}

// checkpoint reports a new durable offset to Options.OnCheckpoint.
func (p *puller) checkpoint(durable int64) {
	if p.opts.OnCheckpoint == nil || durable <= p.reported || p.syncFailed.Load() {
		return
	}
	p.reported = durable
	p.opts.OnCheckpoint(Checkpoint{Size: p.gr.size, Chunk: p.gr.g, Durable: durable})
}

// watermarkOff is the contiguous completed offset.
func (p *puller) watermarkOff() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.watermark >= len(p.completed) {
		return p.gr.size
	}
	return int64(p.watermark) * p.gr.g
}

func (p *puller) markDone(i0, i1 int, kind uint8, h [16]byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := i0; i < i1; i++ {
		if !p.completed[i] {
			_, n := p.gr.block(i)
			p.progress.Add(n)
			p.meter.done.Add(n)
		}
		p.completed[i] = true
		p.kind[i] = kind
		if kind == kindZero {
			_, n := p.gr.block(i)
			p.hashes[i] = zeroHash(int(n))
		} else {
			p.hashes[i] = h
		}
	}
	for p.watermark < len(p.completed) && p.completed[p.watermark] {
		p.watermark++
	}
}

// checkRange validates that a frame covers whole grid blocks of this volume
// and returns the block span.
func (p *puller) checkRange(h Header) (int, int, error) {
	end := h.Offset + h.Length
	if h.Offset%p.gr.g != 0 || end > p.gr.size || (end%p.gr.g != 0 && end != p.gr.size) {
		return 0, 0, fmt.Errorf("%w: %s not on the %d-byte grid of a %d-byte volume", ErrProtocol, h, p.gr.g, p.gr.size)
	}
	i0 := int(h.Offset / p.gr.g)
	i1 := int((end + p.gr.g - 1) / p.gr.g)
	if h.Type == TypeData && i1-i0 != 1 {
		return 0, 0, fmt.Errorf("%w: %s spans %d blocks", ErrProtocol, h, i1-i0)
	}
	return i0, i1, nil
}

func (p *puller) apply(j rjob) error {
	i0, i1, _ := p.checkRange(j.h) // checked by the reader
	switch j.h.Type {
	case TypeZero:
		if err := p.sink.Zero(j.h.Offset, j.h.Length); err != nil {
			return permanent(fmt.Errorf("zero target at %d (+%d): %w", j.h.Offset, j.h.Length, err))
		}
		p.markDone(i0, i1, kindZero, [16]byte{})
	case TypeData:
		raw, err := decompress(j.h.Flags, j.buf.raw, j.payload, int(j.h.Length))
		if err != nil {
			return fmt.Errorf("%s: %w", j.h, err)
		}
		if err := p.write(raw, j.h.Offset); err != nil {
			return permanent(fmt.Errorf("write target at %d (+%d): %w", j.h.Offset, j.h.Length, err))
		}
		p.markDone(i0, i1, kindData, blockHash(raw))
	}
	return nil
}

// write puts one block on the sink: with O_DIRECT when the sink has a file
// and the block is aligned (every block but an odd-sized tail), else
// through Sink.WriteAt followed by a writeback hint, so the fsync that
// precedes each ack finds little left to flush.
func (p *puller) write(b []byte, off int64) error {
	if p.direct != nil && !p.directOff.Load() && isAligned(b, off) {
		_, err := p.direct.WriteAt(b, off)
		if err == nil {
			return nil
		}
		if !directRefused(err) {
			return err
		}
		p.log.Debug("O_DIRECT refused, writing through the page cache", "error", err)
		p.directOff.Store(true)
	}
	if _, err := p.sink.WriteAt(b, off); err != nil {
		return err
	}
	startWriteback(p.sink, off, int64(len(b)))
	return nil
}

func (p *puller) stream(ctx context.Context, conn net.Conn) error {
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	fail := func(err error) { cancel(err) }

	free := make(chan *recvBuf, len(p.bufs))
	for _, b := range p.bufs {
		free <- b
	}
	jobs := make(chan rjob, p.opts.Window)
	var writeFailed atomic.Bool
	var workers sync.WaitGroup
	// Workers decompress, hash and write; a write blocks on the disk, so
	// run a few more than there are CPUs (buffers still bound memory).
	for range min(len(p.bufs), runtime.GOMAXPROCS(0)+2) {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for j := range jobs {
				// A frame that arrived intact is applied even after the
				// connection failed: it moves the resume point forward.
				// Only a local write failure stops the writes.
				if !writeFailed.Load() {
					if j.h.Type == TypeData {
						// This transfer's cap and the node's shared
						// limiter pace this host's writes (internal/pace
						// lowers the node's while the disk is busy); TCP
						// carries the slowdown back to the sender. Only
						// pacing: an error here is the context's, and the
						// frame is applied anyway.
						_ = WaitAll(ctx, int(j.h.Length), p.limit, p.opts.Limiter)
					}
					if err := p.apply(j); err != nil {
						var perm permanentError
						if errors.As(err, &perm) {
							writeFailed.Store(true)
						}
						fail(err)
					}
				}
				if j.buf != nil {
					free <- j.buf
				}
			}
		}()
	}

	// Syncer: fsync, then ack the watermark that was complete before the
	// fsync began. The final ack (= size) is only sent after verification.
	var ackWire atomic.Int64
	syncStop := make(chan struct{})
	var syncWG sync.WaitGroup
	syncWG.Add(1)
	go func() {
		defer syncWG.Done()
		var ahdr [HeaderSize]byte
		t := time.NewTicker(ackEvery)
		defer t.Stop()
		last := p.durable
		for {
			select {
			case <-syncStop:
				return
			case <-sctx.Done():
				return
			case <-t.C:
			}
			w := p.watermarkOff()
			if w <= last || w >= p.gr.size {
				continue
			}
			if err := p.sink.Sync(); err != nil {
				p.syncFailed.Store(true)
				fail(permanent(fmt.Errorf("fsync target: %w", err)))
				return
			}
			p.checkpoint(w)
			conn.SetWriteDeadline(time.Now().Add(p.opts.IOTimeout))
			hdrN, err := writeFrame(conn, &ahdr, Header{Type: TypeAck, Offset: w}, nil)
			ackWire.Add(hdrN)
			if err != nil {
				fail(fmt.Errorf("send ack: %w", err))
				return
			}
			last = w
		}
	}()

	var hdr [HeaderSize]byte
	var done *doneInfo
	var wire int64
read:
	for {
		var b *recvBuf
		select {
		case b = <-free:
		case <-sctx.Done():
			break read
		}
		conn.SetReadDeadline(time.Now().Add(p.opts.IOTimeout))
		h, pl, err := ReadFrame(conn, &hdr, b.payload[:0])
		if err != nil {
			free <- b
			fail(fmt.Errorf("receive: %w", err))
			break
		}
		wire += int64(HeaderSize + len(pl))
		p.meter.wire.Add(int64(HeaderSize + len(pl)))
		switch h.Type {
		case TypeData, TypeZero:
			i0, _, err := p.checkRange(h)
			if err != nil {
				free <- b
				fail(permanent(err))
				break read
			}
			p.restored = false // the grid is now confirmed by the source
			j := rjob{h: h}
			if h.Type == TypeData {
				j.payload, j.buf = pl, b
				p.mu.Lock()
				if p.received[i0] {
					p.stats.Resent += h.Length
					p.meter.resent.Add(h.Length)
				}
				p.received[i0] = true
				p.mu.Unlock()
			} else {
				free <- b
			}
			select {
			case jobs <- j:
			case <-sctx.Done():
				if j.buf != nil {
					free <- j.buf
				}
				break read
			}
		case TypeAck:
			// Keepalive while the source re-hashes the resumed prefix.
			free <- b
		case TypeDone:
			if h.Length != p.gr.size {
				free <- b
				fail(permanent(fmt.Errorf("%w: %s for a %d-byte volume", ErrProtocol, h, p.gr.size)))
				break read
			}
			d := decodeDone(pl)
			done = &d
			free <- b
			break read
		case TypeError:
			err := errorForCode(h.Flags, string(pl))
			if h.Flags != ErrCodeRetry {
				err = permanent(err)
			}
			free <- b
			fail(err)
			break read
		default:
			free <- b
			fail(permanent(fmt.Errorf("%w: unexpected %s from source", ErrProtocol, h)))
			break read
		}
	}
	close(jobs)
	workers.Wait()
	close(syncStop)
	syncWG.Wait()
	p.stats.Wire += wire + ackWire.Load()

	// Whatever completed is written; fsync it so the resume point is honest.
	if err := p.sink.Sync(); err != nil {
		p.syncFailed.Store(true)
		return permanent(fmt.Errorf("fsync target: %w", err))
	}
	p.durable = p.watermarkOff()
	p.checkpoint(p.durable)
	if err := context.Cause(sctx); err != nil {
		return err
	}
	if done == nil {
		return fmt.Errorf("%w: stream ended without done", ErrProtocol)
	}
	return p.finish(conn, &hdr, *done)
}

// finish checks completeness, totals and the whole-volume digest, then
// sends the final ack.
func (p *puller) finish(conn net.Conn, hdr *[HeaderSize]byte, d doneInfo) error {
	if p.durable != p.gr.size {
		return permanent(fmt.Errorf("%w: done frame but only %d of %d bytes received", ErrProtocol, p.durable, p.gr.size))
	}
	if ss := p.sink.Size(); ss > p.gr.size {
		// A target larger than the source (e.g. rounded up to an LV
		// extent) must not show stale bytes past the end.
		if err := p.sink.Zero(p.gr.size, ss-p.gr.size); err != nil {
			return permanent(fmt.Errorf("zero target tail: %w", err))
		}
		if err := p.sink.Sync(); err != nil {
			return permanent(fmt.Errorf("fsync target: %w", err))
		}
	}
	var data, zero int64
	for i, k := range p.kind {
		_, n := p.gr.block(i)
		if k == kindData {
			data += n
		} else {
			zero += n
		}
	}
	p.stats.DataBytes, p.stats.ZeroBytes = data, zero
	mine := volumeDigest(p.hashes)
	p.stats.Digest = digestString(mine)
	if mine != d.Digest {
		err := fmt.Errorf("%w: whole-volume digest mismatch: source %s, target %s", ErrCorrupt, digestString(d.Digest), p.stats.Digest)
		conn.SetWriteDeadline(time.Now().Add(p.opts.IOTimeout))
		writeFrame(conn, hdr, Header{Type: TypeError, Flags: ErrCodeCorrupt}, []byte(err.Error()))
		return permanent(err)
	}
	if data != d.DataBytes || zero != d.ZeroBytes {
		return permanent(fmt.Errorf("%w: totals differ: source data/zero %d/%d, target %d/%d", ErrCorrupt, d.DataBytes, d.ZeroBytes, data, zero))
	}
	conn.SetWriteDeadline(time.Now().Add(p.opts.IOTimeout))
	n, err := writeFrame(conn, hdr, Header{Type: TypeAck, Offset: p.gr.size}, nil)
	p.stats.Wire += n
	if err != nil {
		// Verified and durable: the transfer is complete regardless.
		p.log.Warn("final ack not delivered", "error", err)
	}
	p.log.Info("transfer verified", "bytes", p.gr.size, "data", data, "zero", zero, "wire", p.stats.Wire, "resent", p.stats.Resent, "digest", p.stats.Digest)
	return nil
}
