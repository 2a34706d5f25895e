package transfer

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/klauspost/compress/s2"
)

// Opener is the source host's hook: authorize the pull of forkID by peer
// (the verified TLS client-certificate CommonName if the conn is *tls.Conn
// — empty when the client presented no verified certificate — else the host
// name the puller claimed in its hello), and return the snapshot to read
// and its data extents (nil extents = unknown: scan and skip zero chunks).
// Return an error wrapping ErrUnauthorized to refuse; any other error is
// reported to the puller as fatal. The closer is called when the session
// ends.
type Opener func(ctx context.Context, forkID, peer string) (src Source, extents []Extent, closer func(), err error)

// Server streams snapshots to pullers.
type Server struct {
	open Opener
	opts Options
	log  hclog.Logger

	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	wg        sync.WaitGroup

	directBytes atomic.Int64 // source bytes read with O_DIRECT, all sessions
	hashes      hashCache    // per fork: block hashes earlier sessions computed
}

// NewServer returns a server that authorizes and opens sources with open.
func NewServer(open Opener, opts Options) *Server {
	opts = opts.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		open: open, opts: opts, log: opts.Logger.Named("transfer-server"),
		ctx: ctx, cancel: cancel,
		listeners: map[net.Listener]struct{}{},
		conns:     map[net.Conn]struct{}{},
	}
}

// Serve accepts connections on l until Close; it returns nil after Close.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isClosed() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("transfer: accept: %w", err)
		}
		backoff = 0
		go s.ServeConn(c)
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// ServeConn runs one pull session on an accepted connection and returns
// when it ends; the connection is closed. Callers that multiplex ports hand
// connections over here (usually with go).
func (s *Server) ServeConn(c net.Conn) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer func() {
		c.Close()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.wg.Done()
	}()
	log := s.log.With("remote", c.RemoteAddr().String())
	if err := s.session(c, log); err != nil {
		log.Warn("session failed", "error", err)
	}
}

// Close stops the listeners, cuts every session and waits for them.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	return nil
}

func (s *Server) sendError(c net.Conn, code uint16, msg string) {
	if len(msg) > maxError {
		msg = msg[:maxError]
	}
	var hdr [HeaderSize]byte
	c.SetWriteDeadline(time.Now().Add(s.opts.IOTimeout))
	writeFrame(c, &hdr, Header{Type: TypeError, Flags: code}, []byte(msg))
}

