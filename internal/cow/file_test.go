package cow

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestCreateGetListRemove(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t, "", 0)
	v, err := b.Create(ctx, CreateSpec{ID: "vol_a", Name: "alpha", Size: 8 << 20, Owner: "fork_1"})
	if err != nil {
		t.Fatal(err)
	}
	if v.Kind != KindVolume || v.Size != 8<<20 || v.Path != imgPath(b, "vol_a") || v.Created.IsZero() {
		t.Fatalf("bad volume %+v", v)
	}
	st, err := os.Stat(v.Path)
	if err != nil || st.Size() != 8<<20 {
		t.Fatalf("image: %v %v", st, err)
	}
	if ext, _ := b.Extents(ctx, "vol_a"); len(ext) != 0 {
		t.Fatalf("new volume should be all hole, extents %v", ext)
	}
	if _, err := b.Create(ctx, CreateSpec{ID: "vol_b", Name: "beta", Size: 4096}); err != nil {
		t.Fatal(err)
	}
	got, err := b.Get(ctx, "vol_a")
	if err != nil || !reflect.DeepEqual(got, v) {
		t.Fatalf("Get = %+v, %v; want %+v", got, err, v)
	}
	if ids := listIDs(t, b); !reflect.DeepEqual(ids, []string{"vol_a/volume", "vol_b/volume"}) {
		t.Fatalf("List = %v", ids)
	}
	if err := b.Remove(ctx, "vol_a"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "vol_a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after remove: %v", err)
	}
	if err := b.Remove(ctx, "vol_a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Remove: %v", err)
	}
	if files := dirFiles(t, b.Dir()); !reflect.DeepEqual(files, []string{"vol_b.img", "vol_b.json"}) {
		t.Fatalf("dir holds %v", files)
	}
}

func TestMetadataDurableAcrossReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b := newTestBackend(t, dir, 0)
	v, err := b.Create(ctx, CreateSpec{ID: "vol_a", Name: "alpha", Size: 1 << 20, Owner: "o"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := b.Snapshot(ctx, "vol_a", "snap_1")
	if err != nil {
		t.Fatal(err)
	}
	// Debris of a crash: a temp file and an image without metadata.
	os.WriteFile(filepath.Join(dir, ".vol_x.img.tmp"), []byte("x"), 0o600)
	os.WriteFile(filepath.Join(dir, "vol_y.img"), []byte("y"), 0o600)

	b2 := newTestBackend(t, dir, 0)
	for _, want := range []Volume{v, s} {
		got, err := b2.Get(ctx, want.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != want.ID || got.Name != want.Name || got.Size != want.Size || got.Kind != want.Kind ||
			got.Owner != want.Owner || got.Origin != want.Origin || !got.Created.Equal(want.Created) || got.Path != want.Path {
			t.Fatalf("reopened %+v, want %+v", got, want)
		}
	}
	if files := dirFiles(t, dir); !reflect.DeepEqual(files, []string{"snap_1.img", "snap_1.json", "vol_a.img", "vol_a.json"}) {
		t.Fatalf("debris not cleaned: %v", files)
	}
	// A corrupt metadata file is not a silent loss: the volume is not
	// served, and its files stay (TestDamagedVolumeLeftAlone has more).
	os.WriteFile(filepath.Join(dir, "vol_a.json"), []byte("{"), 0o600)
	b3, err := NewFileBackend(dir, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b3.Get(ctx, "vol_a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("volume with corrupt metadata served: %v", err)
	}
	if files := dirFiles(t, dir); !reflect.DeepEqual(files, []string{"snap_1.img", "snap_1.json", "vol_a.img", "vol_a.json"}) {
		t.Fatalf("files of a volume with corrupt metadata: %v", files)
	}
}

func TestCreateIdempotent(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t, "", 0)
	spec := CreateSpec{ID: "vol_a", Name: "alpha", Size: 1 << 20, Owner: "f"}
	v1, err := b.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	v2, err := b.Create(ctx, spec)
	if err != nil || !reflect.DeepEqual(v1, v2) {
		t.Fatalf("retry: %+v %v", v2, err)
	}
	for _, other := range []CreateSpec{
		{ID: "vol_a", Name: "alpha", Size: 2 << 20, Owner: "f"},
		{ID: "vol_a", Name: "other", Size: 1 << 20, Owner: "f"},
		{ID: "vol_a", Name: "alpha", Size: 1 << 20, Owner: "g"},
	} {
		if _, err := b.Create(ctx, other); !errors.Is(err, ErrExists) {
			t.Errorf("%+v: want ErrExists, got %v", other, err)
		}
	}
	if _, err := b.Create(ctx, CreateSpec{ID: "vol_b", Name: "alpha", Size: 4096}); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate name: %v", err)
	}
}

func TestCapacity(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t, "", 10<<20)
	c, err := b.Capacity(ctx)
	if err != nil || c.Budget != 10<<20 || c.Used != 0 || c.Free != 10<<20 {
		t.Fatalf("capacity %+v %v", c, err)
	}
	if _, err := b.Create(ctx, CreateSpec{ID: "v1", Name: "v1", Size: 6 << 20}); err != nil {
		t.Fatal(err)
	}
	_, err = b.Create(ctx, CreateSpec{ID: "v2", Name: "v2", Size: 6 << 20})
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "6291456") || !strings.Contains(err.Error(), "4194304 free") {
		t.Fatalf("want ErrNoSpace with figures, got %v", err)
	}
	if _, err := b.Create(ctx, CreateSpec{ID: "v2", Name: "v2", Size: 4 << 20}); err != nil {
		t.Fatalf("exact fit: %v", err)
	}
	// Snapshots do not count against the budget.
	if _, err := b.Snapshot(ctx, "v1", "s1"); err != nil {
		t.Fatal(err)
	}
	c, _ = b.Capacity(ctx)
	if c.Used != 10<<20 || c.Free != 0 {
		t.Fatalf("capacity %+v", c)
	}
	// Budget 0: the filesystem's free space bounds it.
	b0 := newTestBackend(t, "", 0)
	c0, err := b0.Capacity(ctx)
	if err != nil || c0.Budget <= 0 || c0.Free != c0.Budget {
		t.Fatalf("capacity %+v %v", c0, err)
	}
	if _, err := b0.Create(ctx, CreateSpec{ID: "huge", Name: "huge", Size: (c0.Free/4096 + 1) * 4096}); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("over statfs free: %v", err)
	}
	// Sparse volumes do not count their unwritten space twice (as
	// provisioned and as free on disk): two volumes of 60 % of the free
	// space do not both fit, and a restart does not grow the budget.
	sz := (c0.Free * 6 / 10) / 4096 * 4096
	if _, err := b0.Create(ctx, CreateSpec{ID: "a60", Name: "a60", Size: sz}); err != nil {
		t.Fatal(err)
	}
	if _, err := b0.Create(ctx, CreateSpec{ID: "b60", Name: "b60", Size: sz}); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("a second 60 %% volume on a sparse disk: %v, want ErrNoSpace", err)
	}
	c1, _ := b0.Capacity(ctx)
	if c1.Budget > c0.Budget+(64<<20) { // other tests write to the same disk meanwhile
		t.Fatalf("budget grew from %d to %d with a sparse volume", c0.Budget, c1.Budget)
	}
	// A budget above the filesystem's free space is capped by it.
	bBig := newTestBackend(t, "", MaxSize*1000)
	cb, _ := bBig.Capacity(ctx)
	if cb.Budget >= MaxSize*1000 {
		t.Fatalf("budget not capped by statfs: %+v", cb)
	}
}

