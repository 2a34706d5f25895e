package cow

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/testutil"
	"golang.org/x/sys/unix"
)

// Record format of the live writer: 4 KiB = seq (8 bytes) | crc32 of the
// payload (4 bytes) | payload (4084 bytes, random).
const recSize = 4096

func makeRecord(buf []byte, seq uint64, rng *rand.Rand) {
	rng.Read(buf[12:])
	binary.LittleEndian.PutUint64(buf[0:8], seq)
	binary.LittleEndian.PutUint32(buf[8:12], crc32.ChecksumIEEE(buf[12:]))
}

// liveWriter appends records to path, fsyncing every 16, until stopped.
type liveWriter struct {
	written atomic.Uint64 // records whose write() returned
	synced  atomic.Uint64 // records covered by a completed fsync
	stop    chan struct{}
	done    chan error
}

func startWriter(path string, max uint64) *liveWriter {
	w := &liveWriter{stop: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			w.done <- err
			return
		}
		defer f.Close()
		rng := rand.New(rand.NewSource(1))
		buf := make([]byte, recSize)
		for seq := uint64(0); seq < max; seq++ {
			select {
			case <-w.stop:
				w.done <- f.Sync()
				return
			default:
			}
			makeRecord(buf, seq, rng)
			if _, err := f.Write(buf); err != nil {
				w.done <- fmt.Errorf("write record %d: %w", seq, err)
				return
			}
			w.written.Store(seq + 1)
			if seq%16 == 15 {
				if err := f.Sync(); err != nil {
					w.done <- err
					return
				}
				w.synced.Store(seq + 1)
				time.Sleep(time.Millisecond)
			}
		}
		w.done <- f.Sync()
	}()
	return w
}

// checkRecords verifies the record file is a valid prefix of the stream:
// seq 0..n-1 contiguous, every checksum good, no torn tail. A torn tail is
// NOT accepted: FIFREEZE waits for every write() in progress, so a write
// is either wholly in the snapshot or not at all.
func checkRecords(t *testing.T, path string, atLeast, atMost uint64) uint64 {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data)%recSize != 0 {
		t.Fatalf("record file is %d bytes: torn record at the tail", len(data))
	}
	n := uint64(len(data) / recSize)
	for i := uint64(0); i < n; i++ {
		r := data[i*recSize : (i+1)*recSize]
		if seq := binary.LittleEndian.Uint64(r[0:8]); seq != i {
			t.Fatalf("record %d has seq %d", i, seq)
		}
		if binary.LittleEndian.Uint32(r[8:12]) != crc32.ChecksumIEEE(r[12:]) {
			t.Fatalf("record %d: checksum mismatch", i)
		}
	}
	if n < atLeast || n > atMost {
		t.Fatalf("fork holds %d records; want between %d (fsynced before the snapshot) and %d (written by the end)", n, atLeast, atMost)
	}
	return n
}

// verifyFork attaches a fork, checks the filesystem and the records.
func verifyFork(t *testing.T, b *FileBackend, id string, atLeast, atMost uint64) {
	t.Helper()
	dev := attachVolume(t, b, id)
	// FIFREEZE makes ext4 flush its journal and clear needs_recovery, so a
	// fork of a frozen filesystem is clean as it stands: no replay, and a
	// forced read-only check must find nothing at all.
	out, err := exec.Command("fsck.ext4", "-n", "-f", dev).CombinedOutput()
	if err != nil {
		t.Fatalf("fsck.ext4 -n -f on fork %s: %v\n%s", id, err, out)
	}
	// fsck -n skips a journal replay it would need; the superblock says
	// whether one is pending, which a fork of an unfrozen source would have.
	sb, err := exec.Command("dumpe2fs", "-h", dev).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs -h on fork %s: %v\n%s", id, err, sb)
	}
	if bytes.Contains(sb, []byte("needs_recovery")) {
		t.Fatalf("fork %s needs journal recovery: its source was not frozen when it was taken", id)
	}
	mp := testutil.Mount(t, dev, "ext4", "ro")
	n := checkRecords(t, filepath.Join(mp, "records"), atLeast, atMost)
	t.Logf("fork %s: clean fsck, %d valid records (>= %d synced before)", id, n, atLeast)
	testutil.Unmount(t, mp)
}

