package transfer

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/forknode/forknode/internal/testutil"
)

func TestAlignedBuf(t *testing.T) {
	for _, n := range []int{4096, 64 << 10, 1 << 20, 1<<20 + 1} {
		b := alignedBuf(n)
		if len(b) != n || cap(b) != n {
			t.Fatalf("alignedBuf(%d): len %d cap %d", n, len(b), cap(b))
		}
		if !isAligned(b[:n/ioAlign*ioAlign], 0) {
			t.Fatalf("alignedBuf(%d) not aligned", n)
		}
	}
	buf := alignedBuf(3 * ioAlign)
	cases := []struct {
		name string
		b    []byte
		off  int64
		want bool
	}{
		{"whole", buf, 0, true},
		{"aligned offset", buf, 1 << 20, true},
		{"odd offset", buf, 512, false},
		{"odd length", buf[:ioAlign+1], 0, false},
		{"odd start", buf[1 : 1+ioAlign], 0, false},
		{"empty", buf[:0], 0, false},
	}
	for _, tc := range cases {
		if got := isAligned(tc.b, tc.off); got != tc.want {
			t.Errorf("%s: isAligned = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestDataExtents(t *testing.T) {
	dir := t.TempDir()
	const size = 8 << 20
	dev := openDev(t, filepath.Join(dir, "sparse.img"), size)
	for _, off := range []int64{1 << 20, 5 << 20} {
		if _, err := dev.WriteAt(bytes.Repeat([]byte{1}, 1<<20), off); err != nil {
			t.Fatal(err)
		}
	}
	ext := dataExtents(dev, size)
	if ext == nil {
		t.Fatal("no extents for a file source")
	}
	// Every written byte is inside an extent, and the holes at 0 and 3 MiB
	// are not (file systems may round extents, never past a whole hole MiB).
	in := func(off int64) bool {
		for _, e := range ext {
			if off >= e.Offset && off < e.Offset+e.Length {
				return true
			}
		}
		return false
	}
	for _, off := range []int64{1 << 20, 2<<20 - 1, 5 << 20, 6<<20 - 1} {
		if !in(off) {
			t.Errorf("data at %d outside extents %v", off, ext)
		}
	}
	for _, off := range []int64{0, 3 << 20, 7 << 20} {
		if in(off) {
			t.Errorf("hole at %d inside extents %v", off, ext)
		}
	}
	empty := openDev(t, filepath.Join(dir, "empty.img"), size)
	if e := dataExtents(empty, size); e == nil || len(e) != 0 {
		t.Errorf("all-hole file: extents %v, want empty", e)
	}
	if e := dataExtents(&memDev{b: make([]byte, 10)}, 10); e != nil {
		t.Errorf("memory source: extents %v, want nil (unknown)", e)
	}
}

func TestBlockHash(t *testing.T) {
	a := bytes.Repeat([]byte("block"), 1000)
	b := bytes.Clone(a)
	b[len(b)/2] ^= 1
	if blockHash(a) == blockHash(b) {
		t.Fatal("a flipped bit left the block hash unchanged")
	}
	if zeroHash(4096) != blockHash(make([]byte, 4096)) {
		t.Fatal("zeroHash differs from the hash of zeros")
	}
	if volumeDigest([][16]byte{blockHash(a), blockHash(b)}) == volumeDigest([][16]byte{blockHash(b), blockHash(a)}) {
		t.Fatal("digest ignores block order")
	}
}

// countingSink counts WriteAt calls on a file-backed sink (which the
// puller reopens with O_DIRECT).
type countingSink struct {
	*fileDev
	writes atomic.Int64
}

func (c *countingSink) WriteAt(p []byte, off int64) (int, error) {
	c.writes.Add(1)
	return c.fileDev.WriteAt(p, off)
}

// writeBackSink hides the file descriptor and records StartWriteback.
type writeBackSink struct {
	dev    *fileDev
	mu     sync.Mutex
	ranges []Extent
}

func (w *writeBackSink) WriteAt(p []byte, off int64) (int, error) { return w.dev.WriteAt(p, off) }
func (w *writeBackSink) Size() int64                              { return w.dev.Size() }
func (w *writeBackSink) Sync() error                              { return w.dev.Sync() }
func (w *writeBackSink) Zero(off, n int64) error                  { return w.dev.Zero(off, n) }
func (w *writeBackSink) StartWriteback(off, n int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ranges = append(w.ranges, Extent{off, n})
	return nil
}

// TestSinkWritePaths: a sink with a file descriptor is written with
// O_DIRECT (only the odd-sized tail block goes through WriteAt); one
// without gets WriteAt plus a writeback hint per block. Both read back
// right.
func TestSinkWritePaths(t *testing.T) {
	const size = 5<<20 + 777 // 6 blocks of 1 MiB, the last one short
	dir := t.TempDir()
	src, content, _ := makeImage(t, dir, size, 1<<20, []int{blkText, blkRandom}, 3)
	_, addr := startServer(t, fileOpener(t, src, size, nil, nil), Options{Logger: testLogger(t)})

	t.Run("direct", func(t *testing.T) {
		path := filepath.Join(testutil.DiskTempDir(t), "dst.img")
		sink := &countingSink{fileDev: openDev(t, path, size)}
		if f := openDirect(sink); f == nil {
			testutil.Skip(t, "the file system under "+path+" refuses O_DIRECT")
		} else {
			f.Close()
		}
		if _, err := Pull(context.Background(), dialer(addr), "fork-1", "target-a", sink, Options{Logger: testLogger(t)}); err != nil {
			t.Fatal(err)
		}
		if n := sink.writes.Load(); n != 1 {
			t.Fatalf("%d writes through WriteAt, want 1 (the unaligned tail)", n)
		}
		if !bytes.Equal(readAll(t, path), content) {
			t.Fatal("target differs from source")
		}
	})
	t.Run("writeback", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "dst.img")
		sink := &writeBackSink{dev: openDev(t, path, size)}
		if openDirect(sink) != nil {
			t.Fatal("O_DIRECT on a sink without a file descriptor")
		}
		// Nor behind a read-only descriptor, or a sink that is only part
		// of its file.
		ro, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer ro.Close()
		if openDirect(&fileDev{File: ro, size: size}) != nil {
			t.Fatal("O_DIRECT through a read-only descriptor")
		}
		if openDirect(&fileDev{File: sink.dev.File, size: size - 4096}) != nil {
			t.Fatal("O_DIRECT on a sink smaller than its file")
		}
		if _, err := Pull(context.Background(), dialer(addr), "fork-1", "target-a", sink, Options{Logger: testLogger(t)}); err != nil {
			t.Fatal(err)
		}
		sink.mu.Lock()
		n := len(sink.ranges)
		sink.mu.Unlock()
		if n != 6 {
			t.Fatalf("%d writeback hints, want 6 (one per block)", n)
		}
		if !bytes.Equal(readAll(t, path), content) {
			t.Fatal("target differs from source")
		}
	})
}

// countingSource counts the bytes the server reads.
type countingSource struct {
	*fileDev
	read atomic.Int64
}

func (c *countingSource) ReadAt(p []byte, off int64) (int, error) {
	c.read.Add(int64(len(p)))
	return c.fileDev.ReadAt(p, off)
}

// TestHolesFoundWithoutExtents: when the Opener gives no extents, a file
// source's holes are found with SEEK_DATA and never read.
func TestHolesFoundWithoutExtents(t *testing.T) {
	const size = 64 << 20
	dir := t.TempDir()
	srcPath := filepath.Join(dir, "src.img")
	src := openDev(t, srcPath, size)
	blk := make([]byte, 1<<20)
	fillBlock(newRand(5), blk, blkText)
	for _, off := range []int64{3 << 20, 40 << 20} {
		if _, err := src.WriteAt(blk, off); err != nil {
			t.Fatal(err)
		}
	}
	cs := &countingSource{fileDev: src}
	_, addr := startServer(t, func(ctx context.Context, forkID, peer string) (Source, []Extent, func(), error) {
		return cs, nil, nil, nil
	}, Options{Logger: testLogger(t)})
	dstPath := filepath.Join(dir, "dst.img")
	st, err := Pull(context.Background(), dialer(addr), "f", "h", openDev(t, dstPath, size), Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if st.DataBytes != 2<<20 || st.ZeroBytes != size-2<<20 {
		t.Fatalf("stats %+v", st)
	}
	// File systems may report a little more than the written MiBs as data,
	// never the whole volume.
	if n := cs.read.Load(); n < 2<<20 || n > 8<<20 {
		t.Fatalf("read %d bytes of a %d-byte volume with 2 MiB of data", n, size)
	}
	if !bytes.Equal(readAll(t, dstPath), readAll(t, srcPath)) {
		t.Fatal("target differs from source")
	}
}
