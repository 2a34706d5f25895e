package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// testLogger logs through t at warn level, or TRANSFER_LOG=trace|debug|info.
func testLogger(t testing.TB) hclog.Logger {
	lvl := hclog.LevelFromString(os.Getenv("TRANSFER_LOG"))
	if lvl == hclog.NoLevel {
		lvl = hclog.Warn
	}
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: lvl, Output: testWriter{t}})
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// mixed has data, text, literal zero blocks and holes.
var mixed = []int{blkRandom, blkText, blkHole, blkText, blkZeroWritten, blkRandom, blkHole, blkHole, blkText}

func TestRoundTrip(t *testing.T) {
	const size = 6<<20 + 12345 // unaligned tail
	dir := t.TempDir()
	src, content, ext := makeImage(t, dir, size, 256<<10, mixed, 1)
	cases := []struct {
		codec   string
		extents bool
		chunk   int
	}{
		{"zstd", true, 0},
		{"s2", true, 0},
		{"none", false, 0},
		{"auto", false, 256 << 10},
		{"zstd", false, 128 << 10},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s/extents=%v/chunk=%d", tc.codec, tc.extents, tc.chunk), func(t *testing.T) {
			var e []Extent
			if tc.extents {
				e = ext
			}
			var opens atomic.Int32
			_, addr := startServer(t, fileOpener(t, src, size, e, &opens), Options{Codec: tc.codec, ChunkSize: tc.chunk, Logger: testLogger(t)})
			// A reused target full of stale bytes: holes must come back as zeros.
			dstPath := filepath.Join(t.TempDir(), "dst.img")
			if err := os.WriteFile(dstPath, bytes.Repeat([]byte{0xA5}, size+4096), 0o600); err != nil {
				t.Fatal(err)
			}
			sink := openDev(t, dstPath, size+4096) // larger target: tail must be zeroed too
			var progressCalls atomic.Int32
			var last Progress
			var mu sync.Mutex
			st, err := Pull(context.Background(), dialer(addr), "fork-1", "target-a", sink, Options{
				Logger: testLogger(t),
				Progress: func(p Progress) {
					progressCalls.Add(1)
					mu.Lock()
					last = p
					mu.Unlock()
				},
			})
			if err != nil {
				t.Fatalf("Pull: %v", err)
			}
			got := readAll(t, dstPath)
			if !bytes.Equal(got[:size], content) {
				t.Fatal("target differs from source")
			}
			if !bytes.Equal(got[size:], make([]byte, 4096)) {
				t.Fatal("target tail past the source size is not zero")
			}
			g := tc.chunk
			if g == 0 {
				g = defaultChunk
			}
			var wantData int64
			for off := 0; off < len(content); off += g {
				if b := content[off:min(off+g, len(content))]; !isZero(b) {
					wantData += int64(len(b))
				}
			}
			if st.Bytes != size || st.DataBytes+st.ZeroBytes != size || st.DataBytes != wantData {
				t.Fatalf("stats %+v, want data %d", st, wantData)
			}
			if st.Reconnects != 0 || st.Resent != 0 || st.Digest == "" || st.Wire <= 0 {
				t.Fatalf("stats %+v", st)
			}
			if tc.codec != "none" && st.Wire >= st.DataBytes {
				t.Fatalf("compression did nothing: wire %d, data %d", st.Wire, st.DataBytes)
			}
			if tc.codec == "none" && st.Wire < st.DataBytes {
				t.Fatalf("raw wire %d < data %d", st.Wire, st.DataBytes)
			}
			if opens.Load() != 1 {
				t.Fatalf("opener called %d times", opens.Load())
			}
			mu.Lock()
			defer mu.Unlock()
			if progressCalls.Load() == 0 || last.Done != size || last.Total != size {
				t.Fatalf("final progress %+v after %d calls", last, progressCalls.Load())
			}
		})
	}
}

