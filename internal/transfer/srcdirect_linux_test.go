package transfer

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/forknode/forknode/internal/testutil"
)

// attachLoop attaches img read-only to a free loop device, detached when the
// test ends, and returns the device opened read-only as a Source.
func attachLoop(t *testing.T, img string, size int64) (string, *fileDev) {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireCmd(t, "losetup")
	out, err := exec.Command("losetup", "-r", "--find", "--show", img).CombinedOutput()
	if err != nil {
		testutil.Skip(t, fmt.Sprintf("losetup -r --find --show: %v: %s", err, out))
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return dev, &fileDev{File: f, size: size}
}

// loopImage is a sparse image of random and text blocks, written zero
// blocks and holes whose size is a multiple of 512 (a loop device's size)
// but not of 4 KiB or 1 MiB: the last grid block has an aligned part, read
// with O_DIRECT, and a 512-byte tail read through ReadAt.
const loopImageSize = 64<<20 + 12<<10 + 512

// TestBlockDeviceSourceDirect streams a read-only loop device through
// Server and Pull and checks that the sender read it with O_DIRECT.
func TestBlockDeviceSourceDirect(t *testing.T) {
	const size = loopImageSize
	dir := t.TempDir()
	img, content, _ := makeImage(t, dir, size, 256<<10, mixed, 21)
	dev, _ := attachLoop(t, img, size)
	cases := []struct {
		name  string
		codec string
		chunk int
		cut   int64 // cut the first connection after this many bytes (0: never)
	}{
		{name: "zstd", codec: "zstd"},
		{name: "s2 64KiB chunks", codec: "s2", chunk: 64 << 10},
		// A resume re-reads the prefix for the digest, also with O_DIRECT.
		{name: "resume", codec: "none", cut: 40 << 20},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			open := func(ctx context.Context, forkID, peer string) (Source, []Extent, func(), error) {
				f, err := os.Open(dev)
				if err != nil {
					return nil, nil, nil, err
				}
				// nil extents: the sender scans, as it must for a device.
				return &fileDev{File: f, size: size}, nil, func() { f.Close() }, nil
			}
			srv, addr := startServer(t, open, Options{Codec: tc.codec, ChunkSize: tc.chunk, Logger: testLogger(t)})
			if tc.cut > 0 {
				addr = newProxy(t, addr, func(px *proxy) { px.cutConn, px.cutAfter = 1, tc.cut }).addr()
			}
			sink := &memDev{b: bytes.Repeat([]byte{0xA5}, size)}
			st, err := Pull(context.Background(), dialer(addr), "fork-1", "target-a", sink, Options{Logger: testLogger(t)})
			if err != nil {
				t.Fatalf("Pull: %v", err)
			}
			if !bytes.Equal(sink.b, content) {
				t.Fatal("target differs from the loop device")
			}
			srv.Close() // sessions are accounted when they end
			// Every byte but the 512-byte tail comes through O_DIRECT; a
			// resumed session reads its prefix again.
			direct := srv.directBytes.Load()
			if tc.cut == 0 && direct != size-512 {
				t.Fatalf("read %d bytes with O_DIRECT, want %d", direct, size-512)
			}
			if tc.cut > 0 && (st.Reconnects != 1 || direct <= size-512) {
				t.Fatalf("reconnects %d, O_DIRECT bytes %d: want a resume that re-read the prefix", st.Reconnects, direct)
			}
		})
	}
}