func (s *Server) session(c net.Conn, log hclog.Logger) error {
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	c.SetReadDeadline(time.Now().Add(s.opts.IOTimeout))

	peer := ""
	tc, isTLS := c.(*tls.Conn)
	if isTLS {
		hctx, hcancel := context.WithTimeout(ctx, s.opts.IOTimeout)
		err := tc.HandshakeContext(hctx)
		hcancel()
		if err != nil {
			return fmt.Errorf("tls handshake: %w", err)
		}
		if st := tc.ConnectionState(); len(st.VerifiedChains) > 0 && len(st.PeerCertificates) > 0 {
			peer = st.PeerCertificates[0].Subject.CommonName
		}
	}

	var hdr [HeaderSize]byte
	h, p, err := ReadFrame(c, &hdr, nil)
	if err != nil {
		s.sendError(c, ErrCodeFatal, "bad hello: "+err.Error())
		return fmt.Errorf("read hello: %w", err)
	}
	if h.Type != TypeHello {
		s.sendError(c, ErrCodeFatal, "expected hello, got "+h.Type.String())
		return fmt.Errorf("%w: expected hello, got %s", ErrProtocol, h)
	}
	forkID, host, err := decodeHello(p)
	if err != nil {
		s.sendError(c, ErrCodeFatal, err.Error())
		return err
	}
	if !isTLS {
		if !s.opts.PlainPeers {
			s.sendError(c, ErrCodeUnauthorized, "a pull needs a TLS connection with a cluster certificate")
			return fmt.Errorf("%w: plain connection claiming to be %q", ErrUnauthorized, host)
		}
		peer = host
	}
	log = log.With("fork", forkID, "peer", peer)

	src, extents, closer, err := s.open(ctx, forkID, peer)
	if err != nil {
		code := ErrCodeFatal
		switch {
		case errors.Is(err, ErrUnauthorized):
			code = ErrCodeUnauthorized
		case errors.Is(err, ErrNotReady):
			code = ErrCodeNotReady
			log.Debug("source not ready yet", "reason", err)
			s.sendError(c, code, err.Error())
			return nil // not a failure of this server
		case errors.Is(err, ErrRetry):
			code = ErrCodeRetry
		}
		s.sendError(c, code, err.Error())
		return fmt.Errorf("open %s for %q: %w", forkID, peer, err)
	}
	if closer != nil {
		defer closer()
	}

	size := src.Size()
	g := int64(s.opts.ChunkSize)
	resume := h.Offset
	switch {
	case size < 0 || size > MaxVolume:
		s.sendError(c, ErrCodeFatal, fmt.Sprintf("source size %d out of range", size))
		return fmt.Errorf("%w: source size %d", ErrProtocol, size)
	case h.Length != 0 && h.Length != size:
		s.sendError(c, ErrCodeFatal, fmt.Sprintf("resume for a %d-byte volume, source has %d", h.Length, size))
		return fmt.Errorf("%w: resume size %d != source size %d", ErrProtocol, h.Length, size)
	case resume > size || (resume%g != 0 && resume != size):
		s.sendError(c, ErrCodeFatal, fmt.Sprintf("resume offset %d not on the %d-byte grid of a %d-byte volume", resume, g, size))
		return fmt.Errorf("%w: resume offset %d", ErrProtocol, resume)
	}

	var acc [acceptPayload]byte
	binary.LittleEndian.PutUint32(acc[:], uint32(g))
	c.SetWriteDeadline(time.Now().Add(s.opts.IOTimeout))
	if _, err := writeFrame(c, &hdr, Header{Type: TypeAccept, Offset: resume, Length: size}, acc[:]); err != nil {
		return fmt.Errorf("send accept: %w", err)
	}
	log.Info("streaming", "size", size, "resume", resume, "chunk", g, "codec", s.opts.Codec, "zstd_encoder", zstdEncoderName)

	if extents == nil {
		extents = dataExtents(src, size) // SEEK_DATA where the source is a file
	}
	snd, err := newSender(s.opts, src, normalizeExtents(extents, size), grid{size: size, g: g}, c, log)
	if err != nil {
		s.sendError(c, ErrCodeFatal, err.Error())
		return err
	}
	defer func() {
		s.directBytes.Add(snd.directBytes())
		snd.direct.close()
		if snd.acked {
			s.hashes.drop(forkID)
		} else {
			s.hashes.put(forkID, snd.gr, snd.hashes, snd.kind)
		}
	}()
	snd.adopt(s.hashes.get(forkID, snd.gr), resume)
	start := time.Now()
	if err := snd.run(ctx, resume); err != nil {
		if !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
			s.sendError(c, ErrCodeRetry, err.Error())
		}
		return err
	}
	log.Info("stream complete", "bytes", size-resume, "wire", snd.wire.Load(), "direct_read", snd.directBytes(),
		"prefix_reread", snd.prefixRead.Load(), "duration", time.Since(start))
	return nil
}