func TestLiveSnapshotAndFork(t *testing.T) {
	for _, host := range []string{"ext4", "xfs"} {
		t.Run(host, func(t *testing.T) {
			testutil.RequireRoot(t)
			testutil.RequireCmd(t, "mkfs.ext4", "fsck.ext4")
			ctx := context.Background()
			b := newTestBackend(t, hostFS(t, host), 0)
			if _, err := b.Create(ctx, CreateSpec{ID: "pg", Name: "pg", Size: 256 << 20}); err != nil {
				t.Fatal(err)
			}
			dev := attachVolume(t, b, "pg")
			testutil.Run(t, "mkfs.ext4", "-q", "-F", dev)
			mp := testutil.Mount(t, dev, "ext4")

			w := startWriter(filepath.Join(mp, "records"), 30000) // at most ~120 MiB
			var stopOnce sync.Once
			stop := func() error {
				var err error
				stopOnce.Do(func() { close(w.stop); err = <-w.done })
				return err
			}
			t.Cleanup(func() { stop() })
			testutil.Eventually(t, 10*time.Second, "writer progress", func() bool { return w.synced.Load() >= 256 })
			// While the snapshot is taken, the source must really be frozen:
			// freezing it again fails with EBUSY.
			var frozenChecks atomic.Int32
			frozenHook = func() error {
				frozenChecks.Add(1)
				return assertFrozen(mp)
			}
			t.Cleanup(func() { frozenHook = nil })

			type fork struct {
				id      string
				atLeast uint64
			}
			var forks []fork
			// ForkLocal: snapshot (frozen reflink or bounded frozen copy),
			// then a copy while the writer goes on.
			syncedBefore := w.synced.Load()
			if _, err := ForkLocal(ctx, b, "pg", CreateSpec{ID: "f_local", Name: "f-local"}, CopyOptions{}); err != nil {
				t.Fatal(err)
			}
			forks = append(forks, fork{"f_local", syncedBefore})
			if b.Features().Clone {
				testutil.Eventually(t, 10*time.Second, "more writes", func() bool { return w.synced.Load() > syncedBefore+64 })
				syncedBefore = w.synced.Load()
				start := time.Now()
				if _, err := b.Clone(ctx, "pg", CreateSpec{ID: "f_clone", Name: "f-clone"}); err != nil {
					t.Fatal(err)
				}
				t.Logf("live clone took %s", time.Since(start))
				forks = append(forks, fork{"f_clone", syncedBefore})
			}
			if got, want := frozenChecks.Load(), int32(len(forks)); got != want {
				t.Fatalf("the source was frozen %d times for %d forks", got, want)
			}
			// The source was thawed: the writer keeps going.
			after := w.written.Load()
			testutil.Eventually(t, 10*time.Second, "writer continues after thaw", func() bool { return w.written.Load() > after+32 })
			if err := stop(); err != nil {
				t.Fatalf("writer: %v", err)
			}
			total := w.written.Load()
			for _, f := range forks {
				verifyFork(t, b, f.id, f.atLeast, total)
			}
			if ids := listIDs(t, b); len(ids) != 1+len(forks) {
				t.Fatalf("snapshots left behind: %v", ids)
			}
		})
	}
}