func TestResumeAfterCut(t *testing.T) {
	const size = 24 << 20
	dir := t.TempDir()
	src, content, _ := makeImage(t, dir, size, 1<<20, []int{blkRandom, blkText, blkRandom}, 2)
	var opens atomic.Int32
	_, addr := startServer(t, fileOpener(t, src, size, nil, &opens), Options{Codec: "s2", Logger: testLogger(t)})
	px := newProxy(t, addr, func(px *proxy) { px.cutConn, px.cutAfter = 1, 14<<20 }) // mid-frame, more than half way
	dst := filepath.Join(dir, "dst.img")
	sink := openDev(t, dst, size)
	st, err := Pull(context.Background(), dialer(px.addr()), "fork-1", "target-a", sink, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Pull: %v", err)
	}
	if !bytes.Equal(readAll(t, dst), content) {
		t.Fatal("target differs from source after resume")
	}
	if st.Reconnects != 1 || opens.Load() != 2 {
		t.Fatalf("reconnects %d, opens %d; want 1 and 2", st.Reconnects, opens.Load())
	}
	if st.Resent*10 >= size {
		t.Fatalf("re-sent %d bytes, ≥ 10%% of %d", st.Resent, size)
	}
	t.Logf("stats %+v", st)
}

func TestCorruptionDetectedAndResent(t *testing.T) {
	const size = 8 << 20
	dir := t.TempDir()
	src, content, _ := makeImage(t, dir, size, 1<<20, []int{blkText, blkRandom}, 3)
	_, addr := startServer(t, fileOpener(t, src, size, nil, nil), Options{Logger: testLogger(t)})
	px := newProxy(t, addr, func(px *proxy) { px.corrupt = func(conn int32, frame int) bool { return conn == 1 && frame == 3 } })
	dst := filepath.Join(dir, "dst.img")
	st, err := Pull(context.Background(), dialer(px.addr()), "fork-1", "target-a", openDev(t, dst, size), Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Pull: %v", err)
	}
	if px.flipped.Load() != 1 || st.Reconnects < 1 {
		t.Fatalf("flipped %d, reconnects %d: corruption not detected", px.flipped.Load(), st.Reconnects)
	}
	if !bytes.Equal(readAll(t, dst), content) {
		t.Fatal("target differs from source")
	}
}

func TestCorruptionEveryTimeFails(t *testing.T) {
	const size = 4 << 20
	dir := t.TempDir()
	src, content, _ := makeImage(t, dir, size, 1<<20, []int{blkText}, 4)
	_, addr := startServer(t, fileOpener(t, src, size, nil, nil), Options{Logger: testLogger(t)})
	px := newProxy(t, addr, func(px *proxy) { px.corrupt = func(conn int32, frame int) bool { return frame == 1 } })
	sink := &memDev{b: make([]byte, size)}
	_, err := Pull(context.Background(), dialer(px.addr()), "fork-1", "target-a", sink, Options{Logger: testLogger(t), GiveUp: 10 * time.Second})
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("err = %v, want ErrCorrupt", err)
	}
	if bytes.Equal(sink.b, content) {
		t.Fatal("reported failure but the data is complete")
	}
}

func TestUnauthorized(t *testing.T) {
	const size = 2 << 20
	dir := t.TempDir()
	src, _, _ := makeImage(t, dir, size, 1<<20, []int{blkText}, 5)
	var opens atomic.Int32
	_, addr := startServer(t, fileOpener(t, src, size, nil, &opens), Options{Logger: testLogger(t)})
	sink := &memDev{b: make([]byte, size)}
	start := time.Now()
	_, err := Pull(context.Background(), dialer(addr), "fork-1", "intruder", sink, Options{Logger: testLogger(t)})
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("err = %v, want ErrUnauthorized", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %s to fail", d)
	}
	if sink.writes.Load() != 0 || opens.Load() != 1 {
		t.Fatalf("writes %d, opens %d", sink.writes.Load(), opens.Load())
	}

	// An unknown fork is fatal too (no retry loop until GiveUp).
	_, err = Pull(context.Background(), dialer(addr), "fork-404", "target-a", sink, Options{Logger: testLogger(t)})
	if !errors.Is(err, ErrAborted) || opens.Load() != 2 {
		t.Fatalf("unknown fork: err = %v, opens %d", err, opens.Load())
	}
}

