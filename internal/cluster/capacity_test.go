package cluster

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/cow"
	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/testutil"
)

func TestBudgetMoved(t *testing.T) {
	tests := []struct {
		old, cur int64
		want     bool
	}{
		{100 * MiB, 100 * MiB, false},
		{100 * MiB, 100*MiB + 1, false},
		{100 * MiB, 84 * MiB, true},      // 16 MiB
		{100 * MiB, 85 * MiB, false},     // under 16 MiB
		{1 << 40, 1<<40 + 64*MiB, false}, // under 1/256 of a TiB
		{1 << 40, 1<<40 - 4096*MiB, true},
		{0, 1, true},
		{100 * MiB, 0, true},
	}
	for _, tc := range tests {
		if got := budgetMoved(tc.old, tc.cur); got != tc.want {
			t.Errorf("budgetMoved(%d, %d) = %v, want %v", tc.old, tc.cur, got, tc.want)
		}
	}
}

// shiftingBackend reports a capacity budget that the test sets, standing
// in for a disk that other programs fill or an extended VG.
type shiftingBackend struct {
	cow.Backend
	mu     sync.Mutex
	budget int64 // < 0: the real backend's figure
	err    error
	calls  int
}

func (b *shiftingBackend) measured() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.calls
}

func (b *shiftingBackend) set(budget int64, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.budget, b.err = budget, err
}

func (b *shiftingBackend) Capacity(ctx context.Context) (cow.Capacity, error) {
	b.mu.Lock()
	b.calls++
	budget, err := b.budget, b.err
	b.mu.Unlock()
	if err != nil {
		return cow.Capacity{}, err
	}
	c, cerr := b.Backend.Capacity(ctx)
	if cerr != nil || budget < 0 {
		return c, cerr
	}
	c.Budget, c.Free = budget, max(budget-c.Used, 0)
	return c, nil
}

// TestClusterCapacityRefresh: a host's budget in the catalog follows its
// backend after start, and the planner places by the new figure.
func TestClusterCapacityRefresh(t *testing.T) {
	shift := &shiftingBackend{budget: -1}
	tc := newTestClusterWith(t, []int64{100 * MiB, 100 * MiB}, nil, func(c *Config) {
		if c.Name == "n2" {
			shift.Backend = c.Backend
			c.Backend = shift
		}
	})
	src := tc.createVolume(tc.nodes[0], "src", "app", "n1", 4*MiB)
	tc.fill(src, 3)
	catalogBudget := func() int64 { return hostBudget(tc.nodes[0], "n2") }
	wait := func(what string, want int64) {
		t.Helper()
		testutil.Eventually(t, 10*time.Second, what, func() bool { return catalogBudget() == want })
	}

	shift.set(50*MiB, nil)
	wait("n2's budget at 50 MiB in the catalog", 50*MiB)
	// A measurement that fails keeps the last budget.
	shift.set(-1, errors.New("statfs: input/output error"))
	from := shift.measured()
	testutil.Eventually(t, 10*time.Second, "three failed measurements", func() bool { return shift.measured() >= from+3 })
	if b := catalogBudget(); b != 50*MiB {
		t.Fatalf("budget %d after failed measurements, want 50 MiB kept", b)
	}
	shift.set(0, nil)
	wait("n2's budget at 0 in the catalog", 0)
	if fk, err := tc.fork(tc.nodes[1], fsm.ForkRequest{Source: "src", Name: "nope", Host: "n2"}); !errors.Is(err, fsm.ErrNoRoom) {
		t.Fatalf("fork to a full n2: %+v %v, want ErrNoRoom", fk, err)
	}
	shift.set(-1, nil)
	wait("n2's budget back at 100 MiB", 100*MiB)
	fk, err := tc.fork(tc.nodes[1], fsm.ForkRequest{Source: "src", Name: "yes", Host: "n2"})
	if err != nil {
		t.Fatal(err)
	}
	if done := tc.waitFork(tc.nodes[0], fk.ID, 20*time.Second); done.State != fsm.ForkReady {
		t.Fatalf("fork %+v", done)
	}
}