// normalizeExtents sorts, clips to the volume and merges extents. nil stays
// nil (unknown: scan everything).
func normalizeExtents(in []Extent, size int64) []Extent {
	if in == nil {
		return nil
	}
	out := make([]Extent, 0, len(in))
	for _, e := range in {
		if e.Length <= 0 || e.Offset >= size || e.Offset < 0 {
			continue
		}
		out = append(out, Extent{e.Offset, min(e.Length, size-e.Offset)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Offset < out[j].Offset })
	merged := out[:0]
	for _, e := range out {
		if n := len(merged); n > 0 && e.Offset <= merged[n-1].Offset+merged[n-1].Length {
			end := max(merged[n-1].Offset+merged[n-1].Length, e.Offset+e.Length)
			merged[n-1].Length = end - merged[n-1].Offset
			continue
		}
		merged = append(merged, e)
	}
	return merged
}

// extentCursor answers "does block [off, off+n) hold data?" for blocks
// visited in increasing order.
type extentCursor struct {
	ext []Extent // nil = unknown
	i   int
}

func (ec *extentCursor) hasData(off, n int64) bool {
	if ec.ext == nil {
		return true
	}
	for ec.i < len(ec.ext) && ec.ext[ec.i].Offset+ec.ext[ec.i].Length <= off {
		ec.i++
	}
	return ec.i < len(ec.ext) && ec.ext[ec.i].Offset < off+n
}

type sendBuf struct {
	raw  []byte
	comp []byte
}

// outFrame is one frame queued for the writer.
type outFrame struct {
	seq     uint64 // position in grid order
	h       Header
	payload []byte
	buf     *sendBuf // returned to the free list once written
}

type sender struct {
	opts    Options
	src     Source
	ext     []Extent
	gr      grid
	conn    net.Conn
	log     hclog.Logger
	codec   uint16
	auto    *autoPicker
	limit   *Limiter
	workers int
	// direct reads a block-device source with O_DIRECT (nil: Source.ReadAt).
	direct *directSource

	// Block i's hash and kind are written once per session, by the one
	// goroutine that classified it; read after they all finished.
	hashes [][16]byte
	kind   []uint8
	data   atomic.Int64
	zero   atomic.Int64
	wire   atomic.Int64
	meter  *meter
	acked  bool // the puller acknowledged the whole volume

	prefixHashed atomic.Int64 // progress of hashPrefix, for keepalives
	prefixRead   atomic.Int64 // bytes hashPrefix read from the source
}

// setHash records block i (n bytes) as data with hash h, or as zeros.
func (s *sender) setHash(i int, n int64, kind uint8, h [16]byte) {
	s.kind[i] = kind
	if kind == kindZero {
		s.hashes[i] = zeroHash(int(n))
		s.zero.Add(n)
		return
	}
	s.hashes[i] = h
	s.data.Add(n)
}

// adopt takes the hashes an earlier session of this fork computed for
// blocks before the resume point, so hashPrefix need not read them again.
func (s *sender) adopt(e *hashEntry, resume int64) {
	if e == nil {
		return
	}
	for i := range min(len(e.kind), int((resume+s.gr.g-1)/s.gr.g)) {
		if k := e.kind[i]; k != kindNone {
			_, n := s.gr.block(i)
			s.setHash(i, n, k, e.hashes[i])
		}
	}
}

func newSender(opts Options, src Source, ext []Extent, gr grid, conn net.Conn, log hclog.Logger) (*sender, error) {
	codec, auto, err := parseCodec(opts.Codec)
	if err != nil {
		return nil, err
	}
	w := max(1, runtime.GOMAXPROCS(0))
	s := &sender{
		opts: opts, src: src, ext: ext, gr: gr, conn: conn, log: log,
		codec: codec, limit: NewLimiter(opts.RateLimit), workers: w,
		hashes: make([][16]byte, gr.blocks()),
		kind:   make([]uint8, gr.blocks()),
		direct: openDirectSource(src, log),
	}
	if s.direct != nil {
		// O_DIRECT has no readahead: a worker waits for its own read. Two
		// more workers than CPUs keep the CPUs compressing while up to
		// w+2 reads are in flight (Window buffers still bound memory).
		s.workers = w + 2
		log.Debug("reading the block device with O_DIRECT", "align", s.direct.bufAlign(), "workers", s.workers)
	}
	if auto {
		s.auto = newAutoPicker(w)
	}
	return s, nil
}

// directBytes is how much of the source was read with O_DIRECT.
func (s *sender) directBytes() int64 {
	if s.direct == nil {
		return 0
	}
	return s.direct.bytes.Load()
}

// readBlock fills p from the source at off: the aligned part with O_DIRECT
// when the source is a block device, the rest through Source.ReadAt. io.EOF
// from Source.ReadAt is not an error (a source shorter than its Size reads
// as what it has).
func (s *sender) readBlock(p []byte, off int64) error { return readBlock(s.direct, s.src, p, off) }

// hashBlock classifies and hashes one block of src at off (n bytes) the
// way both sides of a stream do for the whole-volume digest: a hole (ec
// says no data; not read, not paced) or an all-zero block is a zero block,
// anything else data with blockHash. Reads are paced by pace first and go
// through buf. read reports whether the block was read.
func hashBlock(ctx context.Context, d *directSource, src Source, ec *extentCursor, buf []byte, off, n int64,
	pace func(context.Context, int) error) (kind uint8, h [16]byte, read bool, err error) {
	if !ec.hasData(off, n) {
		return kindZero, zeroHash(int(n)), false, nil
	}
	if err := pace(ctx, int(n)); err != nil {
		return kindNone, h, false, err
	}
	raw := buf[:n]
	if err := readBlock(d, src, raw, off); err != nil {
		return kindNone, h, false, err
	}
	if isZero(raw) {
		return kindZero, zeroHash(int(n)), true, nil
	}
	return kindData, blockHash(raw), true, nil
}

// readBlock reads p at off from src: the aligned part through d (O_DIRECT
// on a block device; nil reads nothing there), the rest through ReadAt.
func readBlock(d *directSource, src Source, p []byte, off int64) error {
	n, err := d.readAt(p, off)
	if err != nil {
		return fmt.Errorf("read source at %d (+%d) with O_DIRECT: %w", off, len(p), err)
	}
	if n == len(p) {
		return nil
	}
	m, err := src.ReadAt(p[n:], off+int64(n))
	if n+m == len(p) {
		return nil // io.ReaderAt may say EOF with the last byte
	}
	// Blocks lie within the source's size, so a short read means the
	// source shrank: the rest of p would hold the last block's bytes.
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read source at %d (+%d): got %d bytes: %w", off+int64(n), len(p)-n, m, err)
}

// rateWait applies the per-transfer and the shared limiter.
func (s *sender) rateWait(ctx context.Context, n int) error {
	return WaitAll(ctx, n, s.limit, s.opts.Limiter)
}

// run streams blocks from resume to the end, then the done frame, then
// waits (bounded) for the puller's final ack.
func (s *sender) run(ctx context.Context, resume int64) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	fail := func(err error) { cancel(err) }
	s.meter = newMeter(s.opts.Progress, s.gr.size, resume)
	defer s.meter.finish()

	// Blocks before the resume point were sent in an earlier session; hash
	// them here, off the network path, for the whole-volume digest.
	first := int(resume / s.gr.g)
	if resume == s.gr.size {
		first = s.gr.blocks()
	}
	prefixDone := make(chan error, 1)
	go func() { prefixDone <- s.hashPrefix(ctx, first) }()
	prefixWaited := false
	defer func() {
		if !prefixWaited { // never leave it reading a source about to close
			cancel(nil)
			<-prefixDone
		}
	}()

	// Acks (and a puller's error frame) arrive on the read side.
	finalAck := make(chan struct{})
	go s.readAcks(ctx, fail, finalAck)

	// Frames leave in grid order: the producer takes a buffer for each
	// block in order before handing it out, so the oldest outstanding block
	// always holds a buffer and the writer's reorder queue (≤ Window
	// frames) cannot deadlock. In-order frames keep the puller's watermark
	// right behind what it received, so a reconnect re-sends almost nothing.
	free := make(chan *sendBuf, s.opts.Window)
	compCap := max(s2.MaxEncodedLen(int(s.gr.g)), int(s.gr.g+s.gr.g/8+1024)) // no codec ever reallocates
	for range s.opts.Window {
		free <- &sendBuf{raw: alignedBufTo(int(s.gr.g), s.direct.bufAlign()), comp: make([]byte, compCap)}
	}
	type job struct {
		i   int
		seq uint64
		buf *sendBuf
	}
	jobs := make(chan job, s.opts.Window)
	out := make(chan outFrame, s.opts.Window)

	var wg sync.WaitGroup
	// Producer: walk the grid, coalesce known holes into zero ranges, hand
	// blocks that may hold data to the workers.
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(jobs)
		ec := extentCursor{ext: s.ext}
		var seq uint64
		zstart, zend := int64(-1), int64(0)
		flush := func() bool {
			if zstart < 0 {
				return true
			}
			f := outFrame{seq: seq, h: Header{Type: TypeZero, Offset: zstart, Length: zend - zstart}}
			seq++
			zstart = -1
			select {
			case out <- f:
				return true
			case <-ctx.Done():
				return false
			}
		}
		for i := first; i < s.gr.blocks(); i++ {
			off, n := s.gr.block(i)
			if !ec.hasData(off, n) {
				s.setHash(i, n, kindZero, [16]byte{})
				if zstart < 0 {
					zstart = off
				}
				zend = off + n
				continue
			}
			if !flush() {
				return
			}
			// Readahead one window ahead, so a cold source keeps several
			// reads in flight while the workers compress. O_DIRECT reads
			// skip the page cache that readahead would fill.
			if ahead := i + s.opts.Window; ahead < s.gr.blocks() && !s.direct.active() {
				aoff, an := s.gr.block(ahead)
				prefetch(s.src, aoff, an)
			}
			var b *sendBuf
			select {
			case b = <-free:
			case <-ctx.Done():
				return
			}
			select {
			case jobs <- job{i: i, seq: seq, buf: b}:
				seq++
			case <-ctx.Done():
				return
			}
		}
		flush()
	}()

	var workersWG sync.WaitGroup
	for range s.workers {
		workersWG.Add(1)
		go func() {
			defer workersWG.Done()
			for j := range jobs {
				if ctx.Err() != nil {
					continue
				}
				f, err := s.encodeBlock(ctx, j.i, j.buf)
				if err != nil {
					fail(err)
					continue
				}
				f.seq, f.buf = j.seq, j.buf
				select {
				case out <- f:
				case <-ctx.Done():
				}
			}
		}()
	}
	go func() {
		wg.Wait()
		workersWG.Wait()
		close(out)
	}()

	// Writer: the only goroutine writing to the connection until done.
	var hdr [HeaderSize]byte
	pending := make(map[uint64]outFrame, s.opts.Window)
	var next uint64
	for f := range out {
		if ctx.Err() != nil {
			continue // drain so the producer and workers can exit
		}
		pending[f.seq] = f
		for {
			f, ok := pending[next]
			if !ok {
				break
			}
			delete(pending, next)
			next++
			s.conn.SetWriteDeadline(time.Now().Add(s.opts.IOTimeout))
			t0 := time.Now()
			n, err := writeFrame(s.conn, &hdr, f.h, f.payload)
			s.wire.Add(n)
			s.meter.wire.Add(n)
			if err != nil {
				fail(fmt.Errorf("send %s: %w", f.h, err))
				break
			}
			if s.auto != nil && f.h.Type == TypeData {
				s.auto.observeLink(n, time.Since(t0))
			}
			s.meter.done.Add(f.h.Length)
			if f.buf != nil {
				free <- f.buf
			}
		}
	}
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	prefixWaited = true
	if err := s.awaitPrefix(ctx, prefixDone, &hdr); err != nil {
		return err
	}

	d := doneInfo{DataBytes: s.data.Load(), ZeroBytes: s.zero.Load(), Digest: volumeDigest(s.hashes)}
	s.conn.SetWriteDeadline(time.Now().Add(s.opts.IOTimeout))
	n, err := writeFrame(s.conn, &hdr, Header{Type: TypeDone, Length: s.gr.size}, encodeDone(d))
	s.wire.Add(n)
	if err != nil {
		return fmt.Errorf("send done: %w", err)
	}
	s.log.Debug("done sent", "digest", digestString(d.Digest), "data", d.DataBytes, "zero", d.ZeroBytes)
	// The puller verifies and fsyncs before its final ack; give it time.
	s.conn.SetReadDeadline(time.Now().Add(4 * s.opts.IOTimeout))
	select {
	case <-finalAck:
		s.acked = true
		return nil
	case <-ctx.Done():
		err := context.Cause(ctx)
		if errors.Is(err, ErrCorrupt) || errors.Is(err, ErrAborted) {
			return err
		}
		s.log.Warn("no final ack from puller", "error", err)
		return nil
	}
}