// TestDirectSourceReadAt covers the reader's edge cases on a real device:
// what it reads itself, what it leaves to ReadAt, and the fallback once
// the kernel refuses O_DIRECT.
func TestDirectSourceReadAt(t *testing.T) {
	const size = loopImageSize
	dir := t.TempDir()
	img, content, _ := makeImage(t, dir, size, 256<<10, mixed, 22)
	_, src := attachLoop(t, img, size)
	d := openDirectSource(src, hclog.NewNullLogger())
	if d == nil {
		t.Fatal("no O_DIRECT reader for a loop device")
	}
	defer d.close()
	if d.align < ioAlign || d.align&(d.align-1) != 0 || d.limit != size/d.align*d.align {
		t.Fatalf("align %d limit %d", d.align, d.limit)
	}
	buf := alignedBufTo(1<<20+ioAlign, int(d.align))
	cases := []struct {
		name   string
		p      []byte
		off    int64
		direct int // bytes readAt must read itself
	}{
		{"aligned block", buf[:1<<20], 2 << 20, 1 << 20},
		{"unaligned offset", buf[:1<<20], 2<<20 + 512, 0},
		{"unaligned length", buf[:ioAlign+100], 0, ioAlign},
		{"short block", buf[:100], 0, 0},
		{"tail", buf[:1<<20], size - (12<<10 + 512), 12 << 10},
		{"past the end", buf[:ioAlign], size, 0},
		// Last: a misaligned buffer makes the kernel refuse O_DIRECT, and
		// the reader turns itself off instead of failing.
		{"misaligned buffer", buf[1 : 1+ioAlign], 0, 0},
		{"after refusal", buf[:1<<20], 2 << 20, 0},
	}
	snd := &sender{src: src, direct: d, log: hclog.NewNullLogger()}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := d.bytes.Load()
			n, err := d.readAt(tc.p, tc.off)
			if err != nil || n != tc.direct {
				t.Fatalf("readAt = %d, %v; want %d", n, err, tc.direct)
			}
			if got := d.bytes.Load() - before; got != int64(tc.direct) {
				t.Fatalf("counted %d O_DIRECT bytes, want %d", got, tc.direct)
			}
			want := content[min(tc.off, size):min(tc.off+int64(len(tc.p)), size)]
			if !bytes.Equal(tc.p[:n], want[:n]) {
				t.Fatal("O_DIRECT read the wrong bytes")
			}
			// The sender's readBlock completes the rest through ReadAt. Its
			// blocks never pass the source's end (a short read there is an
			// error), so it gets the part within the size.
			clear(tc.p)
			if err := snd.readBlock(tc.p[:len(want)], tc.off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(tc.p[:len(want)], want) {
				t.Fatal("readBlock read the wrong bytes")
			}
		})
	}
	if !d.refused.Load() || d.active() {
		t.Fatal("a refused O_DIRECT read did not turn the reader off")
	}
}

// TestOpenDirectSourceOnlyBlockDevices: regular files keep buffered reads
// (with readahead hints), and sources without a descriptor have no choice.
func TestOpenDirectSourceOnlyBlockDevices(t *testing.T) {
	dir := t.TempDir()
	file := openDev(t, filepath.Join(dir, "f.img"), 1<<20)
	for _, tc := range []struct {
		name string
		src  Source
	}{
		{"regular file", file},
		{"no descriptor", &memDev{b: make([]byte, 1<<20)}},
	} {
		if d := openDirectSource(tc.src, hclog.NewNullLogger()); d != nil {
			d.close()
			t.Errorf("%s: got an O_DIRECT reader", tc.name)
		}
	}
}

func TestAlignedBufTo(t *testing.T) {
	for _, a := range []int{512, 4096, 64 << 10} {
		for _, n := range []int{1, 4096, 1<<20 + 3} {
			b := alignedBufTo(n, a)
			if len(b) != n || cap(b) != n || uintptr(unsafe.Pointer(unsafe.SliceData(b)))%uintptr(a) != 0 {
				t.Fatalf("alignedBufTo(%d, %d): len %d cap %d at %p", n, a, len(b), cap(b), unsafe.SliceData(b))
			}
		}
	}
}

// An error of a reopened descriptor names the sink's path, not
// /proc/self/fd/N: "write /proc/self/fd/18: no space left on device" told
// an operator nothing.
func TestReopenKeepsTheName(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "sink")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	g, err := reopen(int(f.Fd()), unix.O_RDONLY|unix.O_CLOEXEC, f)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if g.Name() != f.Name() {
		t.Fatalf("reopened file is named %q, want %q", g.Name(), f.Name())
	}
	if _, err := g.Write([]byte("x")); err == nil || !strings.Contains(err.Error(), f.Name()) {
		t.Fatalf("an error of the reopened file: %v, want it to name %s", err, f.Name())
	}
}