func TestExtentsAndDevice(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t, "", 0)
	if _, err := b.Create(ctx, CreateSpec{ID: "v", Name: "v", Size: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	d, err := b.Open(ctx, "v", true)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{0xab}, 64<<10)
	for _, off := range []int64{0, 4 << 20} {
		if _, err := d.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.WriteAt(data, 8<<20-4096); !errors.Is(err, ErrInvalid) {
		t.Fatalf("write past end: %v", err)
	}
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	ext, err := b.Extents(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	// Filesystems allocate in their own block size; each extent must
	// cover the data written and there must be a hole between them.
	if len(ext) != 2 || ext[0].Offset != 0 || ext[0].Length < 64<<10 || ext[1].Offset > 4<<20 ||
		ext[1].Offset+ext[1].Length < 4<<20+64<<10 || ext[0].Length >= 4<<20 {
		t.Fatalf("extents %+v", ext)
	}
	// Zero punches a hole: data reads back as zeros, the extent goes away.
	if err := d.Zero(4<<20, 64<<10); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	if _, err := d.ReadAt(buf, 4<<20); err != nil || !isZero(buf) {
		t.Fatalf("after Zero: %v zero=%v", err, isZero(buf))
	}
	ext, _ = b.Extents(ctx, "v")
	if len(ext) != 1 {
		t.Fatalf("extents after punch %+v", ext)
	}
	if d.Size() != 8<<20 {
		t.Fatalf("size %d", d.Size())
	}
	d.Close()
	if _, err := b.Open(ctx, "nope", false); !errors.Is(err, ErrNotFound) {
		t.Fatalf("open missing: %v", err)
	}
}

func TestSnapshotUnattached(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t, "", 0)
	if _, err := b.Create(ctx, CreateSpec{ID: "v", Name: "v", Size: 6 << 20}); err != nil {
		t.Fatal(err)
	}
	want := writeLayout(t, imgPath(b, "v"), "dzhpdh", 1)
	s, err := b.Snapshot(ctx, "v", "s")
	if err != nil {
		t.Fatal(err)
	}
	if s.Kind != KindSnapshot || s.Origin != "v" || s.Size != 6<<20 {
		t.Fatalf("snapshot %+v", s)
	}
	// Later writes to the source do not reach the snapshot.
	writeLayout(t, imgPath(b, "v"), "dddddd", 2)
	if got := readAll(t, s.Path); !bytes.Equal(got, want) {
		t.Fatal("snapshot content differs from the source at snapshot time")
	}
	if again, err := b.Snapshot(ctx, "v", "s"); err != nil || again.ID != "s" {
		t.Fatalf("idempotent snapshot: %v", err)
	}
	if _, err := b.Open(ctx, "s", true); !errors.Is(err, ErrInvalid) {
		t.Fatalf("writable snapshot open: %v", err)
	}
	if err := b.Release(ctx, "v"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("release of a volume: %v", err)
	}
	if err := b.Release(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	if ids := listIDs(t, b); !reflect.DeepEqual(ids, []string{"v/volume"}) {
		t.Fatalf("List = %v", ids)
	}
}

func TestCloneFollowsFeatures(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t, "", 0)
	if _, err := b.Create(ctx, CreateSpec{ID: "v", Name: "v", Size: 2 << 20}); err != nil {
		t.Fatal(err)
	}
	want := writeLayout(t, imgPath(b, "v"), "dp", 3)
	_, err := b.Clone(ctx, "v", CreateSpec{ID: "c", Name: "c"})
	if !b.Features().Clone {
		if !errors.Is(err, ErrNotSupported) {
			t.Fatalf("clone on %s: want ErrNotSupported, got %v", b.Features().Filesystem, err)
		}
		if files := dirFiles(t, b.Dir()); len(files) != 2 {
			t.Fatalf("stray files %v", files)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readAll(t, imgPath(b, "c")), want) {
		t.Fatal("clone differs")
	}
}

// TestConcurrentCreateSameName: the name and budget reservations hold
// under races; exactly one of the racers gets each name.
func TestConcurrentCreateSameName(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t, "", 0)
	const n = 8
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func(i int) {
			_, err := b.Create(ctx, CreateSpec{ID: fmt.Sprintf("v%d", i), Name: "same", Size: 1 << 20})
			errs <- err
		}(i)
	}
	ok := 0
	for i := 0; i < n; i++ {
		if err := <-errs; err == nil {
			ok++
		} else if !errors.Is(err, ErrExists) {
			t.Errorf("unexpected error %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d creates of the same name succeeded", ok)
	}
	if files := dirFiles(t, b.Dir()); len(files) != 2 {
		t.Fatalf("dir holds %v", files)
	}
}

// TestVolumeDirOfSomeoneElse: pointed at a directory holding files that
// forknode did not make, the backend refuses to start and deletes nothing;
// an unmarked directory holding only forknode's names (an older version's)
// is adopted, and in a marked directory only forknode's names are debris.
func TestVolumeDirOfSomeoneElse(t *testing.T) {
	tests := []struct {
		name    string
		files   []string // created before the first open
		wantErr string
		left    []string // the directory after the open, marker left out
	}{
		{"empty", nil, "", nil},
		{"a mounted filesystem's lost+found", []string{"lost+found/"}, "", []string{"lost+found"}},
		{"VM disk images", []string{"guest-disk.img", "notes.txt", ".swap.tmp"}, "holds files forknode did not make (.swap.tmp, guest-disk.img, notes.txt)",
			[]string{".swap.tmp", "guest-disk.img", "notes.txt"}},
		{"one foreign image among forknode's", []string{"vol_a.img", "vol_a.json", "disk.img"}, "(disk.img)", []string{"disk.img", "vol_a.img", "vol_a.json"}},
		{"only forknode's debris: adopted and cleaned", []string{".vol_b.img.tmp", ".snap_vol_c.json.tmp"}, "", nil},
		{"a user's image named like a volume", []string{"vol_backup.img", "snap_old.img"}, "(snap_old.img (an image without metadata), vol_backup.img (an image without metadata))",
			[]string{"snap_old.img", "vol_backup.img"}},
		{"the pacing probe of an older version", []string{ProbeFileName}, "", []string{ProbeFileName}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range tc.files {
				if name, ok := strings.CutSuffix(f, "/"); ok {
					if err := os.Mkdir(filepath.Join(dir, name), 0o700); err != nil {
						t.Fatal(err)
					}
					continue
				}
				if err := os.WriteFile(filepath.Join(dir, f), []byte("precious"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			_, err := NewFileBackend(dir, 0, nil)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("open: %v, want %q", err, tc.wantErr)
			}
			if tc.wantErr != "" && !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v is not ErrInvalid", err)
			}
			if got := dirFiles(t, dir); !reflect.DeepEqual(got, tc.left) && !(len(got) == 0 && len(tc.left) == 0) {
				t.Errorf("directory holds %q, want %q", got, tc.left)
			}
			_, statErr := os.Stat(filepath.Join(dir, markerName))
			if marked := statErr == nil; marked != (tc.wantErr == "") {
				t.Errorf("marker present %v, want %v", marked, tc.wantErr == "")
			}
		})
	}

	// In a marked directory, a foreign file that turns up later is left.
	dir := t.TempDir()
	if _, err := NewFileBackend(dir, 0, nil); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"guest-disk.img", ".other.tmp"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("precious"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := NewFileBackend(dir, 0, nil); err != nil {
		t.Fatal(err)
	}
	if got := dirFiles(t, dir); !reflect.DeepEqual(got, []string{".other.tmp", "guest-disk.img"}) {
		t.Errorf("marked directory holds %q after a restart", got)
	}
}

// TestVolumeDirClaim: a volume directory is one node's. A second agent on
// it is refused while the first runs, and a node of another name is
// refused for good: each would take the other's volumes for strays.
func TestVolumeDirClaim(t *testing.T) {
	dir := t.TempDir()
	b1 := newTestBackend(t, dir, 0)
	if err := b1.Claim("n1"); err != nil {
		t.Fatal(err)
	}
	if err := b1.Claim("n1"); err != nil {
		t.Fatalf("claiming again for the same node (a restart in process): %v", err)
	}
	b2 := newTestBackend(t, dir, 0)
	for _, tc := range []struct {
		node, want string
	}{
		{"n1", "in use by another agent"},
		{"n9", "in use by another agent"},
	} {
		if err := b2.Claim(tc.node); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("second agent as %s while n1 runs: %v, want %q", tc.node, err, tc.want)
		}
	}
	b1.Unclaim()
	if err := b2.Claim("n9"); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "belongs to node n1") {
		t.Fatalf("another node after n1 stopped: %v", err)
	}
	if err := b2.Claim("n1"); err != nil {
		t.Fatalf("n1 again: %v", err)
	}
	b2.Unclaim()
	raw, err := os.ReadFile(filepath.Join(dir, markerName))
	if err != nil || strings.Count(string(raw), "node: n1\n") != 1 {
		t.Fatalf("marker %q %v", raw, err)
	}
}