// TestPlainConnectionRefused: without PlainPeers, a server takes the
// puller's name only from a verified certificate, never from its hello, so
// a plain connection naming the right target host is refused unopened.
func TestPlainConnectionRefused(t *testing.T) {
	const size = 2 << 20
	src, _, _ := makeImage(t, t.TempDir(), size, 1<<20, []int{blkText}, 5)
	var opens atomic.Int32
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(fileOpener(t, src, size, nil, &opens), Options{Logger: testLogger(t)})
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	sink := &memDev{b: make([]byte, size)}
	_, err = Pull(context.Background(), dialer(l.Addr().String()), "fork-1", "target-a", sink, Options{Logger: testLogger(t)})
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("err = %v, want ErrUnauthorized", err)
	}
	if opens.Load() != 0 || sink.writes.Load() != 0 {
		t.Fatalf("opens %d, writes %d: a plain connection reached the source", opens.Load(), sink.writes.Load())
	}
}

func TestRateLimit(t *testing.T) {
	const size = 8 << 20
	dir := t.TempDir()
	src, content, _ := makeImage(t, dir, size, 1<<20, []int{blkRandom}, 6)
	// 8 MiB of data at 4 MiB/s takes 2 s less one small burst, whichever
	// side holds the cap (a puller's holds the sender back through TCP).
	for _, tc := range []struct {
		name         string
		server, pull int64
	}{
		{"sender", 4 << 20, 0},
		{"puller", 0, 4 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, addr := startServer(t, fileOpener(t, src, size, nil, nil), Options{RateLimit: tc.server, Logger: testLogger(t)})
			sink := &memDev{b: make([]byte, size)}
			start := time.Now()
			if _, err := Pull(context.Background(), dialer(addr), "fork-1", "target-a", sink, Options{RateLimit: tc.pull, Logger: testLogger(t)}); err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d < 1500*time.Millisecond {
				t.Fatalf("8 MiB at 4 MiB/s took only %s", d)
			}
			if !bytes.Equal(sink.b, content) {
				t.Fatal("target differs")
			}
		})
	}
}

