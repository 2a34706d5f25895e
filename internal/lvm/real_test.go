package lvm

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// The tests below run lvm against real volume groups. The development
// kernel has no device-mapper, so they run inside the qemu guest, whose
// init exports FORKNODE_LVM_VG (thick) and FORKNODE_LVM_THIN_VG /
// FORKNODE_LVM_THIN_POOL (a VG with a thin pool).
func realClient(t *testing.T, env string) (*Client, string) {
	t.Helper()
	vg := os.Getenv(env)
	if vg == "" {
		t.Skip("real LVM runs inside the qemu guest: see TestLVMInQemu")
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Info, Output: testWriter{t}})
	return New(ExecRunner{Path: os.Getenv("FORKNODE_LVM_PATH")}, logger), vg
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// removeAtEnd removes vg/name when the test ends, pass or fail.
func removeAtEnd(t *testing.T, c *Client, vg, name string) {
	t.Cleanup(func() {
		if err := c.Remove(context.Background(), vg, name); err != nil && !errors.Is(err, ErrNotFound) {
			t.Errorf("cleanup remove %s/%s: %v", vg, name, err)
		}
	})
}

func isBlockDevice(path string) bool {
	var st unix.Stat_t
	return unix.Stat(path, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK
}

func TestRealVGCapacity(t *testing.T) {
	c, vgName := realClient(t, "FORKNODE_LVM_VG")
	vg, err := c.VG(context.Background(), vgName)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("vg %+v", vg)
	if vg.Name != vgName || vg.Size <= 0 || vg.Free <= 0 || vg.Free > vg.Size || vg.ExtentSize <= 0 || vg.Size%vg.ExtentSize != 0 {
		t.Errorf("implausible VG report %+v", vg)
	}
	if _, err := c.VG(context.Background(), "no_such_vg"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing VG: %v, want ErrNotFound", err)
	}
}

func TestRealCreateListRemove(t *testing.T) {
	c, vg := realClient(t, "FORKNODE_LVM_VG")
	ctx := context.Background()
	before, err := c.VG(ctx, vg)
	if err != nil {
		t.Fatal(err)
	}
	tags, err := Tags{Owned: true, ID: "vol_real1", Name: "my db & co", Fork: "fork_1"}.List()
	if err != nil {
		t.Fatal(err)
	}
	removeAtEnd(t, c, vg, "vol_real1")
	if err := c.CreateLinear(ctx, vg, "vol_real1", 5<<20, tags); err != nil {
		t.Fatal(err)
	}
	lv, err := c.LV(ctx, vg, "vol_real1")
	if err != nil {
		t.Fatal(err)
	}
	// 5 MiB rounds up to two 4 MiB extents.
	if lv.Size != 8<<20 || !lv.Active() || lv.SegType != "linear" || lv.Created.IsZero() {
		t.Errorf("lv %+v", lv)
	}
	if !isBlockDevice(lv.DevicePath()) {
		t.Errorf("%s is not a block device", lv.DevicePath())
	}
	if got := ParseTags(lv.Tags); got != (Tags{Owned: true, ID: "vol_real1", Name: "my db & co", Fork: "fork_1"}) {
		t.Errorf("tags %q parsed as %+v", lv.Tags, got)
	}
	after, err := c.VG(ctx, vg)
	if err != nil {
		t.Fatal(err)
	}
	if before.Free-after.Free != 8<<20 {
		t.Errorf("vg_free went from %d to %d, want 8 MiB less", before.Free, after.Free)
	}
	owned, err := c.ListTagged(ctx, vg, TagOwned)
	if err != nil || len(owned) != 1 || owned[0].Name != "vol_real1" {
		t.Errorf("ListTagged = %+v, %v", owned, err)
	}
	if err := c.CreateLinear(ctx, vg, "vol_real1", 4<<20, tags); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate create: %v, want ErrExists", err)
	}
	if err := c.CreateLinear(ctx, vg, "vol_huge", before.Size*2, tags); !errors.Is(err, ErrNoSpace) {
		t.Errorf("oversized create: %v, want ErrNoSpace", err)
		removeAtEnd(t, c, vg, "vol_huge")
	}
	if err := c.Deactivate(ctx, vg, "vol_real1"); err != nil {
		t.Fatal(err)
	}
	if lv, _ := c.LV(ctx, vg, "vol_real1"); lv.Active() {
		t.Errorf("still active after Deactivate: %s", lv.Attr)
	}
	if err := c.Activate(ctx, vg, "vol_real1"); err != nil {
		t.Fatal(err)
	}
	if err := c.Remove(ctx, vg, "vol_real1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.LV(ctx, vg, "vol_real1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("after remove: %v, want ErrNotFound", err)
	}
	if err := c.Remove(ctx, vg, "vol_real1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second remove: %v, want ErrNotFound", err)
	}
}

