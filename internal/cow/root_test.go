package cow

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/testutil"
	"golang.org/x/sys/unix"
)

// hostFS makes a backend directory on a fresh loop-mounted filesystem:
// "xfs" with reflink, or "ext4" without.
func hostFS(t testing.TB, fstype string) string {
	t.Helper()
	testutil.RequireRoot(t)
	switch fstype {
	case "xfs":
		testutil.RequireCmd(t, "mkfs.xfs")
		return testutil.LoopFS(t, "xfs", 24<<30, "-q", "-f", "-m", "reflink=1")
	case "ext4":
		testutil.RequireCmd(t, "mkfs.ext4")
		return testutil.LoopFS(t, "ext4", 2<<30, "-q", "-F")
	}
	t.Fatalf("unknown fs %s", fstype)
	return ""
}

// attachVolume attaches id and detaches it at cleanup (after any unmount
// registered later).
func attachVolume(t testing.TB, b *FileBackend, id string) string {
	t.Helper()
	dev, err := b.Attach(context.Background(), id)
	if err != nil {
		t.Fatalf("attach %s: %v", id, err)
	}
	t.Cleanup(func() {
		if err := b.Detach(context.Background(), id); err != nil {
			t.Errorf("detach %s: %v", id, err)
		}
	})
	return dev
}