func TestSharedLimiter(t *testing.T) {
	l := NewLimiter(4 << 20)
	start := time.Now()
	for range 8 {
		if err := l.WaitN(context.Background(), 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d < 1500*time.Millisecond {
		t.Fatalf("8 MiB through a 4 MiB/s limiter in %s", d)
	}
	if NewLimiter(0) != nil {
		t.Fatal("0 must mean unlimited (nil)")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.WaitN(ctx, 64<<20); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
}

func TestServerGoesAway(t *testing.T) {
	const size = 16 << 20
	dir := t.TempDir()
	src, _, _ := makeImage(t, dir, size, 1<<20, []int{blkRandom}, 7)
	srv, addr := startServer(t, fileOpener(t, src, size, nil, nil), Options{RateLimit: 4 << 20, Logger: testLogger(t)})
	sink := &memDev{b: make([]byte, size)}
	var once sync.Once
	giveUp := 2 * time.Second
	var killed time.Time
	start := time.Now()
	_, err := Pull(context.Background(), dialer(addr), "fork-1", "target-a", sink, Options{
		Logger: testLogger(t), GiveUp: giveUp, IOTimeout: time.Second,
		Progress: func(p Progress) {
			if p.Done >= 2<<20 {
				once.Do(func() { killed = time.Now(); go srv.Close() })
			}
		},
	})
	if !errors.Is(err, ErrAborted) {
		t.Fatalf("err = %v, want ErrAborted", err)
	}
	if killed.IsZero() {
		t.Fatal("server was never closed")
	}
	if d := time.Since(killed); d > giveUp+3*time.Second {
		t.Fatalf("gave up %s after the server went away (bound %s)", d, giveUp)
	}
	t.Logf("gave up after %s (%s total): %v", time.Since(killed), time.Since(start), err)
}

func TestServerStalls(t *testing.T) {
	const size = 4 << 20
	dir := t.TempDir()
	src, _, _ := makeImage(t, dir, size, 1<<20, []int{blkRandom}, 8)
	_, addr := startServer(t, fileOpener(t, src, size, nil, nil), Options{Logger: testLogger(t)})
	px := newProxy(t, addr, func(px *proxy) {
		px.cutConn, px.cutAfter = 1, 1<<20
		px.stallFrom = 1 // every reconnect hangs silently
	})
	start := time.Now()
	_, err := Pull(context.Background(), dialer(px.addr()), "fork-1", "target-a", &memDev{b: make([]byte, size)}, Options{
		Logger: testLogger(t), GiveUp: 1500 * time.Millisecond, IOTimeout: 500 * time.Millisecond,
	})
	if !errors.Is(err, ErrAborted) {
		t.Fatalf("err = %v, want ErrAborted", err)
	}
	if d := time.Since(start); d > 6*time.Second {
		t.Fatalf("took %s", d)
	}
}

func TestPullCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Pull(ctx, func(ctx context.Context) (net.Conn, error) { return nil, ctx.Err() }, "fork-1", "h", &memDev{b: make([]byte, 10)}, Options{})
	if !errors.Is(err, ErrAborted) {
		t.Fatalf("err = %v", err)
	}
}

func TestResumeFromMiddleDigest(t *testing.T) {
	// A server session started at a resume offset must still produce the
	// whole-volume digest (prefix hashed locally).
	const size = 5<<20 + 100
	dir := t.TempDir()
	src, content, ext := makeImage(t, dir, size, 1<<20, mixed, 9)
	_, addr := startServer(t, fileOpener(t, src, size, ext, nil), Options{Logger: testLogger(t)})
	px := newProxy(t, addr, func(px *proxy) { px.cutConn, px.cutAfter = 1, 1<<20+400<<10 })
	sink := &memDev{b: bytes.Repeat([]byte{1}, size)}
	st, err := Pull(context.Background(), dialer(px.addr()), "fork-1", "target-a", sink, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sink.b, content) || st.Reconnects != 1 || st.Resent >= size {
		t.Fatalf("content equal=%v stats %+v", bytes.Equal(sink.b, content), st)
	}
	if off, _ := px.firstData.Load(int32(2)); off == nil || off.(int64) == 0 {
		t.Fatalf("second session started at %v, want a mid-volume resume", off)
	}
}

// slowSource delays reads below a bound, to stretch the prefix re-hash.
type slowSource struct {
	Source
	below int64
	delay time.Duration
}

func (s slowSource) ReadAt(p []byte, off int64) (int, error) {
	if off < s.below {
		time.Sleep(s.delay)
	}
	return s.Source.ReadAt(p, off)
}

// TestResumeKeepalive: after a resume the source re-reads the prefix for
// the digest; keepalives must stop the puller's read deadline from firing
// while it does, however short IOTimeout is.
func TestResumeKeepalive(t *testing.T) {
	const size = 8 << 20
	dir := t.TempDir()
	src, content, _ := makeImage(t, dir, size, 1<<20, []int{blkRandom}, 12)
	inner := fileOpener(t, src, size, nil, nil)
	open := func(ctx context.Context, forkID, peer string) (Source, []Extent, func(), error) {
		s, e, c, err := inner(ctx, forkID, peer)
		if err == nil {
			s = slowSource{Source: s, below: 6 << 20, delay: 200 * time.Millisecond}
		}
		return s, e, c, err
	}
	opts := Options{Codec: "none", Logger: testLogger(t), IOTimeout: 400 * time.Millisecond}
	_, addr := startServer(t, open, opts)
	// A restarted target: this server has no hashes of the prefix.
	sink := &memDev{b: make([]byte, size)}
	copy(sink.b, content[:6<<20])
	st, err := Pull(context.Background(), dialer(addr), "fork-1", "target-a", sink, Options{Logger: testLogger(t), IOTimeout: 400 * time.Millisecond, GiveUp: 3 * time.Second,
		Resume: &Checkpoint{Size: size, Chunk: 1 << 20, Durable: 6 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	if st.Reconnects != 0 || st.Resumed != 6<<20 || !bytes.Equal(sink.b, content) {
		t.Fatalf("stats %+v, equal %v", st, bytes.Equal(sink.b, content))
	}
}

// TestLargeSparseVolume: a 16 GiB volume with a few data extents streams in
// moments (holes are ranges, never read or sent) and reads back right.
func TestLargeSparseVolume(t *testing.T) {
	const size = 16 << 30
	dir := t.TempDir()
	srcPath := filepath.Join(dir, "src.img")
	src := openDev(t, srcPath, size)
	var ext []Extent
	rng := newRand(14)
	blk := make([]byte, 1<<20)
	for _, off := range []int64{0, 5<<30 + 123<<20, size - 1<<20} {
		fillBlock(rng, blk, blkText)
		if _, err := src.WriteAt(blk, off); err != nil {
			t.Fatal(err)
		}
		ext = append(ext, Extent{off, 1 << 20})
	}
	_, addr := startServer(t, fileOpener(t, srcPath, size, ext, nil), Options{Logger: testLogger(t)})
	dstPath := filepath.Join(dir, "dst.img")
	sink := openDev(t, dstPath, size)
	// Stale data in the target where the source has a hole.
	if _, err := sink.WriteAt(bytes.Repeat([]byte{7}, 4096), 9<<30); err != nil {
		t.Fatal(err)
	}
	st, err := Pull(context.Background(), dialer(addr), "fork-1", "target-a", sink, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if st.DataBytes != 3<<20 || st.ZeroBytes != size-3<<20 || st.Wire > 4<<20 {
		t.Fatalf("stats %+v", st)
	}
	for _, e := range append(ext, Extent{9 << 30, 4096}) {
		a, b := make([]byte, e.Length), make([]byte, e.Length)
		src.ReadAt(a, e.Offset)
		sink.ReadAt(b, e.Offset)
		if !bytes.Equal(a, b) {
			t.Fatalf("differs at %d", e.Offset)
		}
	}
}

// A source still preparing (its snapshot being taken) answers "not ready":
// the puller comes back for as long as that lasts, even past GiveUp, then
// streams as usual. A plain retryable refusal still gives up after GiveUp.
func TestSourceNotReady(t *testing.T) {
	const size = 4 << 20
	dir := t.TempDir()
	src, content, _ := makeImage(t, dir, size, 1<<20, []int{blkText, blkRandom}, 9)
	const giveUp = 400 * time.Millisecond
	for _, tc := range []struct {
		name    string
		refusal error
		wantErr error
	}{
		{"not ready outlasts GiveUp", ErrNotReady, nil},
		{"retry does not", ErrRetry, ErrAborted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ready := time.Now().Add(3 * giveUp)
			var opens atomic.Int32
			inner := fileOpener(t, src, size, nil, nil)
			open := func(ctx context.Context, forkID, peer string) (Source, []Extent, func(), error) {
				opens.Add(1)
				if time.Now().Before(ready) {
					return nil, nil, nil, fmt.Errorf("%w: snapshot being taken", tc.refusal)
				}
				return inner(ctx, forkID, peer)
			}
			_, addr := startServer(t, open, Options{Logger: testLogger(t)})
			sink := &memDev{b: make([]byte, size)}
			_, err := Pull(context.Background(), dialer(addr), "fork-1", "target-a", sink,
				Options{Logger: testLogger(t), GiveUp: giveUp, IOTimeout: time.Second})
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || sink.writes.Load() != 0 {
					t.Fatalf("err = %v (writes %d), want %v", err, sink.writes.Load(), tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("pull: %v (after %d opens)", err, opens.Load())
			}
			if opens.Load() < 2 || !bytes.Equal(sink.b, content) {
				t.Fatalf("opens %d, content equal %v", opens.Load(), bytes.Equal(sink.b, content))
			}
		})
	}
}

// hangSrc reads from f, except that once hang is set a read at offset 0
// never returns until stop is closed: a failing disk under a resume.
type hangSrc struct {
	f    *os.File
	size int64
	hang bool
	stop chan struct{}
}

func (h *hangSrc) Size() int64 { return h.size }
func (h *hangSrc) ReadAt(p []byte, off int64) (int, error) {
	if h.hang && off == 0 {
		<-h.stop
		return 0, errors.New("stopped")
	}
	return h.f.ReadAt(p, off)
}

// After a resume that its server has no hashes for (the target or the
// source restarted) the source re-hashes the prefix, sending keepalives
// while it does. A prefix read that hangs must not keep the puller alive
// for ever: keepalives stop when the hashing does, and Pull gives up.
func TestResumeHungPrefixGivesUp(t *testing.T) {
	const size = 8 << 20
	const g = 1 << 20
	src, content, ext := makeImage(t, t.TempDir(), size, g, []int{blkRandom}, 9)
	stop := make(chan struct{})
	var opens atomic.Int32
	open := func(ctx context.Context, forkID, peer string) (Source, []Extent, func(), error) {
		opens.Add(1)
		f, err := os.Open(src)
		if err != nil {
			return nil, nil, nil, err
		}
		return &hangSrc{f: f, size: size, hang: true, stop: stop}, ext, func() { f.Close() }, nil
	}
	_, addr := startServer(t, open, Options{Logger: testLogger(t), Codec: "none", ChunkSize: g, IOTimeout: time.Second})
	// Registered after the server's Close, so it runs first: the hung
	// reads return and Close can wait for their sessions.
	t.Cleanup(func() { close(stop) })
	sink := &memDev{b: make([]byte, size)}
	copy(sink.b, content[:4<<20])
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := Pull(ctx, dialer(addr), "fork-1", "target-a", sink,
		Options{Logger: testLogger(t), ChunkSize: g, IOTimeout: time.Second, GiveUp: 2 * time.Second,
			Resume: &Checkpoint{Size: size, Chunk: g, Durable: 4 << 20}})
	if ctx.Err() != nil || !errors.Is(err, ErrAborted) || opens.Load() < 1 {
		t.Fatalf("Pull: %v (opens %d, caller's deadline hit: %v); want it to give up by itself", err, opens.Load(), ctx.Err() != nil)
	}
}

// The prefix a resumed session re-reads is paced like the stream: every
// data byte it reads is charged to the node's limiter.
func TestResumePrefixIsPaced(t *testing.T) {
	const size = 8 << 20
	const g = 1 << 20
	src, _, ext := makeImage(t, t.TempDir(), size, g, []int{blkRandom}, 7)
	shared := NewLimiter(64 << 20)
	_, addr := startServer(t, fileOpener(t, src, size, ext, nil), Options{Logger: testLogger(t), Limiter: shared, ChunkSize: g})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p, _ := encodeHello("fork-1", "target-a")
	before := shared.taken.Load()
	// Resume at the last block: 7 MiB of prefix to re-read, 1 MiB to send.
	if _, err := c.Write(AppendFrame(nil, Header{Type: TypeHello, Offset: size - g, Length: size}, p)); err != nil {
		t.Fatal(err)
	}
	var hdr [HeaderSize]byte
	for {
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		h, _, err := ReadFrame(c, &hdr, nil)
		if err != nil {
			t.Fatal(err)
		}
		if h.Type == TypeDone {
			break
		}
	}
	if got := shared.taken.Load() - before; got < size {
		t.Fatalf("limiter charged %d bytes for a %d-byte prefix plus one %d-byte block", got, size-g, g)
	}
}

// A source that reads short of its stated size (shrunk under the sender)
// fails the transfer: the rest of the block buffer would otherwise carry
// the previous block's bytes, hashed and sent as if they were data.
func TestSourceShorterThanItsSize(t *testing.T) {
	const size = 4 << 20
	src, _, _ := makeImage(t, t.TempDir(), size, 1<<20, []int{blkRandom}, 11)
	if err := os.Truncate(src, size-(1<<20)-4096); err != nil { // ends inside the last block
		t.Fatal(err)
	}
	_, addr := startServer(t, fileOpener(t, src, size, nil, nil), Options{Logger: testLogger(t), Codec: "none"})
	sink := &memDev{b: make([]byte, size)}
	_, err := Pull(context.Background(), dialer(addr), "fork-1", "target-a", sink,
		Options{Logger: testLogger(t), GiveUp: 500 * time.Millisecond, IOTimeout: time.Second})
	if err == nil {
		t.Fatal("a source shorter than its size streamed to the end")
	}
}