// encodeBlock reads, classifies, hashes and compresses block i. A zero
// block becomes a zero frame and leaves b unused (f.buf == nil).
func (s *sender) encodeBlock(ctx context.Context, i int, b *sendBuf) (outFrame, error) {
	off, n := s.gr.block(i)
	if err := s.rateWait(ctx, int(n)); err != nil {
		return outFrame{}, err
	}
	raw := b.raw[:n]
	if err := s.readBlock(raw, off); err != nil {
		return outFrame{}, err
	}
	if isZero(raw) {
		s.setHash(i, n, kindZero, [16]byte{})
		return outFrame{h: Header{Type: TypeZero, Offset: off, Length: n}}, nil
	}
	s.setHash(i, n, kindData, blockHash(raw))
	codec := s.codec
	if s.auto != nil {
		codec = s.auto.pick()
	}
	t0 := time.Now()
	comp := b.comp
	if codec == CodecS2 && cap(comp) < s2.MaxEncodedLen(len(raw)) {
		comp = nil
	}
	used, payload, err := compress(codec, comp, raw)
	if err != nil {
		return outFrame{}, err
	}
	if s.auto != nil {
		s.auto.observeCompress(codec, len(raw), len(payload), time.Since(t0))
	}
	return outFrame{h: Header{Type: TypeData, Flags: used, Offset: off, Length: n}, payload: payload, buf: b}, nil
}

