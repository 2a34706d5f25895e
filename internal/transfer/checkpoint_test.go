package transfer

import (
	"bytes"
	"context"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
)

// writeOnly is a sink that cannot be read back.
type writeOnly struct{ m *memDev }

func (w writeOnly) WriteAt(p []byte, off int64) (int, error) { return w.m.WriteAt(p, off) }
func (w writeOnly) Size() int64                              { return w.m.Size() }
func (w writeOnly) Sync() error                              { return nil }
func (w writeOnly) Zero(off, n int64) error                  { return w.m.Zero(off, n) }

// TestResumeFromCheckpoint: a Pull given a checkpoint (as a restarted
// target process would be) re-reads the durable prefix, asks the source
// for the rest only, and still ends with the whole-volume digest checked.
// A checkpoint that cannot be used means starting from zero, never a
// wrong volume; a damaged prefix fails the digest.
func TestResumeFromCheckpoint(t *testing.T) {
	const size = 12<<20 + 4096 // an odd tail block
	const mb = 1 << 20
	dir := t.TempDir()
	src, content, ext := makeImage(t, dir, size, mb, mixed, 21)
	stale := bytes.Repeat([]byte{0xA5}, size)
	cases := []struct {
		name       string
		ckpt       Checkpoint
		prefix     int64 // bytes of the source already on the target
		flip       int64 // >= 0: damage this byte of the prefix
		srcChunk   int
		readable   bool
		wantResume int64
		wantErr    error
	}{
		{name: "middle", ckpt: Checkpoint{size, mb, 7 * mb}, prefix: 7 * mb, flip: -1, readable: true, wantResume: 7 * mb},
		{name: "all but verified", ckpt: Checkpoint{size, mb, size}, prefix: size, flip: -1, readable: true, wantResume: size},
		{name: "damaged prefix", ckpt: Checkpoint{size, mb, 7 * mb}, prefix: 7 * mb, flip: 3*mb + 17, readable: true, wantErr: ErrCorrupt},
		{name: "off the grid", ckpt: Checkpoint{size, mb, 7*mb + 1}, prefix: 7 * mb, flip: -1, readable: true},
		{name: "past the end", ckpt: Checkpoint{size, mb, size + mb}, prefix: 7 * mb, flip: -1, readable: true},
		{name: "bigger than target", ckpt: Checkpoint{size + mb, mb, mb}, prefix: 7 * mb, flip: -1, readable: true},
		{name: "no chunk", ckpt: Checkpoint{size, 0, 7 * mb}, prefix: 7 * mb, flip: -1, readable: true},
		{name: "unreadable target", ckpt: Checkpoint{size, mb, 7 * mb}, prefix: 7 * mb, flip: -1},
		{name: "source grid changed", ckpt: Checkpoint{size, mb, 7 * mb}, prefix: 7 * mb, flip: -1, srcChunk: 256 << 10, readable: true},
		{name: "source grid changed, resume point off it", ckpt: Checkpoint{size, mb, 7 * mb}, prefix: 7 * mb, flip: -1, srcChunk: 4 << 20, readable: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, addr := startServer(t, fileOpener(t, src, size, ext, nil), Options{Codec: "none", ChunkSize: tc.srcChunk, Logger: testLogger(t)})
			mem := &memDev{b: append([]byte(nil), stale...)}
			copy(mem.b, content[:tc.prefix])
			if tc.flip >= 0 {
				mem.b[tc.flip] ^= 1
			}
			var sink Sink = mem
			if !tc.readable {
				sink = writeOnly{mem}
			}
			ckpt := tc.ckpt
			st, err := Pull(context.Background(), dialer(addr), "fork-1", "target-a", sink, Options{Logger: testLogger(t), Resume: &ckpt})
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Pull: %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Pull: %v", err)
			}
			if !bytes.Equal(mem.b, content) {
				t.Fatal("target differs from source")
			}
			if st.Resumed != tc.wantResume {
				t.Fatalf("resumed at %d, want %d", st.Resumed, tc.wantResume)
			}
			// Only what lies past the resume point crosses the wire (raw
			// codec: data bytes plus frame headers).
			if sent := st.Wire - int64(HeaderSize)*int64(size/mb+8); sent > size-tc.wantResume {
				t.Fatalf("wire %d bytes for %d bytes after the resume point", st.Wire, size-tc.wantResume)
			}
		})
	}
}