// writeSpots writes n 1 MiB blocks of random data spread over a volume.
func writeSpots(t testing.TB, path string, size int64, n int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := 0; i < n; i++ {
		for j := range buf {
			buf[j] = byte(i*31 + j)
		}
		off := (size / int64(n) * int64(i)) &^ (1<<20 - 1)
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func TestXFSClone(t *testing.T) {
	ctx := context.Background()
	dir := hostFS(t, "xfs")
	b := newTestBackend(t, dir, 0)
	if f := b.Features(); !f.Clone || f.Filesystem != "xfs" || f.Backend != "file" {
		t.Fatalf("features %+v", f)
	}
	const size = 1 << 30
	if _, err := b.Create(ctx, CreateSpec{ID: "src", Name: "src", Size: size}); err != nil {
		t.Fatal(err)
	}
	writeSpots(t, imgPath(b, "src"), size, 64)
	free := func() int64 {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err != nil {
			t.Fatal(err)
		}
		return int64(st.Bavail) * st.Bsize
	}
	freeBefore := free()
	start := time.Now()
	v, err := b.Clone(ctx, "src", CreateSpec{ID: "c1", Name: "c1", Owner: "fork_1"})
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	// A reflink shares the source's 64 MiB of blocks: the filesystem's
	// free space hardly moves, where a copy, even a fast one, would take
	// all of it.
	if used := freeBefore - free(); used > 4<<20 {
		t.Fatalf("the clone took %d bytes of the filesystem: it copied rather than shared the blocks", used)
	}
	// 64 MiB of data would take far longer to copy durably; a reflink is
	// a metadata operation.
	if took > time.Second {
		t.Fatalf("clone of 1 GiB took %s: not O(1)", took)
	}
	if v.Origin != "src" || v.Size != size {
		t.Fatalf("clone %+v", v)
	}
	if again, err := b.Clone(ctx, "src", CreateSpec{ID: "c1", Name: "c1", Owner: "fork_1"}); err != nil || again.Created != v.Created {
		t.Fatalf("retried clone: %+v %v", again, err)
	}
	if _, err := b.Clone(ctx, "src", CreateSpec{ID: "c1", Name: "other"}); !errors.Is(err, ErrExists) {
		t.Fatalf("clone id reuse: %v", err)
	}
	if !sameContent(t, v.Path, imgPath(b, "src")) {
		t.Fatal("clone differs")
	}
	want := make([]byte, 4096)
	srcF, _ := os.Open(imgPath(b, "src"))
	defer srcF.Close()
	srcF.ReadAt(want, 0)
	// Copy-on-write: writing the clone leaves the source alone.
	f, _ := os.OpenFile(v.Path, os.O_RDWR, 0)
	f.WriteAt(bytes.Repeat([]byte{0xee}, 4096), 0)
	f.Close()
	got := make([]byte, 4096)
	srcF.ReadAt(got, 0)
	if !bytes.Equal(got, want) {
		t.Fatal("source changed by a write to its clone")
	}
	// A grown clone; a shrunk one is refused.
	if v, err := b.Clone(ctx, "src", CreateSpec{ID: "c2", Name: "c2", Size: 2 * size}); err != nil || v.Size != 2*size {
		t.Fatalf("grown clone %+v %v", v, err)
	}
	if _, err := b.Clone(ctx, "src", CreateSpec{ID: "c3", Name: "c3", Size: size / 2}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("shrunk clone: %v", err)
	}
	// Snapshots reflink too, and CloneOrFork takes the clone path.
	if _, err := b.Snapshot(ctx, "src", "s1"); err != nil {
		t.Fatal(err)
	}
	if _, st, err := CloneOrFork(ctx, b, "src", CreateSpec{ID: "c4", Name: "c4"}, CopyOptions{}); err != nil || st.DataBytes != 0 {
		t.Fatalf("CloneOrFork on xfs: %+v %v", st, err)
	}
}

func TestExt4NoCloneForkLocal(t *testing.T) {
	ctx := context.Background()
	dir := hostFS(t, "ext4")
	b := newTestBackend(t, dir, 0)
	if f := b.Features(); f.Clone || f.Filesystem != "ext4" {
		t.Fatalf("features %+v", f)
	}
	if _, err := b.Create(ctx, CreateSpec{ID: "src", Name: "src", Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	writeSpots(t, imgPath(b, "src"), 64<<20, 8)
	if _, err := b.Clone(ctx, "src", CreateSpec{ID: "c", Name: "c"}); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("clone on ext4: %v", err)
	}
	st, err := ForkLocal(ctx, b, "src", CreateSpec{ID: "f", Name: "f"}, CopyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.DataBytes != 8<<20 {
		t.Fatalf("stats %+v", st)
	}
	if !sameContent(t, imgPath(b, "f"), imgPath(b, "src")) {
		t.Fatal("fork differs")
	}
}

func TestAttachDetachSurvivesRestart(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := context.Background()
	dir := t.TempDir()
	b := newTestBackend(t, dir, 0)
	if _, err := b.Create(ctx, CreateSpec{ID: "v", Name: "v", Size: 16 << 20}); err != nil {
		t.Fatal(err)
	}
	dev := attachVolume(t, b, "v")
	if !strings.HasPrefix(dev, "/dev/loop") || loopBacking(dev) != imgPath(b, "v") {
		t.Fatalf("attached as %q backing %q", dev, loopBacking(dev))
	}
	if again, err := b.Attach(ctx, "v"); err != nil || again != dev {
		t.Fatalf("re-attach: %q %v", again, err)
	}
	// Data written through the device lands in the image.
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(bytes.Repeat([]byte{7}, 4096), 8192)
	f.Sync()
	f.Close()
	if img := readAll(t, imgPath(b, "v")); img[8192] != 7 {
		t.Fatal("write through loop device not in image")
	}
	if _, err := b.Open(ctx, "v", true); !errors.Is(err, ErrBusy) {
		t.Fatalf("writable open of attached volume: %v", err)
	}
	// A snapshot of an attached, unmounted volume flushes the device first.
	if _, err := b.Snapshot(ctx, "v", "s"); err != nil {
		t.Fatal(err)
	}
	if img := readAll(t, imgPath(b, "s")); img[8192] != 7 {
		t.Fatal("snapshot misses device data")
	}

	// Restart: the attachment is found again.
	b2 := newTestBackend(t, dir, 0)
	if v, _ := b2.Get(ctx, "v"); v.Device != dev {
		t.Fatalf("after reopen device %q, want %q", v.Device, dev)
	}
	// Metadata that lost the device (crash between ioctl and write) is
	// repaired from sysfs.
	raw := readAll(t, filepath.Join(dir, "v.json"))
	os.WriteFile(filepath.Join(dir, "v.json"), bytes.Replace(raw, []byte(dev), nil, 1), 0o600)
	b3 := newTestBackend(t, dir, 0)
	if v, _ := b3.Get(ctx, "v"); v.Device != dev {
		t.Fatalf("not re-discovered: %q", v.Device)
	}
	if err := b3.Remove(ctx, "v"); !errors.Is(err, ErrBusy) {
		t.Fatalf("remove attached: %v", err)
	}
	if err := b3.Detach(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	if loopBacking(dev) == imgPath(b, "v") {
		t.Fatal("still bound after Detach")
	}
	b4 := newTestBackend(t, dir, 0)
	if v, _ := b4.Get(ctx, "v"); v.Device != "" {
		t.Fatalf("device after detach+reopen: %q", v.Device)
	}
	if err := b4.Remove(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	// b (the first instance) still records the device; its cleanup Detach
	// must see the binding is gone and just clear the record.
}

func TestDetachMountedIsBusy(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCmd(t, "mkfs.ext4")
	ctx := context.Background()
	b := newTestBackend(t, "", 0)
	if _, err := b.Create(ctx, CreateSpec{ID: "v", Name: "v", Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	dev := attachVolume(t, b, "v")
	testutil.Run(t, "mkfs.ext4", "-q", "-F", dev)
	mp := testutil.Mount(t, dev, "ext4")
	if err := b.Detach(ctx, "v"); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), mp) {
		t.Fatalf("detach mounted: %v", err)
	}
	mps, err := mountpointsOf(dev)
	if err != nil || len(mps) != 1 || mps[0] != mp {
		t.Fatalf("mountpointsOf = %v %v", mps, err)
	}
	testutil.Unmount(t, mp)
}

// TestCopySnapshotKeepsBudget: without reflink a snapshot is a full copy,
// held while a fork runs. Its space is forknode's and comes back, so the
// budget the agent advertises must not dip by it (a catalog write down and
// another up for every fork, and less room shown to the planner).
func TestCopySnapshotKeepsBudget(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t, hostFS(t, "ext4"), 0)
	if b.Features().Clone {
		t.Fatal("ext4 host reports reflink")
	}
	v, err := b.Create(ctx, CreateSpec{ID: "vol_a", Name: "a", Size: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	writeSpots(t, v.Path, v.Size, 64) // 64 MiB of data
	c0, err := b.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Snapshot(ctx, "vol_a", "snap_vol_b"); err != nil {
		t.Fatal(err)
	}
	c1, err := b.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := c0.Budget - c1.Budget; d > 1<<20 || d < -(1<<20) {
		t.Fatalf("a snapshot moved the budget from %d to %d", c0.Budget, c1.Budget)
	}
	if err := b.Remove(ctx, "snap_vol_b"); err != nil {
		t.Fatal(err)
	}
	c2, err := b.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := c0.Budget - c2.Budget; d > 1<<20 || d < -(1<<20) {
		t.Fatalf("the budget went from %d to %d across a snapshot's life", c0.Budget, c2.Budget)
	}
}