// TestRealSnapshotWatch fills a one-extent classic snapshot by writing to
// its origin: the watch must report the growth, then the overflow.
func TestRealSnapshotWatch(t *testing.T) {
	c, vg := realClient(t, "FORKNODE_LVM_VG")
	ctx := context.Background()
	removeAtEnd(t, c, vg, "vol_watch")
	if err := c.CreateLinear(ctx, vg, "vol_watch", 16<<20, []string{TagOwned}); err != nil {
		t.Fatal(err)
	}
	removeAtEnd(t, c, vg, "snap_watch") // cleanups run last-in first-out: snapshot first
	if err := c.CreateSnapshot(ctx, vg, "vol_watch", "snap_watch", 4<<20, []string{TagOwned, "forknode-kind:snapshot"}); err != nil {
		t.Fatal(err)
	}
	snap, err := c.LV(ctx, vg, "snap_watch")
	if err != nil {
		t.Fatal(err)
	}
	if !snap.IsClassicSnapshot() || snap.Origin != "vol_watch" || snap.OriginSize != 16<<20 || !snap.HasDataPct {
		t.Fatalf("snapshot %+v", snap)
	}
	w := c.WatchSnapshot(vg, "snap_watch", 80, time.Millisecond)
	f, err := os.OpenFile("/dev/"+vg+"/vol_watch", os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := alignedBuf(t, 1<<20)
	for i := range buf {
		buf[i] = 0xA5
	}
	write := func(off int64) {
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	write(0)
	if err := w.Poll(ctx); err != nil {
		t.Fatalf("1 MiB into a 4 MiB snapshot: %v", err)
	}
	if p := w.Percent(); p <= 0 || p >= 80 {
		t.Errorf("data_percent %.2f after 1 MiB of 4 MiB", p)
	}
	// 3.5 MiB of 4: past the 80% limit, short of overflowing. The watch
	// must stop the copy here, while the snapshot is still valid.
	write(1 << 20)
	write(2 << 20)
	if _, err := f.WriteAt(buf[:512<<10], 3<<20); err != nil {
		t.Fatal(err)
	}
	err = w.Poll(ctx)
	if !errors.Is(err, ErrSnapshotOverflow) || !strings.Contains(err.Error(), "% full") {
		t.Fatalf("3.5 MiB into a 4 MiB snapshot: %v, want ErrSnapshotOverflow before it fills", err)
	}
	t.Logf("nearly full reported as: %v", err)
	if snap, err := c.LV(ctx, vg, "snap_watch"); err != nil || snap.Invalid() || snap.DataPct >= 100 {
		t.Fatalf("snapshot should still be valid at the limit: %+v %v", snap, err)
	}
	// Past 100% dm-snapshot invalidates it; a fresh watch says so too.
	for off := int64(4 << 20); off < 16<<20; off += 1 << 20 {
		write(off)
	}
	err = c.WatchSnapshot(vg, "snap_watch", 80, time.Millisecond).Poll(ctx)
	if !errors.Is(err, ErrSnapshotOverflow) || !strings.Contains(err.Error(), "invalid") {
		t.Fatalf("16 MiB into a 4 MiB snapshot: %v, want ErrSnapshotOverflow (invalid)", err)
	}
	t.Logf("overflow reported as: %v", err)
}

// alignedBuf returns n bytes aligned for O_DIRECT (anonymous mmap memory
// is page-aligned).
func alignedBuf(t *testing.T, n int) []byte {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Munmap(b) })
	return b
}

func TestRealThin(t *testing.T) {
	c, vg := realClient(t, "FORKNODE_LVM_THIN_VG")
	pool := os.Getenv("FORKNODE_LVM_THIN_POOL")
	ctx := context.Background()
	pools, err := c.ThinPools(ctx, vg)
	if err != nil {
		t.Fatal(err)
	}
	if len(pools) != 1 || pools[0].Name != pool || pools[0].Size <= 0 {
		t.Fatalf("thin pools %+v, want %q", pools, pool)
	}
	removeAtEnd(t, c, vg, "vol_thin1")
	if err := c.CreateThin(ctx, vg, pool, "vol_thin1", 1<<30, []string{TagOwned, "forknode-id:vol_thin1"}); err != nil {
		t.Fatal(err)
	}
	removeAtEnd(t, c, vg, "vol_thin2")
	start := time.Now()
	if err := c.CreateThinSnapshot(ctx, vg, "vol_thin1", "vol_thin2", []string{TagOwned, "forknode-id:vol_thin2"}); err != nil {
		t.Fatal(err)
	}
	t.Logf("thin snapshot of 1 GiB took %v", time.Since(start))
	lv, err := c.LV(ctx, vg, "vol_thin2")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("thin snapshot %+v", lv)
	if !lv.IsThin() || lv.Pool != pool || lv.Origin != "vol_thin1" || lv.Size != 1<<30 || !lv.Active() {
		t.Errorf("thin snapshot %+v", lv)
	}
	if !isBlockDevice(lv.DevicePath()) {
		t.Errorf("%s is not a block device", lv.DevicePath())
	}
	if lv.HasTag("forknode-id:vol_thin1") {
		t.Errorf("snapshot inherited the origin's id tag: %q", lv.Tags)
	}
	if err := c.Deactivate(ctx, vg, "vol_thin2"); err != nil {
		t.Fatal(err)
	}
	if err := c.Activate(ctx, vg, "vol_thin2"); err != nil {
		t.Fatal(err)
	}
	if lv, err := c.LV(ctx, vg, "vol_thin2"); err != nil || !lv.Active() {
		t.Errorf("after Activate: %+v %v", lv, err)
	}
}