// TestCheckpointsThenResume runs the real sequence: a Pull reports its
// durable offsets, is stopped part way (a target shutting down), and a new
// Pull given the last one finishes the volume.
func TestCheckpointsThenResume(t *testing.T) {
	const size = 24 << 20
	dir := t.TempDir()
	src, content, ext := makeImage(t, dir, size, 1<<20, mixed, 22)
	_, addr := startServer(t, fileOpener(t, src, size, ext, nil), Options{Codec: "s2", RateLimit: 8 << 20, Logger: testLogger(t)})
	sink := openDev(t, dir+"/dst.img", size)

	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var got []Checkpoint
	_, err := Pull(ctx, dialer(addr), "fork-1", "target-a", sink, Options{
		Logger: testLogger(t),
		OnCheckpoint: func(c Checkpoint) {
			mu.Lock()
			got = append(got, c)
			mu.Unlock()
		},
		Progress: func(p Progress) {
			if p.Done >= 10<<20 {
				cancel()
			}
		},
	})
	if !errors.Is(err, ErrAborted) {
		t.Fatalf("first Pull: %v, want aborted", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) == 0 {
		t.Fatal("no checkpoint reported")
	}
	for i, c := range got {
		if c.Size != size || c.Chunk != 1<<20 || c.Durable%c.Chunk != 0 || c.Durable <= 0 || c.Durable >= size ||
			(i > 0 && c.Durable <= got[i-1].Durable) {
			t.Fatalf("checkpoints %+v: want increasing offsets on the grid, inside the volume", got)
		}
	}
	last := got[len(got)-1]
	var final []Checkpoint
	st, err := Pull(context.Background(), dialer(addr), "fork-1", "target-a", sink, Options{
		Logger: testLogger(t), Resume: &last,
		OnCheckpoint: func(c Checkpoint) { final = append(final, c) },
	})
	if err != nil {
		t.Fatalf("resumed Pull: %v", err)
	}
	if !bytes.Equal(readAll(t, dir+"/dst.img"), content) {
		t.Fatal("target differs from source")
	}
	if st.Resumed != last.Durable {
		t.Fatalf("resumed at %d, want %d", st.Resumed, last.Durable)
	}
	if len(final) == 0 || final[len(final)-1].Durable != size {
		t.Fatalf("resumed Pull's checkpoints %+v: want a last one at the volume's end", final)
	}
	t.Logf("stopped at %d, resumed at %d; %+v", last.Durable, st.Resumed, st)
}

// syncFailOnce fails its first fsync, as a disk losing a write does; Linux
// then reports the error once, and the next fsync succeeds.
type syncFailOnce struct {
	*fileDev
	calls atomic.Int32
}

func (s *syncFailOnce) Sync() error {
	if s.calls.Add(1) == 1 {
		return syscall.EIO
	}
	return s.fileDev.Sync()
}

// TestNoCheckpointAfterFailedFsync: once an fsync of the target failed, no
// later one vouches for what was written, so no checkpoint is given out
// (found by review: the session's closing fsync succeeded and its offset
// was saved).
func TestNoCheckpointAfterFailedFsync(t *testing.T) {
	const size = 24 << 20
	dir := t.TempDir()
	src, _, ext := makeImage(t, dir, size, 1<<20, mixed, 22)
	_, addr := startServer(t, fileOpener(t, src, size, ext, nil), Options{Codec: "none", RateLimit: 8 << 20, Logger: testLogger(t)})
	sink := &syncFailOnce{fileDev: openDev(t, dir+"/dst.img", size)}
	var mu sync.Mutex
	var got []Checkpoint
	_, err := Pull(context.Background(), dialer(addr), "fork-1", "target-a", sink, Options{Logger: testLogger(t),
		OnCheckpoint: func(c Checkpoint) { mu.Lock(); got = append(got, c); mu.Unlock() }})
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("Pull: %v, want the fsync error", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) > 0 {
		t.Fatalf("checkpoints %+v given out although the fsync covering them failed", got)
	}
}

// TestRestoreSkipsHoles: the re-read of a sparse target's prefix reads and
// paces only its data; holes are zero blocks for free, as a stream from
// zero would have them (found by review: a mostly empty volume took 15
// times longer to resume than to stream again).
func TestRestoreSkipsHoles(t *testing.T) {
	const size = 64 << 20
	const mb = 1 << 20
	dir := t.TempDir()
	kinds := []int{blkRandom, blkHole, blkHole, blkHole, blkHole, blkHole, blkHole, blkHole}
	src, content, ext := makeImage(t, dir, size, mb, kinds, 41)
	_, addr := startServer(t, fileOpener(t, src, size, ext, nil), Options{Codec: "none", Logger: testLogger(t)})
	// The target holds the first 60 MiB as a stream leaves it: data
	// written, holes never touched.
	dst := dir + "/dst.img"
	sink := openDev(t, dst, size)
	var prefixData int64
	for off := int64(0); off < 60*mb; off += mb {
		if b := content[off : off+mb]; !isZero(b) {
			if _, err := sink.WriteAt(b, off); err != nil {
				t.Fatal(err)
			}
			prefixData += mb
		}
	}
	lim := NewLimiter(1 << 40)
	st, err := Pull(context.Background(), dialer(addr), "fork-1", "target-a", sink, Options{Logger: testLogger(t), Limiter: lim,
		Resume: &Checkpoint{Size: size, Chunk: mb, Durable: 60 * mb}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst)
	if err != nil || !bytes.Equal(got, content) || st.Resumed != 60*mb {
		t.Fatalf("equal %v (%v), resumed %d", bytes.Equal(got, content), err, st.Resumed)
	}
	// Charged: the prefix's data re-read, and the data streamed after it.
	if taken, want := lim.taken.Load(), st.DataBytes; taken > want {
		t.Fatalf("the node limiter was charged %d bytes; want at most %d (data only: %d re-read, %d streamed)", taken, want, prefixData, st.DataBytes-prefixData)
	}
}