// awaitPrefix waits for the prefix hashing after a resume. The puller has
// nothing to read meanwhile, so keepalive acks (offset = bytes hashed so
// far) stop its read deadline from firing on a large prefix.
//
// A keepalive goes out only when the hashing advanced since the last one:
// a prefix read that hangs (a failing disk) then lets the puller's read
// deadline fire, and the puller gives up as for any stalled session.
func (s *sender) awaitPrefix(ctx context.Context, done <-chan error, hdr *[HeaderSize]byte) error {
	t := time.NewTicker(max(s.opts.IOTimeout/3, time.Millisecond))
	defer t.Stop()
	last := int64(-1)
	for {
		select {
		case err := <-done:
			return err
		case <-ctx.Done():
			<-done
			return context.Cause(ctx)
		case <-t.C:
			at := s.prefixHashed.Load()
			if at == last {
				continue // stuck: no sign of life to give
			}
			last = at
			s.conn.SetWriteDeadline(time.Now().Add(s.opts.IOTimeout))
			n, err := writeFrame(s.conn, hdr, Header{Type: TypeAck, Offset: min(s.prefixHashed.Load(), s.gr.size)}, nil)
			s.wire.Add(n)
			if err != nil {
				<-done
				return fmt.Errorf("send keepalive: %w", err)
			}
		}
	}
}