// TestFreezeAlwaysThaws: an error, a panic or an over-long copy while the
// source is frozen all leave it thawed, and leave nothing behind.
func TestFreezeAlwaysThaws(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCmd(t, "mkfs.ext4")
	ctx := context.Background()
	b := newTestBackend(t, hostFS(t, "ext4"), 0)
	mp := mountedVolume(t, b, "pg")
	writable := func() bool {
		done := make(chan error, 1)
		go func() {
			err := os.WriteFile(filepath.Join(mp, "probe"), []byte("x"), 0o600)
			if err == nil {
				f, _ := os.Open(filepath.Join(mp, "probe"))
				err = f.Sync()
				f.Close()
			}
			done <- err
		}()
		select {
		case err := <-done:
			return err == nil
		case <-time.After(5 * time.Second):
			return false // still frozen
		}
	}
	errHook := fmt.Errorf("hook failure")
	errPanicked := errors.New("panic")
	for _, tc := range []struct {
		name string
		hook func() error
		set  func()
		want error
	}{
		// Each hook first checks that the source really is frozen, so that
		// "thawed afterwards" means something.
		{"error while frozen", func() error {
			if err := assertFrozen(mp); err != nil {
				return err
			}
			return errHook
		}, nil, errHook},
		{"panic while frozen", func() error {
			if err := assertFrozen(mp); err != nil {
				return err
			}
			panic("boom")
		}, nil, errPanicked},
		{"copy over the freeze limit", nil, func() { b.FreezeTimeout = time.Nanosecond }, ErrBusy},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, files := listIDs(t, b), dirFiles(t, b.Dir())
			frozenHook = tc.hook
			defer func() { frozenHook = nil; b.FreezeTimeout = 0 }()
			if tc.set != nil {
				tc.set()
			}
			var err error
			func() {
				defer func() {
					if r := recover(); r != nil {
						err = fmt.Errorf("%w: %v", errPanicked, r)
					}
				}()
				_, err = b.Snapshot(ctx, "pg", "s")
			}()
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("want %v, got %v", tc.want, err)
			}
			if err == nil {
				t.Fatal("snapshot succeeded")
			}
			if !writable() {
				t.Fatal("filesystem left frozen")
			}
			if after := listIDs(t, b); !reflect.DeepEqual(after, before) {
				t.Fatalf("List changed: %v -> %v", before, after)
			}
			if after := dirFiles(t, b.Dir()); !reflect.DeepEqual(after, files) {
				t.Fatalf("files changed: %v -> %v", files, after)
			}
		})
	}
	// And it still works afterwards.
	if _, err := b.Snapshot(ctx, "pg", "s"); err != nil {
		t.Fatal(err)
	}
}

