package cow

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/forknode/forknode/internal/lvm"
)

// ---- Host tests: a fake runner, for the marker and fallback rules. ----

// thinFake is lvmFake plus the device-mapper tools, answered from a table;
// a command missing from it fails. heldRoot is the pool's held metadata
// root ("-": none), kept up to date by reserve and release.
type thinFake struct {
	lvmFake
	tools       map[string]string
	heldRoot    string
	failRelease bool
	toolCalls   []string
}

const thinFakeLVs = `{"report":[{"lv":[{"lv_name":"pool","vg_name":"vg0","lv_size":"268435456","lv_attr":"twi-aotz--","segtype":"thin-pool"},
	{"lv_name":"snap_a","vg_name":"vg0","lv_size":"67108864","lv_attr":"Vwi-a-tz-k","pool_lv":"pool","segtype":"thin","lv_tags":"forknode,forknode-id:snap_a"},
	{"lv_name":"thick_a","vg_name":"vg0","lv_size":"67108864","lv_attr":"-wi-a-----","segtype":"linear","lv_tags":"forknode,forknode-id:thick_a"}]}]}`

func newThinFake() *thinFake {
	return &thinFake{
		lvmFake:  lvmFake{lvsJSON: thinFakeLVs},
		heldRoot: "-",
		tools: map[string]string{
			"dmsetup table vg0-snap_a": "0 131072 thin 253:4 7",
			"dmsetup info -c --noheadings -o major,minor --separator : vg0-pool-tpool": "253:4",
			"dmsetup table vg0-pool-tpool":                                             "0 524288 thin-pool 253:2 253:3 128 0 0",
			"dmsetup info -c --noheadings -o major,minor --separator : vg0-pool_tmeta": "253:2",
			"thin_dump -f xml -m --dev-id 7 /dev/mapper/vg0-pool_tmeta": `<superblock data_block_size="128">
				<device dev_id="7"><range_mapping origin_begin="16" data_begin="0" length="32" time="0"/>
				<single_mapping origin_block="500" data_block="90" time="0"/></device></superblock>`,
		},
	}
}

func (f *thinFake) RunTool(_ context.Context, stdout io.Writer, tool string, args ...string) error {
	cmd := tool + " " + strings.Join(args, " ")
	f.toolCalls = append(f.toolCalls, cmd)
	switch cmd {
	case "dmsetup status vg0-pool-tpool":
		_, err := io.WriteString(stdout, "0 524288 thin-pool 1 11/1024 10/4096 "+f.heldRoot+" rw discard_passdown queue_if_no_space - 1024")
		return err
	case "dmsetup message vg0-pool-tpool 0 reserve_metadata_snap":
		if f.heldRoot != "-" {
			return &lvm.LVMError{Tool: tool, Op: "message", Code: 1, Stderr: "device-mapper: message ioctl failed: Device or resource busy"}
		}
		f.heldRoot = "27"
		return nil
	case "dmsetup message vg0-pool-tpool 0 release_metadata_snap":
		if f.failRelease || f.heldRoot == "-" {
			return &lvm.LVMError{Tool: tool, Op: "message", Code: 1, Stderr: "device-mapper: message ioctl failed: Invalid argument"}
		}
		f.heldRoot = "-"
		return nil
	}
	out, ok := f.tools[cmd]
	if !ok {
		return &lvm.LVMError{Tool: tool, Op: args[0], Code: 1, Stderr: "Device does not exist."}
	}
	_, err := io.WriteString(stdout, out)
	return err
}