// TestOpenClaimsBeforeCleaning: a second agent opened on a directory in
// use is refused before it removes anything, such as the first agent's
// create in flight, as debris.
func TestOpenClaimsBeforeCleaning(t *testing.T) {
	dir := t.TempDir()
	b1, err := OpenFileBackend(dir, 0, "n1", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b1.Unclaim()
	inFlight := filepath.Join(dir, ".vol_0000000000000001.img.tmp")
	if err := os.WriteFile(inFlight, []byte("being written"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, node := range []string{"n9", "n1"} {
		if _, err := OpenFileBackend(dir, 0, node, nil); !errors.Is(err, ErrBusy) {
			t.Fatalf("second open as %s: %v, want ErrBusy", node, err)
		}
	}
	if _, err := os.Stat(inFlight); err != nil {
		t.Fatalf("the first agent's create in flight was removed: %v", err)
	}
}

// TestDamagedVolumeLeftAlone: one volume's truncated metadata, or its
// missing image, no longer stops the backend (and with it every other
// volume on the host). The damaged volume is not served, and its files
// stay where they are: an image is never removed as debris because its
// metadata could not be read.
func TestDamagedVolumeLeftAlone(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b := newTestBackend(t, dir, 0)
	for _, id := range []string{"vol_good", "vol_torn", "vol_gone"} {
		if _, err := b.Create(ctx, CreateSpec{ID: id, Name: id, Size: 1 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "vol_torn.json"), []byte(`{"id":"vol_t`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "vol_gone.img")); err != nil {
		t.Fatal(err)
	}
	b2, err := NewFileBackend(dir, 0, testLogger(t))
	if err != nil {
		t.Fatalf("one damaged volume stopped the backend: %v", err)
	}
	if _, err := b2.Get(ctx, "vol_good"); err != nil {
		t.Fatalf("the undamaged volume: %v", err)
	}
	for _, id := range []string{"vol_torn", "vol_gone"} {
		if _, err := b2.Get(ctx, id); !errors.Is(err, ErrNotFound) {
			t.Errorf("damaged %s served: %v", id, err)
		}
	}
	for _, name := range []string{"vol_torn.img", "vol_torn.json", "vol_gone.json"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("%s of a damaged volume was removed: %v", name, err)
		}
	}
}