// hashPrefix hashes blocks [0, first) the same way encodeBlock classifies
// them, reading through one buffer; blocks an earlier session hashed
// (adopt) are not read again.
func (s *sender) hashPrefix(ctx context.Context, first int) error {
	if first == 0 {
		return nil
	}
	buf := alignedBufTo(int(s.gr.g), s.direct.bufAlign())
	ec := extentCursor{ext: s.ext}
	for i := 0; i < first; i++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		off, n := s.gr.block(i)
		s.prefixHashed.Store(off)
		if s.kind[i] != kindNone {
			continue // adopted
		}
		// Paced like the stream itself: a resume near the end of a large
		// volume re-reads it all, next to the production database.
		kind, h, read, err := hashBlock(ctx, s.direct, s.src, &ec, buf, off, n, s.rateWait)
		if err != nil {
			return err
		}
		if read {
			s.prefixRead.Add(n)
		}
		s.setHash(i, n, kind, h)
	}
	return nil
}

// readAcks consumes the puller's acks until the final one (offset = size).
func (s *sender) readAcks(ctx context.Context, fail func(error), final chan<- struct{}) {
	var hdr [HeaderSize]byte
	s.conn.SetReadDeadline(time.Time{}) // writes carry the deadline while streaming
	for {
		h, p, err := ReadFrame(s.conn, &hdr, nil)
		if err != nil {
			if ctx.Err() == nil {
				fail(fmt.Errorf("%w: puller connection: %w", ErrAborted, err))
			}
			return
		}
		switch h.Type {
		case TypeAck:
			s.log.Trace("ack", "durable", h.Offset)
			if h.Offset == s.gr.size {
				close(final)
				return
			}
		case TypeError:
			fail(errorForCode(h.Flags, string(p)))
			return
		default:
			fail(fmt.Errorf("%w: unexpected %s from puller", ErrProtocol, h))
			return
		}
	}
}
