package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/forknode/forknode/internal/testutil"
	"github.com/forknode/forknode/internal/transfer"
)

func TestSeekExtents(t *testing.T) {
	const mb = 1 << 20
	for _, tc := range []struct {
		name   string
		size   int64
		writes []int64 // 1 MiB of data at each offset
		ok     bool
		want   []transfer.Extent
	}{
		{name: "all hole", size: 4 * mb, ok: true},
		{name: "two extents", size: 8 * mb, writes: []int64{mb, 5 * mb}, ok: true,
			want: []transfer.Extent{{Offset: mb, Length: mb}, {Offset: 5 * mb, Length: mb}}},
		// One extent covering everything says nothing: a block device
		// reports exactly that.
		{name: "fully written", size: 2 * mb, writes: []int64{0, mb}, ok: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "img")
			f, err := os.Create(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := f.Truncate(tc.size); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, mb)
			for i := range buf {
				buf[i] = 0xa5
			}
			for _, off := range tc.writes {
				if _, err := f.WriteAt(buf, off); err != nil {
					t.Fatal(err)
				}
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			ext, ok, err := seekExtents(f, tc.size)
			if err != nil {
				t.Fatal(err)
			}
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v (extents %v)", ok, tc.ok, ext)
			}
			if !ok {
				return
			}
			// Filesystems may round extents out to their block size; every
			// written range must be covered and nothing far beyond it.
			var total int64
			for _, e := range ext {
				total += e.Length
			}
			var want int64
			for _, e := range tc.want {
				want += e.Length
				covered := false
				for _, g := range ext {
					if g.Offset <= e.Offset && g.Offset+g.Length >= e.Offset+e.Length {
						covered = true
					}
				}
				if !covered {
					t.Fatalf("extent %+v not covered by %v", e, ext)
				}
			}
			if total > want+int64(len(tc.want))*64<<10 {
				t.Fatalf("extents %v cover %d bytes, want about %d", ext, total, want)
			}
		})
	}
}

func TestOpenSourceSize(t *testing.T) {
	p := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(p, make([]byte, 12345), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := openSource(p)
	if err != nil {
		t.Fatal(err)
	}
	defer s.f.Close()
	if s.Size() != 12345 {
		t.Fatalf("size %d, want 12345", s.Size())
	}
	if _, err := openSource(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("no error for a missing source")
	}
}

// TestOpenSourceBlockDevice: serve hands the sender a Source whose Fd() is
// the block device itself, so the bench exercises transfer's O_DIRECT path
// for block devices (transfer's own tests check that path).
func TestOpenSourceBlockDevice(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCmd(t, "losetup")
	img := filepath.Join(t.TempDir(), "img")
	const size = 4<<20 + 512
	if err := os.WriteFile(img, bytes.Repeat([]byte{7}, size), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-r", "--find", "--show", img).CombinedOutput()
	if err != nil {
		testutil.Skip(t, fmt.Sprintf("losetup: %v: %s", err, out))
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	s, err := openSource(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer s.f.Close()
	var src transfer.Source = s
	h, ok := src.(interface{ Fd() uintptr })
	if !ok {
		t.Fatal("the bench's source exposes no Fd()")
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(h.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK || s.Size() != size {
		t.Fatalf("mode %o size %d: want a block device of %d bytes", st.Mode, s.Size(), size)
	}
}

// TestServePull runs both modes over loopback on a small sparse image and
// checks the copy byte for byte.
func TestServePull(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	const size = 6<<20 + 4096 // not a multiple of the chunk
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*31 + i>>8)
	}
	for _, off := range []int64{0, 3 << 20, size - 100} {
		n := min(int64(len(buf)), size-off)
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()

	for _, codec := range []string{"zstd", "s2"} {
		t.Run(codec, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := l.Addr().String()
			l.Close()
			errc := make(chan error, 1)
			go func() { errc <- serve([]string{"-listen", addr, "-src", src, "-codec", codec}) }()
			out := filepath.Join(dir, "out-"+codec+".img")
			if err := pull([]string{"-connect", addr, "-out", out, "-size", strconv.Itoa(size), "-wait", "10s"}); err != nil {
				t.Fatal(err)
			}
			if err := <-errc; err != nil {
				t.Fatalf("serve: %v", err)
			}
			a, _ := os.ReadFile(src)
			b, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(a, b) {
				t.Fatal("pulled image differs from the source")
			}
		})
	}
}

func TestFlags(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"-listen", "127.0.0.1:0"},
		{"-listen", "127.0.0.1:0", "-src", "x", "-extents", "bogus"},
	} {
		if err := serve(args); err == nil {
			t.Errorf("serve %v: no error", args)
		}
	}
	for _, args := range [][]string{
		{},
		{"-connect", "127.0.0.1:1", "-out", "x"},
		{"-connect", "127.0.0.1:1", "-out", "x", "-size", "-5"},
	} {
		if err := pull(args); err == nil {
			t.Errorf("pull %v: no error", args)
		}
	}
}