// TestDataDirFullTakesNoWork: a node whose data directory's disk is nearly
// full (its raft log cannot grow, so its catalog lags) advertises no
// capacity, so nothing new is placed there, and takes work again once it
// has room (found by a failure walkthrough: volumes placed on such a node
// sat in "creating" for minutes).
func TestDataDirFullTakesNoWork(t *testing.T) {
	var free, calls atomic.Int64
	var fail atomic.Bool
	free.Store(1 << 40)
	// ticks waits for n more measurements of the data directory.
	ticks := func(k int64) {
		from := calls.Load()
		testutil.Eventually(t, 10*time.Second, "measurements", func() bool { return calls.Load() >= from+k })
	}
	tc := newTestClusterWith(t, []int64{100 * MiB, 100 * MiB}, nil, func(c *Config) {
		if c.Name == "n2" {
			c.dataDirFree = func() (int64, error) {
				calls.Add(1)
				if fail.Load() {
					return 1 << 40, errors.New("statfs: input/output error") // a figure to ignore
				}
				return free.Load(), nil
			}
		}
	})
	budget := func() int64 { return hostBudget(tc.nodes[0], "n2") }
	free.Store(DataDirReserve - 1)
	testutil.Eventually(t, 10*time.Second, "n2 advertises no capacity", func() bool { return budget() == 0 })
	_, err := tc.nodes[0].Apply(context.Background(), fsm.CmdCreateVolume, &fsm.CreateVolumeCmd{
		Volume: fsm.Volume{ID: NewID("vol_"), Name: "v", Host: "n2", Size: 4 * MiB},
	})
	if !errors.Is(err, fsm.ErrNoRoom) {
		t.Fatalf("volume on n2 with its data disk full: %v, want ErrNoRoom", err)
	}
	// A failed measurement keeps the last state (a review found it
	// restored the full budget), and just over the reserve is not enough
	// to come back: no flapping around the line.
	fail.Store(true)
	ticks(3)
	time.Sleep(100 * time.Millisecond) // a changed budget would reach the catalog within a reconcile pass
	if b := budget(); b != 0 {
		t.Fatalf("statfs failing while the disk is full: budget %d, want 0 kept", b)
	}
	fail.Store(false)
	free.Store(DataDirReserve + 1)
	ticks(3)
	time.Sleep(100 * time.Millisecond)
	if b := budget(); b != 0 {
		t.Fatalf("just over the reserve: budget %d, want 0 until twice the reserve", b)
	}
	free.Store(1 << 40)
	testutil.Eventually(t, 10*time.Second, "n2's capacity back", func() bool { return budget() == 100*MiB })
}

// hostBudget is host's budget in via's catalog; -1 while via does not
// know the host yet (a follower's view can lag the leader's), so that no
// caller waiting for a budget of 0 mistakes "unknown" for it.
func hostBudget(via *Node, host string) int64 {
	b := int64(-1)
	via.View(func(s *fsm.State) {
		if h, ok := s.Host(host); ok {
			b = h.Budget
		}
	})
	return b
}

// thickFeatures passes a backend off as a thick LVM host's: its snapshots
// cost 20 % of the volume, at least 8 MiB, on a 4 MiB grid.
type thickFeatures struct{ cow.Backend }

func (thickFeatures) Features() cow.Features {
	return cow.Features{Backend: "lvm", SnapshotPermille: 200, SnapshotMin: 8 * MiB, SnapshotGrain: 4 * MiB}
}

// TestHostSnapshotCost: a host's snapshot cost figures travel from its
// backend through gossip into its catalog record, and a fork there holds
// what they come to while it runs (catalog version 4).
func TestHostSnapshotCost(t *testing.T) {
	tc := newTestClusterWith(t, []int64{200 * MiB, 200 * MiB}, nil, func(c *Config) {
		if c.Name == "n1" {
			c.Backend = thickFeatures{c.Backend}
		}
	})
	waitRecorded(t, tc)
	var h fsm.Host
	testutil.Eventually(t, 10*time.Second, "n1's record has its snapshot figures", func() bool {
		tc.leader().View(func(s *fsm.State) { h, _ = s.Host("n1") })
		return h.SnapshotPermille == 200 && h.SnapshotMin == 8*MiB && h.SnapshotGrain == 4*MiB
	})
	src := tc.createVolume(tc.leader(), "db", "", "n1", 60*MiB)
	fk, err := tc.fork(tc.leader(), fsm.ForkRequest{Source: src.ID, Name: "db-2", Via: fsm.PathCopy, RateLimit: MiB})
	if err != nil {
		t.Fatal(err)
	}
	if want := fsm.SnapshotCost(h, 60*MiB); fk.SnapshotReserve != want || want != 12*MiB {
		t.Fatalf("fork holds %d bytes for its snapshot, want %d (12 MiB)", fk.SnapshotReserve, want)
	}
	var used int64
	tc.leader().View(func(s *fsm.State) { used = s.Used("n1") })
	if used != 120*MiB+12*MiB {
		t.Fatalf("n1 uses %d while the fork runs, want the two volumes and the snapshot (132 MiB)", used)
	}
}