// On a filesystem without reflink a snapshot of an attached volume is a
// copy that takes a while. A device the agent cannot freeze because it is
// mounted elsewhere (held exclusively here, as a mount in another
// namespace holds it) is refused rather than copied torn; an attached but
// idle one is copied; and no attach may start while a copy reads a volume.
func TestSnapshotOfAttachedVolumeOnCopyFS(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := context.Background()
	b := newTestBackend(t, hostFS(t, "ext4"), 0)
	if b.Features().Clone {
		t.Fatal("ext4 host reports reflink")
	}
	for _, id := range []string{"a", "c"} {
		if _, err := b.Create(ctx, CreateSpec{ID: id, Name: id, Size: 16 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	dev := attachVolume(t, b, "a")
	if _, err := b.Snapshot(ctx, "a", "s_idle"); err != nil {
		t.Fatalf("attached, unmounted, idle: %v", err)
	}
	excl, err := os.OpenFile(dev, os.O_RDONLY|unix.O_EXCL, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.Snapshot(ctx, "a", "s_busy")
	excl.Close()
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "cannot be frozen") {
		t.Fatalf("snapshot of a device in use elsewhere: %v, want ErrBusy", err)
	}
	b.mu.Lock()
	b.sources["c"]++ // a copy reading c
	b.mu.Unlock()
	_, err = b.Attach(ctx, "c")
	b.mu.Lock()
	b.sources["c"]--
	b.mu.Unlock()
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("attach during a copy: %v, want ErrBusy", err)
	}
	if ids := listIDs(t, b); len(ids) != 3 {
		t.Fatalf("volumes %v: want a, c and s_idle", ids)
	}
}

// assertFrozen checks that the filesystem mounted at mp is frozen: a
// second FIFREEZE fails with EBUSY. If it succeeds instead, it is undone.
func assertFrozen(mp string) error {
	f, err := os.Open(mp)
	if err != nil {
		return err
	}
	defer f.Close()
	err = unix.IoctlSetInt(int(f.Fd()), ioctlFIFREEZE, 0)
	if err == nil {
		_ = unix.IoctlSetInt(int(f.Fd()), ioctlFITHAW, 0)
		return fmt.Errorf("%s was not frozen during the snapshot", mp)
	}
	if !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("FIFREEZE %s: %w, want EBUSY (already frozen)", mp, err)
	}
	return nil
}

// TestFreezeMarkThawsAfterCrash: an agent killed while a snapshot holds
// the source frozen (no defer runs) leaves a freeze mark; the next start
// of the backend thaws the filesystem and drops the mark. Before marks,
// the database stayed frozen until someone ran fsfreeze -u by hand.
func TestFreezeMarkThawsAfterCrash(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCmd(t, "mkfs.ext4")
	ctx := context.Background()
	b := newTestBackend(t, hostFS(t, "ext4"), 0)
	mp := mountedVolume(t, b, "pg")

	// A snapshot's mark exists exactly while the source is frozen.
	frozenHook = func() error {
		if _, err := os.Stat(b.freezeMarkPath("snap_ok")); err != nil {
			return fmt.Errorf("no freeze mark while frozen: %w", err)
		}
		return nil
	}
	_, err := b.Snapshot(ctx, "pg", "snap_ok")
	frozenHook = nil
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(b.freezeMarkPath("snap_ok")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("freeze mark left after the thaw: %v", err)
	}

	// The crash: marked and frozen, and nothing thaws.
	if err := b.markFreeze("snap_crash", mp); err != nil {
		t.Fatal(err)
	}
	thaw, err := freezeFS(mp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = thaw() }) // never leave the test machine frozen
	if err := assertFrozen(mp); err != nil {
		t.Fatal(err)
	}
	if _, err := NewFileBackend(b.Dir(), 0, nil); err != nil {
		t.Fatalf("restart: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- os.WriteFile(filepath.Join(mp, "after"), []byte("x"), 0o600) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("filesystem still frozen after the backend restarted")
	}
	if _, err := os.Stat(b.freezeMarkPath("snap_crash")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("freeze mark left after the restart thawed: %v", err)
	}
}

// TestCopyRefusesRawWriters: a copy snapshot of an attached volume nobody
// has mounted cannot freeze anything, so one that another process has
// open for writing (a VM, a database on the raw device, dd) is refused
// rather than copied torn. A reader does not stop it.
func TestCopyRefusesRawWriters(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCmd(t, "mkfs.ext4")
	ctx := context.Background()
	b := newTestBackend(t, hostFS(t, "ext4"), 0) // no reflink: snapshots copy
	if _, err := b.Create(ctx, CreateSpec{ID: "raw", Name: "raw", Size: 16 << 20}); err != nil {
		t.Fatal(err)
	}
	dev := attachVolume(t, b, "raw")
	hold := func(mode string) func() {
		cmd := exec.Command("sh", "-c", "exec 3"+mode+dev+"; echo held; exec sleep 60")
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 5)
		if _, err := io.ReadFull(out, buf); err != nil {
			t.Fatal(err)
		}
		return func() { cmd.Process.Kill(); cmd.Wait() }
	}
	stop := hold("<>")
	_, err := b.Snapshot(ctx, "raw", "snap_w")
	stop()
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "open for writing by pid") {
		t.Fatalf("copy with a raw writer: %v, want ErrBusy naming it", err)
	}
	stop = hold("<")
	defer stop()
	if _, err := b.Snapshot(ctx, "raw", "snap_r"); err != nil {
		t.Fatalf("copy with a reader only: %v", err)
	}
}

// mountedVolume creates volume id (64 MiB) on b, attaches it, makes ext4
// on it and mounts it, undone when the test ends; it returns the mount
// point.
func mountedVolume(t *testing.T, b *FileBackend, id string) string {
	t.Helper()
	if _, err := b.Create(context.Background(), CreateSpec{ID: id, Name: id, Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	dev := attachVolume(t, b, id)
	testutil.Run(t, "mkfs.ext4", "-q", "-F", dev)
	return testutil.Mount(t, dev, "ext4")
}
