package cluster

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/api"
	"github.com/forknode/forknode/internal/cow"
	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/testutil"
)

func TestScaleProgress(t *testing.T) {
	tests := []struct{ done, total, size, want int64 }{
		{0, 64 * MiB, 256 * MiB, 0},
		{16 * MiB, 64 * MiB, 256 * MiB, 64 * MiB},
		{64 * MiB, 64 * MiB, 256 * MiB, 256 * MiB},
		{0, 0, 256 * MiB, 256 * MiB}, // an empty source: nothing to copy
		{1 << 50, 1 << 50, 1 << 50, 1 << 50},
		{1<<50 - 1, 1 << 50, 1 << 50, 1<<50 - 1},
	}
	for _, tc := range tests {
		if got := scaleProgress(tc.done, tc.total, tc.size); got != tc.want {
			t.Errorf("scaleProgress(%d, %d, %d) = %d, want %d", tc.done, tc.total, tc.size, got, tc.want)
		}
	}
}

// slowBackend models real backend timing: a clone that takes a while and
// ignores its context (an FICLONE ioctl, lvcreate), and a create that is
// either not listed yet while it runs (lvcreate) or listed but busy while
// it zeroes (thick LVM).
type slowBackend struct {
	cow.Backend
	mu       sync.Mutex
	creating map[string]bool
	started  chan string
	busyMode bool
}

func (b *slowBackend) Features() cow.Features {
	f := b.Backend.Features()
	f.Clone = true
	return f
}

func (b *slowBackend) Clone(ctx context.Context, src string, spec cow.CreateSpec) (cow.Volume, error) {
	b.started <- spec.ID
	time.Sleep(1500 * time.Millisecond) // uninterruptible, like an ioctl
	return b.Backend.Create(context.Background(), spec)
}

func (b *slowBackend) Create(ctx context.Context, spec cow.CreateSpec) (cow.Volume, error) {
	if !strings.HasPrefix(spec.Name, "slow") {
		return b.Backend.Create(ctx, spec)
	}
	b.started <- spec.ID
	if b.busyMode {
		v, err := b.Backend.Create(ctx, spec)
		b.mu.Lock()
		b.creating[spec.ID] = true
		b.mu.Unlock()
		time.Sleep(1500 * time.Millisecond)
		b.mu.Lock()
		delete(b.creating, spec.ID)
		b.mu.Unlock()
		return v, err
	}
	time.Sleep(1500 * time.Millisecond)
	return b.Backend.Create(context.Background(), spec)
}

func (b *slowBackend) Remove(ctx context.Context, id string) error {
	b.mu.Lock()
	busy := b.creating[id]
	b.mu.Unlock()
	if busy {
		return cow.ErrBusy
	}
	return b.Backend.Remove(ctx, id)
}

// A delete that lands while the volume is still being made (a cancelled
// clone, a create racing volume rm) must end with the volume gone from the
// catalog and from disk: not left on disk with no record (space outside
// every budget), and not "ready" again.
func TestDeleteWhileMaking(t *testing.T) {
	for _, tc := range []struct {
		name string
		busy bool
		run  func(t *testing.T, c *testCluster, n *Node, sb *slowBackend) string
	}{
		{"fork cancelled during its clone", false, func(t *testing.T, c *testCluster, n *Node, sb *slowBackend) string {
			src := c.createVolume(n, "src", "", "n1", 16*MiB)
			fk, err := c.fork(n, fsm.ForkRequest{Source: src.ID, Name: "t", Via: fsm.PathClone})
			if err != nil {
				t.Fatal(err)
			}
			<-sb.started
			if _, err := n.Apply(context.Background(), fsm.CmdFinishFork, &fsm.FinishForkCmd{ForkID: fk.ID, Error: api.ForkCancelledError}); err != nil {
				t.Fatal(err)
			}
			return fk.TargetVolume
		}},
		{"rm during create (not listed yet)", false, nil},
		{"rm during create (busy while zeroing)", true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var sb *slowBackend
			c := newTestClusterWith(t, []int64{200 * MiB}, nil, func(cfg *Config) {
				sb = &slowBackend{Backend: cfg.Backend, creating: map[string]bool{}, started: make(chan string, 4), busyMode: tc.busy}
				cfg.Backend = sb
			})
			n := c.leader()
			var id string
			if tc.run != nil {
				id = tc.run(t, c, n, sb)
			} else {
				res, err := n.Apply(context.Background(), fsm.CmdCreateVolume, &fsm.CreateVolumeCmd{
					Volume: fsm.Volume{ID: NewID("vol_"), Name: "slow1", Host: "n1", Size: 16 * MiB}})
				if err != nil {
					t.Fatal(err)
				}
				v := *res.(*fsm.Volume)
				id = v.ID
				<-sb.started
				if _, err := startDelete(context.Background(), n, v, 5*time.Second); err != nil {
					t.Fatal(err)
				}
			}
			testutil.Eventually(t, 20*time.Second, "volume gone from catalog and disk", func() bool {
				in := false
				n.View(func(s *fsm.State) { _, in = s.Volume(id) })
				_, err := sb.Backend.Get(context.Background(), id)
				return !in && errors.Is(err, cow.ErrNotFound)
			})
			// And it stays gone: no late create brings it back on disk.
			time.Sleep(2 * time.Second) // a bounded wait for something that must not happen
			if _, err := sb.Backend.Get(context.Background(), id); !errors.Is(err, cow.ErrNotFound) {
				t.Fatalf("%s is back on disk with no record: %v", id, err)
			}
		})
	}
}

// slowSnap takes its snapshots slowly, as the file backend does where it
// cannot clone (a full copy), and counts them.
type slowSnap struct {
	cow.Backend
	delay time.Duration
	calls atomic.Int32
}

func (b *slowSnap) Snapshot(ctx context.Context, src, id string) (cow.Volume, error) {
	b.calls.Add(1)
	time.Sleep(b.delay)
	return b.Backend.Snapshot(ctx, src, id)
}

// A stream whose source snapshot takes longer than the puller's patience
// (1 s here, for I/O and for giving up) still succeeds: the puller is told
// the source is not ready and comes back, and the snapshot is taken once.
// Before, the snapshot ran inside the first pull and the fork failed.
func TestStreamWaitsForSlowSnapshot(t *testing.T) {
	var ss *slowSnap
	tc := newTestClusterWith(t, []int64{200 * MiB, 200 * MiB}, nil, func(c *Config) {
		c.streamPatience = time.Second
		if c.Name == "n1" {
			ss = &slowSnap{Backend: c.Backend, delay: 2500 * time.Millisecond}
			c.Backend = ss
		}
	})
	n := tc.leader()
	src := tc.createVolume(n, "src", "", "n1", 16*MiB)
	fk, err := tc.fork(n, fsm.ForkRequest{Source: src.ID, Name: "t", Via: fsm.PathStream, Host: "n2"})
	if err != nil {
		t.Fatal(err)
	}
	f := tc.waitFork(n, fk.ID, 30*time.Second)
	if f.State != fsm.ForkReady {
		t.Fatalf("fork %s: %s (%s)", f.ID, f.State, f.Error)
	}
	if c := ss.calls.Load(); c != 1 {
		t.Fatalf("snapshot taken %d times, want once", c)
	}
}