func TestLVMThinExtentsRules(t *testing.T) {
	ctx := context.Background()
	whole := []Extent{{0, 64 << 20}}
	// Blocks 16-47 (1-3 MiB) and block 500 (31.25 MiB), on a 1 MiB grid.
	mapped := []Extent{{1 << 20, 2 << 20}, {31 << 20, 1 << 20}}
	newB := func(t *testing.T, f *thinFake, dir string) *LVMBackend {
		b, err := NewLVMBackend("vg0", LVMOptions{Runner: f, StateDir: dir, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	marker := func(dir string) string { return filepath.Join(dir, metaSnapPrefix+"vg0-pool-tpool") }
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }

	t.Run("map read and snapshot released", func(t *testing.T) {
		f, dir := newThinFake(), filepath.Join(t.TempDir(), "not-yet")
		b := newB(t, f, dir)
		got, err := b.Extents(ctx, "snap_a")
		if err != nil || !reflect.DeepEqual(got, mapped) {
			t.Fatalf("Extents = %v, %v; want %v", got, err, mapped)
		}
		if f.heldRoot != "-" || exists(marker(dir)) {
			t.Fatalf("after the map: held root %s, marker left %v", f.heldRoot, exists(marker(dir)))
		}
	})
	t.Run("thick LV is the whole device, no tools run", func(t *testing.T) {
		f := newThinFake()
		b := newB(t, f, t.TempDir())
		got, err := b.Extents(ctx, "thick_a")
		if err != nil || !reflect.DeepEqual(got, whole) || len(f.toolCalls) != 0 {
			t.Fatalf("Extents = %v, %v, tools %v", got, err, f.toolCalls)
		}
	})
	t.Run("someone else's snapshot is left alone", func(t *testing.T) {
		f, dir := newThinFake(), t.TempDir()
		f.heldRoot = "99"
		b := newB(t, f, dir)
		got, err := b.Extents(ctx, "snap_a")
		if err != nil || !reflect.DeepEqual(got, whole) {
			t.Fatalf("Extents = %v, %v; want the whole LV", got, err)
		}
		if f.heldRoot != "99" || exists(marker(dir)) {
			t.Fatalf("held root %s, marker %v: another holder's snapshot was touched", f.heldRoot, exists(marker(dir)))
		}
	})
	t.Run("a failed dump still releases", func(t *testing.T) {
		f, dir := newThinFake(), t.TempDir()
		f.tools["thin_dump -f xml -m --dev-id 7 /dev/mapper/vg0-pool_tmeta"] = `<superblock data_block_size="128"></superblock>`
		b := newB(t, f, dir)
		got, err := b.Extents(ctx, "snap_a")
		if err != nil || !reflect.DeepEqual(got, whole) {
			t.Fatalf("Extents = %v, %v; want the whole LV", got, err)
		}
		if f.heldRoot != "-" || exists(marker(dir)) {
			t.Fatalf("held root %s, marker %v", f.heldRoot, exists(marker(dir)))
		}
	})
	t.Run("a failed release is retried next time and at start", func(t *testing.T) {
		f, dir := newThinFake(), t.TempDir()
		b := newB(t, f, dir)
		f.failRelease = true
		if got, err := b.Extents(ctx, "snap_a"); err != nil || !reflect.DeepEqual(got, mapped) {
			t.Fatalf("Extents = %v, %v", got, err)
		}
		if f.heldRoot == "-" || !exists(marker(dir)) {
			t.Fatalf("held root %s, marker %v: want both kept", f.heldRoot, exists(marker(dir)))
		}
		// The next map releases the leftover first, then maps as usual.
		f.failRelease = false
		if got, err := b.Extents(ctx, "snap_a"); err != nil || !reflect.DeepEqual(got, mapped) {
			t.Fatalf("Extents after a failed release = %v, %v", got, err)
		}
		if f.heldRoot != "-" || exists(marker(dir)) {
			t.Fatalf("held root %s, marker %v", f.heldRoot, exists(marker(dir)))
		}
		// A crash while held: the marker is on disk, and the next start
		// releases the snapshot.
		f.heldRoot = "27"
		if err := os.WriteFile(marker(dir), []byte("vg0-pool-tpool\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		newB(t, f, dir)
		if f.heldRoot != "-" || exists(marker(dir)) {
			t.Fatalf("after restart: held root %s, marker %v", f.heldRoot, exists(marker(dir)))
		}
	})
	t.Run("no StateDir keeps no marker", func(t *testing.T) {
		f := newThinFake()
		b := newB(t, f, "")
		if got, err := b.Extents(ctx, "snap_a"); err != nil || !reflect.DeepEqual(got, mapped) {
			t.Fatalf("Extents = %v, %v", got, err)
		}
	})
	t.Run("plain lvm runner reads the whole LV", func(t *testing.T) {
		b, err := NewLVMBackend("vg0", LVMOptions{Runner: &lvmFake{lvsJSON: thinFakeLVs}, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		if got, err := b.Extents(ctx, "snap_a"); err != nil || !reflect.DeepEqual(got, whole) {
			t.Fatalf("Extents = %v, %v", got, err)
		}
	})
}

// ---- Guest tests: real LVM in the qemu guest. ----

// TestLVMThinMap: the thin map of a real snapshot covers every byte that
// is not zero, leaves out what was never written, and releases the pool's
// metadata snapshot, also after a crash (a marker and a held snapshot).
func TestLVMThinMap(t *testing.T) {
	dir := t.TempDir()
	b := realLVMBackend(t, "FORKNODE_LVM_THIN_VG", LVMOptions{ThinPool: os.Getenv("FORKNODE_LVM_THIN_POOL"), Overprovision: 10, StateDir: dir})
	ctx := context.Background()
	const size = 64 << 20
	removeLVAtEnd(t, b, "vol_m1")
	if _, err := b.Create(ctx, CreateSpec{ID: "vol_m1", Name: "thinmap-src", Size: size}); err != nil {
		t.Fatal(err)
	}
	// Data in three places, one across a MiB boundary.
	pieces := map[int64][]byte{
		0:             randBytes(1, 4096),
		5<<20 + 12345: randBytes(2, 1<<20),
		40 << 20:      randBytes(3, 300<<10),
	}
	writeDevs(t, b, "vol_m1", pieces)
	removeLVAtEnd(t, b, "snap_m1")
	if _, err := b.Snapshot(ctx, "vol_m1", "snap_m1"); err != nil {
		t.Fatal(err)
	}
	// A write to the origin after the snapshot is not in its map.
	writeDev(t, b, "vol_m1", 60<<20, randBytes(4, 4096))

	d, err := b.Open(ctx, "snap_m1", false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ext, err := b.Extents(ctx, "snap_m1")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("thin map of the snapshot: %v", ext)
	want := []Extent{{0, 1 << 20}, {5 << 20, 2 << 20}, {40 << 20, 1 << 20}}
	if !reflect.DeepEqual(ext, want) {
		t.Errorf("map %v, want %v", ext, want)
	}
	// Whatever the map, every MiB holding a non-zero byte must be in it.
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += 1 << 20 {
		if _, err := d.ReadAt(buf, off); err != nil {
			t.Fatal(err)
		}
		if bytes.Count(buf, []byte{0}) == len(buf) {
			continue
		}
		in := false
		for _, e := range ext {
			in = in || (off >= e.Offset && off+(1<<20) <= e.Offset+e.Length)
		}
		if !in {
			t.Errorf("MiB at %d holds data but is not in the map", off)
		}
	}

	lc := lvm.New(lvm.ExecRunner{Path: os.Getenv("FORKNODE_LVM_PATH")}, nil)
	td, err := lc.ThinDevice(ctx, b.VG(), "snap_m1")
	if err != nil {
		t.Fatal(err)
	}
	if held, err := lc.MetadataSnapHeld(ctx, td.Pool); err != nil || held {
		t.Fatalf("metadata snapshot held after the map: %v, %v", held, err)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, metaSnapPrefix+"*")); len(m) != 0 {
		t.Fatalf("markers left: %v", m)
	}

	// Another holder's snapshot: the whole LV, and theirs stays.
	if err := lc.ReserveMetadataSnap(ctx, td.Pool); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if held, _ := lc.MetadataSnapHeld(context.Background(), td.Pool); held {
			lc.ReleaseMetadataSnap(context.Background(), td.Pool)
		}
	})
	if ext, err := b.Extents(ctx, "snap_m1"); err != nil || !reflect.DeepEqual(ext, []Extent{{0, size}}) {
		t.Fatalf("with a held snapshot: %v, %v; want the whole LV", ext, err)
	}
	if held, _ := lc.MetadataSnapHeld(ctx, td.Pool); !held {
		t.Fatal("another holder's metadata snapshot was released")
	}
	// The same snapshot with this agent's marker (a crash while held): the
	// next start releases it.
	if err := os.WriteFile(filepath.Join(dir, metaSnapPrefix+td.Pool), []byte(td.Pool+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	realLVMBackend(t, "FORKNODE_LVM_THIN_VG", LVMOptions{ThinPool: os.Getenv("FORKNODE_LVM_THIN_POOL"), StateDir: dir})
	if held, err := lc.MetadataSnapHeld(ctx, td.Pool); err != nil || held {
		t.Fatalf("after restart: held %v, %v", held, err)
	}
	if _, err := os.Stat(filepath.Join(dir, metaSnapPrefix+td.Pool)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("marker after restart: %v", err)
	}
}
