package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/api"
	"github.com/forknode/forknode/internal/cow"
	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/keys"
	"github.com/forknode/forknode/internal/testutil"
	"github.com/hashicorp/go-hclog"
)

const MiB = 1 << 20

type testCluster struct {
	t     *testing.T
	key   *keys.Material
	nodes []*Node
	cfgs  []Config
}

func testLogger(t *testing.T, name string) hclog.Logger {
	level := hclog.Warn
	if os.Getenv("FORKNODE_TEST_LOG") != "" {
		level = hclog.Debug
	}
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: level, Output: os.Stderr})
}

// newTestCluster starts n in-process nodes on 127.0.0.1:0 with tight
// timings and file backends with the given budgets.
func newTestCluster(t *testing.T, budgets []int64, regions []string) *testCluster {
	t.Helper()
	return newTestClusterWith(t, budgets, regions, nil)
}

func newTestClusterWith(t *testing.T, budgets []int64, regions []string, mod func(*Config)) *testCluster {
	t.Helper()
	key, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	tc := &testCluster{t: t, key: key}
	for i, budget := range budgets {
		name := fmt.Sprintf("n%d", i+1)
		dir := t.TempDir()
		lg := testLogger(t, name)
		be, err := cow.NewFileBackend(filepath.Join(dir, "volumes"), budget, lg)
		if err != nil {
			t.Fatal(err)
		}
		region := "r1"
		if regions != nil {
			region = regions[i]
		}
		cfg := Config{
			Name: name, DataDir: filepath.Join(dir, "data"), Region: region,
			GossipAddr: "127.0.0.1:0", ClusterAddr: "127.0.0.1:0", APIAddr: "127.0.0.1:0",
			BootstrapExpect: len(budgets), Backend: be, Keys: key, Logger: lg, Fast: true,
		}
		if i > 0 {
			cfg.Join = []string{tc.nodes[0].GossipAddr()}
		}
		if mod != nil {
			mod(&cfg)
		}
		n, err := New(cfg)
		if err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
		tc.nodes = append(tc.nodes, n)
		tc.cfgs = append(tc.cfgs, cfg)
	}
	t.Cleanup(func() {
		for _, n := range tc.nodes {
			if n != nil {
				n.shutdown(false)
			}
		}
	})
	tc.waitReady(len(budgets))
	return tc
}

func (tc *testCluster) leader() *Node {
	for _, n := range tc.nodes {
		if n != nil && n.IsLeader() {
			return n
		}
	}
	return nil
}

func (tc *testCluster) follower() *Node {
	for _, n := range tc.nodes {
		if n != nil && !n.IsLeader() {
			return n
		}
	}
	return nil
}

// waitReady waits for a leader and for every host to be in the catalog.
func (tc *testCluster) waitReady(hosts int) {
	tc.t.Helper()
	testutil.Eventually(tc.t, 15*time.Second, "leader and hosts registered", func() bool {
		l := tc.leader()
		if l == nil {
			return false
		}
		cnt := 0
		l.View(func(s *fsm.State) {
			for _, h := range s.Hosts() {
				if h.Alive {
					cnt++
				}
			}
		})
		return cnt == hosts
	})
}

func (tc *testCluster) node(name string) *Node {
	for _, n := range tc.nodes {
		if n != nil && n.Name() == name {
			return n
		}
	}
	tc.t.Fatalf("no node %s", name)
	return nil
}

func (tc *testCluster) createVolume(via *Node, name, app, host string, size int64) fsm.Volume {
	tc.t.Helper()
	v, err := via.Apply(context.Background(), fsm.CmdCreateVolume, &fsm.CreateVolumeCmd{
		Volume: fsm.Volume{ID: NewID("vol_"), Name: name, App: app, Host: host, Size: size},
	})
	if err != nil {
		tc.t.Fatalf("create volume %s: %v", name, err)
	}
	vol := *(v.(*fsm.Volume))
	testutil.Eventually(tc.t, 10*time.Second, "volume "+name+" ready", func() bool {
		var st fsm.VolumeState
		via.View(func(s *fsm.State) {
			if x, ok := s.Volume(vol.ID); ok {
				st = x.State
			}
		})
		return st == fsm.VolumeReady
	})
	return vol
}

// fill writes a pattern with holes into a volume on its host.
func (tc *testCluster) fill(vol fsm.Volume, seed int64) {
	tc.t.Helper()
	n := tc.node(vol.Host)
	dev, err := n.Backend().Open(context.Background(), vol.ID, true)
	if err != nil {
		tc.t.Fatal(err)
	}
	defer dev.Close()
	rng := rand.New(rand.NewSource(seed))
	buf := make([]byte, MiB)
	for off := int64(0); off < vol.Size; off += MiB {
		if rng.Intn(3) == 0 {
			continue // leave a hole
		}
		rng.Read(buf[:MiB/2])
		if _, err := dev.WriteAt(buf, off); err != nil {
			tc.t.Fatal(err)
		}
	}
	if err := dev.Sync(); err != nil {
		tc.t.Fatal(err)
	}
}

func (tc *testCluster) read(host, id string) []byte {
	tc.t.Helper()
	dev, err := tc.node(host).Backend().Open(context.Background(), id, false)
	if err != nil {
		tc.t.Fatal(err)
	}
	defer dev.Close()
	b := make([]byte, dev.Size())
	if _, err := dev.ReadAt(b, 0); err != nil {
		tc.t.Fatal(err)
	}
	return b
}

func (tc *testCluster) fork(via *Node, req fsm.ForkRequest) (fsm.Fork, error) {
	v, err := via.Apply(context.Background(), fsm.CmdCreateFork, &fsm.CreateForkCmd{
		ForkID: NewID("fork_"), TargetVolumeID: NewID("vol_"), Request: req,
	})
	if err != nil {
		return fsm.Fork{}, err
	}
	return *(v.(*fsm.Fork)), nil
}

func (tc *testCluster) waitFork(via *Node, id string, timeout time.Duration) fsm.Fork {
	tc.t.Helper()
	var f fsm.Fork
	testutil.Eventually(tc.t, timeout, "fork "+id+" finished", func() bool {
		via.View(func(s *fsm.State) { f, _ = s.Fork(id) })
		return f.State == fsm.ForkReady || f.State == fsm.ForkFailed
	})
	return f
}

// snapshotCost is what a fork's snapshot of size holds on a test host:
// the size itself where t's temporary directories have no reflink (the
// catalog reserves a full copy), else nothing.
func snapshotCost(t *testing.T, size int64) int64 {
	t.Helper()
	b, err := cow.NewFileBackend(t.TempDir(), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b.Features().Clone {
		return 0
	}
	return size
}

func TestClusterForkPaths(t *testing.T) {
	// n1 has room for one more 16 MiB volume only (and its snapshot, where
	// a snapshot is a copy), so its second fork streams.
	tc := newTestCluster(t, []int64{40*MiB + snapshotCost(t, 16*MiB), 200 * MiB, 200 * MiB}, nil)
	f := tc.follower()
	src := tc.createVolume(f, "pg", "app", "n1", 16*MiB)
	tc.fill(src, 1)
	want := tc.read("n1", src.ID)

	// Local fork through a follower: clone on XFS/btrfs, else copy.
	fk, err := tc.fork(f, fsm.ForkRequest{Source: "pg", Name: "pg-a"})
	if err != nil {
		t.Fatal(err)
	}
	fk = tc.waitFork(f, fk.ID, 20*time.Second)
	if fk.State != fsm.ForkReady {
		t.Fatalf("local fork: %s: %s", fk.State, fk.Error)
	}
	if fk.TargetHost != "n1" || (fk.Path != fsm.PathClone && fk.Path != fsm.PathCopy) {
		t.Fatalf("local fork planned as %s on %s", fk.Path, fk.TargetHost)
	}
	if got := tc.read("n1", fk.TargetVolume); !bytes.Equal(got, want) {
		t.Fatal("local fork differs from source")
	}

	// n1 is now full: the next fork streams to another host.
	fk2, err := tc.fork(tc.nodes[2], fsm.ForkRequest{Source: src.ID, Name: "pg-b"})
	if err != nil {
		t.Fatal(err)
	}
	if fk2.Path != fsm.PathStream || fk2.TargetHost == "n1" {
		t.Fatalf("expected a stream to another host, got %s to %s", fk2.Path, fk2.TargetHost)
	}
	fk2 = tc.waitFork(f, fk2.ID, 30*time.Second)
	if fk2.State != fsm.ForkReady {
		t.Fatalf("stream fork: %s: %s", fk2.State, fk2.Error)
	}
	if got := tc.read(fk2.TargetHost, fk2.TargetVolume); !bytes.Equal(got, want) {
		t.Fatal("streamed fork differs from source")
	}
	// The source's stream snapshot is released once the fork is done.
	testutil.Eventually(t, 5*time.Second, "stream snapshot released", func() bool {
		vs, _ := tc.node("n1").Backend().List(context.Background())
		for _, v := range vs {
			if v.Kind == cow.KindSnapshot {
				return false
			}
		}
		return true
	})

	// Unknown source and duplicate names are domain errors through any node.
	if _, err := tc.fork(f, fsm.ForkRequest{Source: "nope", Name: "x"}); !errors.Is(err, fsm.ErrNotFound) {
		t.Fatalf("unknown source: %v", err)
	}
	if _, err := tc.fork(f, fsm.ForkRequest{Source: "pg", Name: "pg-a"}); !errors.Is(err, fsm.ErrExists) {
		t.Fatalf("duplicate name: %v", err)
	}
}

func TestClusterCapacityRace(t *testing.T) {
	// n2 has room for exactly 5 forks of 4 MiB.
	tc := newTestCluster(t, []int64{100 * MiB, 20 * MiB, 100 * MiB}, nil)
	src := tc.createVolume(tc.nodes[0], "src", "app", "n1", 4*MiB)
	tc.fill(src, 2)
	var wg sync.WaitGroup
	var mu sync.Mutex
	placed, refused := 0, 0
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			via := tc.nodes[i%3]
			fk, err := tc.fork(via, fsm.ForkRequest{Source: "src", Name: fmt.Sprintf("race-%d", i), Host: "n2"})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil && fk.TargetHost == "n2":
				placed++
			case errors.Is(err, fsm.ErrNoRoom):
				refused++
			default:
				t.Errorf("fork %d: unexpected %v (%+v)", i, err, fk)
			}
		}(i)
	}
	wg.Wait()
	if placed != 5 || refused != 15 {
		t.Fatalf("placed %d, refused %d; want 5 and 15", placed, refused)
	}
	tc.nodes[0].View(func(s *fsm.State) {
		if used := s.Used("n2"); used > 20*MiB {
			t.Fatalf("budget exceeded: used %d", used)
		}
	})
}

func TestClusterLeaderFailover(t *testing.T) {
	tc := newTestCluster(t, []int64{100 * MiB, 100 * MiB, 100 * MiB}, nil)
	old := tc.leader()
	src := tc.createVolume(old, "db", "app", tc.follower().Name(), 4*MiB)
	idx := -1
	for i, n := range tc.nodes {
		if n == old {
			idx = i
		}
	}
	old.shutdown(false) // a crash: no graceful leave
	tc.nodes[idx] = nil
	testutil.Eventually(t, 10*time.Second, "new leader", func() bool { return tc.leader() != nil })
	fk, err := tc.fork(tc.leader(), fsm.ForkRequest{Source: src.ID, Name: "db-2", Via: fsm.PathCopy})
	if err != nil {
		t.Fatal(err)
	}
	if fk = tc.waitFork(tc.leader(), fk.ID, 20*time.Second); fk.State != fsm.ForkReady {
		t.Fatalf("fork after failover: %s %s", fk.State, fk.Error)
	}

	// Restart the old leader on its data dir: the catalog comes back from
	// raft-boltdb and it rejoins.
	cfg := tc.cfgs[idx]
	cfg.GossipAddr = "127.0.0.1:0"
	cfg.ClusterAddr = "127.0.0.1:0"
	cfg.Join = []string{tc.leader().GossipAddr()}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tc.nodes[idx] = n
	testutil.Eventually(t, 15*time.Second, "restarted node catches up", func() bool {
		ok := false
		n.View(func(s *fsm.State) { _, ok = s.VolumeByName("db-2") })
		return ok
	})
}

func TestClusterRemoveDeadMember(t *testing.T) {
	tc := newTestCluster(t, []int64{100 * MiB, 100 * MiB, 100 * MiB}, nil)
	victim := tc.follower()
	name := victim.Name()
	via := tc.leader()
	// An alive node is refused: it should leave by stopping.
	if err := via.RemoveMember(context.Background(), name); !errors.Is(err, fsm.ErrConflict) {
		t.Fatalf("removing an alive node: %v", err)
	}
	for i, n := range tc.nodes {
		if n == victim {
			n.shutdown(false)
			tc.nodes[i] = nil
		}
	}
	testutil.Eventually(t, 10*time.Second, "victim seen dead", func() bool {
		for _, m := range via.Status().Members {
			if m.Name == name {
				return m.Status == "dead"
			}
		}
		return false
	})
	// Through a follower, to exercise forwarding.
	var other *Node
	for _, n := range tc.nodes {
		if n != nil && n != via {
			other = n
		}
	}
	if err := other.RemoveMember(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "host gone from catalog and raft", func() bool {
		ok := false
		via.View(func(s *fsm.State) { _, ok = s.Host(name) })
		cf := via.raft.GetConfiguration()
		return !ok && cf.Error() == nil && len(cf.Configuration().Servers) == 2
	})
	// A second removal finds nothing left to remove, or only the gossip
	// record of the dead node: either way not a failure to retry.
	if err := via.RemoveMember(context.Background(), name); err != nil && !errors.Is(err, fsm.ErrNotFound) {
		t.Fatalf("second removal: %v", err)
	}
	// A name no node ever had (a typo) is not found, not "removed", and
	// the message names the nodes there are (the removed one may linger
	// in gossip).
	err := other.RemoveMember(context.Background(), "no-such-node")
	if !errors.Is(err, fsm.ErrNotFound) {
		t.Fatalf("removing an unknown node: %v", err)
	}
	_, known, _ := strings.Cut(err.Error(), "nodes: ")
	for _, n := range []*Node{via, other} {
		if !strings.Contains(known, n.Name()) {
			t.Errorf("removing an unknown node: %q does not list %s", err, n.Name())
		}
	}
}

// After a crash the executor removes a fork's leftover volume and stray
// snapshots, and keeps a volume the catalog never heard of (a lost catalog
// must never delete data).
func TestClusterRestartReconciles(t *testing.T) {
	tc := newTestCluster(t, []int64{100 * MiB, 100 * MiB, 100 * MiB}, nil)
	victim := tc.follower()
	idx := -1
	for i, n := range tc.nodes {
		if n == victim {
			idx = i
		}
	}
	name := victim.Name()
	keep := tc.createVolume(tc.leader(), "keep", "app", name, 4*MiB)
	fk, err := tc.fork(tc.leader(), fsm.ForkRequest{Source: keep.ID, Name: "keep-fork", Via: fsm.PathCopy})
	if err != nil {
		t.Fatal(err)
	}
	if fk = tc.waitFork(tc.leader(), fk.ID, 20*time.Second); fk.State != fsm.ForkReady {
		t.Fatalf("fork: %s %s", fk.State, fk.Error)
	}
	be := victim.Backend()
	victim.shutdown(false)
	tc.nodes[idx] = nil

	ctx := context.Background()
	// A leftover of a known fork (e.g. a target the catalog dropped while
	// the host was down), a volume nobody knows, and a stray snapshot.
	if _, err := be.Create(ctx, cow.CreateSpec{ID: "vol_0000000leftover", Name: "leftover", Size: 4 * MiB, Owner: fk.ID}); err != nil {
		t.Fatal(err)
	}
	if _, err := be.Create(ctx, cow.CreateSpec{ID: "vol_00000000unknown", Name: "unknown", Size: 4 * MiB, Owner: "forknode"}); err != nil {
		t.Fatal(err)
	}
	if _, err := be.Snapshot(ctx, keep.ID, "snap_vol_0000000gone"); err != nil {
		t.Fatal(err)
	}

	cfg := tc.cfgs[idx]
	cfg.Join = []string{tc.leader().GossipAddr()}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tc.nodes[idx] = n
	want := map[string]bool{keep.ID: true, fk.TargetVolume: true, "vol_00000000unknown": true}
	testutil.Eventually(t, 15*time.Second, "leftovers removed, known and unknown volumes kept", func() bool {
		vs, err := be.List(ctx)
		if err != nil {
			return false
		}
		ids := map[string]bool{}
		for _, v := range vs {
			ids[v.ID] = true
		}
		return reflect.DeepEqual(ids, want)
	})
}

// The source dies mid-stream: the fork fails within a bound, the target's
// partial volume is removed, and the source drops its snapshot on restart.
func TestClusterStreamSourceDies(t *testing.T) {
	// n1 has room for the stream's snapshot of its 32 MiB volume.
	tc := newTestClusterWith(t, []int64{40*MiB + snapshotCost(t, 32*MiB), 200 * MiB, 200 * MiB}, nil, func(c *Config) {
		c.RateLimit = 4 * MiB
		c.StreamCodec = "none"
	})
	src := tc.createVolume(tc.leader(), "big", "app", "n1", 32*MiB)
	tc.fill(src, 3)
	fk, err := tc.fork(tc.leader(), fsm.ForkRequest{Source: src.ID, Name: "big-2", Host: "n2"})
	if err != nil {
		t.Fatal(err)
	}
	n2 := tc.node("n2")
	testutil.Eventually(t, 10*time.Second, "stream under way", func() bool {
		var f fsm.Fork
		n2.View(func(s *fsm.State) { f, _ = s.Fork(fk.ID) })
		return f.BytesDone > 0 && f.BytesDone < f.BytesTotal
	})
	n1 := tc.node("n1")
	be1 := n1.Backend()
	n1.shutdown(false)
	tc.nodes[0] = nil
	start := time.Now()
	f := tc.waitFork(n2, fk.ID, 40*time.Second)
	if f.State != fsm.ForkFailed {
		t.Fatalf("fork %s after the source died, want failed", f.State)
	}
	t.Logf("failed after %s: %s", time.Since(start).Round(time.Millisecond), f.Error)
	testutil.Eventually(t, 10*time.Second, "partial target removed", func() bool {
		_, err := n2.Backend().Get(context.Background(), fk.TargetVolume)
		return errors.Is(err, cow.ErrNotFound)
	})
	// The snapshot is still on n1's disk until it restarts and reconciles.
	if _, err := be1.Get(context.Background(), "snap_"+fk.TargetVolume); err != nil {
		t.Fatalf("expected the stream snapshot to survive the crash: %v", err)
	}
	cfg := tc.cfgs[0]
	cfg.Join = []string{n2.GossipAddr()}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tc.nodes[0] = n
	testutil.Eventually(t, 15*time.Second, "snapshot released after restart", func() bool {
		_, err := be1.Get(context.Background(), "snap_"+fk.TargetVolume)
		return errors.Is(err, cow.ErrNotFound)
	})
}

// TestClusterLeaderFailsForksOfDeadHosts: with pullers that would wait for
// minutes, it is the leader that fails a fork whose source or target host
// died, within DeadHostTimeout (3 s here) and gossip's failure detection;
// the surviving side then drops its part (the target's partial volume, the
// source's snapshot).
func TestClusterLeaderFailsForksOfDeadHosts(t *testing.T) {
	for _, victim := range []string{"n1", "n2"} { // the source, the target
		t.Run("dead "+victim, func(t *testing.T) {
			tc := newTestClusterWith(t, []int64{40*MiB + snapshotCost(t, 32*MiB), 200 * MiB, 200 * MiB}, nil, func(c *Config) {
				c.RateLimit = 2 * MiB
				c.StreamCodec = "none"
				c.streamPatience = 5 * time.Minute
			})
			src := tc.createVolume(tc.leader(), "big", "app", "n1", 32*MiB)
			tc.fill(src, 3)
			fk, err := tc.fork(tc.leader(), fsm.ForkRequest{Source: src.ID, Name: "big-2", Host: "n2"})
			if err != nil {
				t.Fatal(err)
			}
			testutil.Eventually(t, 10*time.Second, "stream under way", func() bool {
				var f fsm.Fork
				tc.node("n2").View(func(s *fsm.State) { f, _ = s.Fork(fk.ID) })
				return f.BytesDone > 0 && f.BytesDone < f.BytesTotal
			})
			idx := map[string]int{"n1": 0, "n2": 1}[victim]
			dead := tc.nodes[idx]
			be := dead.Backend()
			dead.shutdown(false)
			tc.nodes[idx] = nil
			survivor := tc.node(map[string]string{"n1": "n2", "n2": "n1"}[victim])
			start := time.Now()
			f := tc.waitFork(survivor, fk.ID, 15*time.Second)
			took := time.Since(start)
			if f.State != fsm.ForkFailed || !strings.Contains(f.Error, "host "+victim+" unreachable") {
				t.Fatalf("fork %s (%q) after %s died, want failed as unreachable", f.State, f.Error, victim)
			}
			t.Logf("failed after %s: %s", took.Round(time.Millisecond), f.Error)
			if victim == "n1" {
				testutil.Eventually(t, 10*time.Second, "partial target removed from n2", func() bool {
					return !backendHas(survivor, func(v cow.Volume) bool { return v.ID == fk.TargetVolume })
				})
			} else {
				testutil.Eventually(t, 10*time.Second, "snapshot released on n1", func() bool {
					return !backendHas(survivor, func(v cow.Volume) bool { return v.Kind == cow.KindSnapshot })
				})
				// The partial target stays on the dead host's disk until it
				// comes back and reconciles.
				cfg := tc.cfgs[idx]
				cfg.Join = []string{survivor.GossipAddr()}
				n, err := New(cfg)
				if err != nil {
					t.Fatal(err)
				}
				tc.nodes[idx] = n
				testutil.Eventually(t, 15*time.Second, "partial target removed after n2's restart", func() bool {
					_, err := be.Get(context.Background(), fk.TargetVolume)
					return errors.Is(err, cow.ErrNotFound)
				})
			}
		})
	}
}

// An operator cancels a slow fork mid-way through a follower's API: the
// fork ends failed, the target host removes the partial volume, the source
// host releases its snapshot, and the source volume is untouched. Both
// paths that take a snapshot: a stream to another host, a local copy.
// backendHas reports whether n's backend lists a volume matching match
// (true when it cannot list: "not gone yet").
func backendHas(n *Node, match func(cow.Volume) bool) bool {
	vols, err := n.Backend().List(context.Background())
	if err != nil {
		return true
	}
	for _, v := range vols {
		if match(v) {
			return true
		}
	}
	return false
}

func TestClusterCancelFork(t *testing.T) {
	for _, tt := range []struct {
		via    fsm.Path
		target string
	}{
		{fsm.PathStream, "n2"},
		{fsm.PathCopy, "n1"},
	} {
		t.Run(string(tt.via), func(t *testing.T) { testCancelFork(t, tt.via, tt.target) })
	}
}

func testCancelFork(t *testing.T, via fsm.Path, target string) {
	tc := newTestClusterWith(t, []int64{200 * MiB, 200 * MiB}, nil, func(c *Config) {
		c.RateLimit = 4 * MiB // 48 MiB takes several seconds
		c.StreamCodec = "none"
	})
	src := tc.createVolume(tc.leader(), "big", "app", "n1", 48*MiB)
	tc.fill(src, 5)
	before := tc.read("n1", src.ID)
	fk, err := tc.fork(tc.leader(), fsm.ForkRequest{Source: src.ID, Name: "big-2", Host: target, Via: via})
	if err != nil {
		t.Fatal(err)
	}
	if fk.Path != via || fk.TargetHost != target {
		t.Fatalf("planned %s to %s, want %s to %s", fk.Path, fk.TargetHost, via, target)
	}
	n1, nt := tc.node("n1"), tc.node(target)
	testutil.Eventually(t, 10*time.Second, "fork under way", func() bool {
		var f fsm.Fork
		nt.View(func(s *fsm.State) { f, _ = s.Fork(fk.ID) })
		return f.BytesDone > 0 && f.BytesDone < f.BytesTotal
	})
	if _, err := n1.Backend().Get(context.Background(), "snap_"+fk.TargetVolume); err != nil {
		t.Fatalf("fork snapshot on n1 before the cancel: %v", err)
	}
	api1 := tc.follower()
	c, err := api.NewClient(api1.APIAddr(), api1.APIToken())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	got, err := c.CancelFork(ctx, fk.ID)
	if err != nil {
		t.Fatalf("cancel through %s: %v", api1.Name(), err)
	}
	if got.State != fsm.ForkFailed || got.Error != api.ForkCancelledError || got.BytesDone >= got.BytesTotal || got.Already {
		t.Fatalf("cancelled fork: %+v", got)
	}
	t.Logf("cancelled at %.0f%% through %s", got.Percent, api1.Name())
	// At once, through the same follower, whose catalog may not have
	// applied the first cancel yet: it answers that it did nothing.
	if again, err := c.CancelFork(ctx, fk.ID); err != nil || again.State != fsm.ForkFailed || again.FinishedAt != got.FinishedAt || !again.Already {
		t.Fatalf("second cancel: %v %+v", err, again)
	}

	testutil.Eventually(t, 20*time.Second, "target volume gone from the catalog and from "+target, func() bool {
		var inCatalog bool
		nt.View(func(s *fsm.State) { _, inCatalog = s.Volume(fk.TargetVolume) })
		return !inCatalog && !backendHas(nt, func(v cow.Volume) bool { return v.ID == fk.TargetVolume })
	})
	testutil.Eventually(t, 20*time.Second, "snapshot released on n1", func() bool {
		return !backendHas(n1, func(v cow.Volume) bool { return v.Kind == cow.KindSnapshot })
	})
	// The executor's own end of the cancelled task must not rewrite the
	// operator's verdict.
	f, err := c.Fork(ctx, fk.ID)
	if err != nil || f.State != fsm.ForkFailed || f.Error != api.ForkCancelledError {
		t.Fatalf("fork after cleanup: %v %+v", err, f)
	}
	var sv fsm.Volume
	n1.View(func(s *fsm.State) { sv, _ = s.Volume(src.ID) })
	if sv.State != fsm.VolumeReady {
		t.Fatalf("source volume is %s after the cancel", sv.State)
	}
	if !bytes.Equal(tc.read("n1", src.ID), before) {
		t.Fatal("source volume changed")
	}
}

// A fork's own rate limit holds on both paths that move bytes, on nodes
// that have no limit of their own.
func TestClusterForkRateLimit(t *testing.T) {
	const rate = 4 * MiB
	tc := newTestClusterWith(t, []int64{200 * MiB, 200 * MiB}, nil, func(c *Config) {
		c.RateLimit = 0
		c.StreamCodec = "none"
	})
	src := tc.createVolume(tc.leader(), "db", "app", "n1", 12*MiB)
	tc.fill(src, 7)
	content := tc.read("n1", src.ID)
	var data int64 // holes are skipped, not paced
	for off := 0; off < len(content); off += MiB {
		if !bytes.Equal(content[off:off+MiB], make([]byte, MiB)) {
			data += MiB
		}
	}
	for _, tt := range []struct {
		via    fsm.Path
		target string
	}{
		{fsm.PathStream, "n2"},
		{fsm.PathCopy, "n1"},
	} {
		t.Run(string(tt.via), func(t *testing.T) {
			fk, err := tc.fork(tc.leader(), fsm.ForkRequest{Source: src.ID, Name: "rl-" + string(tt.via), Host: tt.target, Via: tt.via, RateLimit: rate})
			if err != nil {
				t.Fatal(err)
			}
			if fk.Path != tt.via || fk.RateLimit != rate {
				t.Fatalf("planned %+v", fk)
			}
			f := tc.waitFork(tc.leader(), fk.ID, 30*time.Second)
			if f.State != fsm.ForkReady {
				t.Fatalf("fork %s: %s", f.State, f.Error)
			}
			// One burst (at most a chunk plus the window) may go unpaced.
			took := time.Duration(f.FinishedAt - f.CreatedAt)
			if want := time.Duration(float64(data-MiB) / rate * float64(time.Second) * 0.9); took < want {
				t.Fatalf("%d MiB of data at %d MiB/s took %s, want at least %s", data/MiB, rate/MiB, took, want)
			}
			if !bytes.Equal(tc.read(tt.target, f.TargetVolume), content) {
				t.Fatal("fork differs from its source")
			}
		})
	}
}

func TestAdvertisable(t *testing.T) {
	cases := []struct {
		bound, adv, want string
		err              bool
	}{
		{"127.0.0.1:7947", "", "127.0.0.1:7947", false},
		{"10.0.0.5:7947", "192.168.1.1", "10.0.0.5:7947", false},
		{"0.0.0.0:7947", "10.1.2.3", "10.1.2.3:7947", false},
		{"[::]:7948", "10.1.2.3", "10.1.2.3:7948", false},
		{"0.0.0.0:7947", "not-an-ip", "", true},
		{"nonsense", "", "", true},
	}
	for _, c := range cases {
		got, err := advertisable(c.bound, c.adv)
		if (err != nil) != c.err || got != c.want {
			t.Errorf("advertisable(%q, %q) = %q, %v; want %q (err %v)", c.bound, c.adv, got, err, c.want, c.err)
		}
	}
}

// Volume operations run on the volume's host, reached over the mTLS port.
func TestClusterVolumeOpOnOwner(t *testing.T) {
	tc := newTestCluster(t, []int64{100 * MiB, 100 * MiB}, nil)
	vol := tc.createVolume(tc.nodes[0], "att", "", "n1", 4*MiB)
	ctx := context.Background()
	via := tc.node("n2")
	if _, err := via.VolumeOp(ctx, "n1", VolumeCheckRemove, vol.ID); err != nil {
		t.Fatalf("check remove of a detached volume: %v", err)
	}
	if _, err := via.VolumeOp(ctx, "n1", "explode", vol.ID); !errors.Is(err, fsm.ErrInvalid) {
		t.Fatalf("unknown op: %v", err)
	}
	if _, err := via.VolumeOp(ctx, "n1", VolumeDetach, "vol_0000000missing"); !errors.Is(err, cow.ErrNotFound) {
		t.Fatalf("detach of a missing volume: %v", err)
	}
	if _, err := via.VolumeOp(ctx, "nope", VolumeAttach, vol.ID); !errors.Is(err, fsm.ErrNotFound) {
		t.Fatalf("unknown host: %v", err)
	}
	if os.Geteuid() != 0 {
		return // attaching needs loop devices
	}
	dev, err := via.VolumeOp(ctx, "n1", VolumeAttach, vol.ID)
	if err != nil || dev == "" {
		t.Fatalf("attach through n2: %q %v", dev, err)
	}
	t.Cleanup(func() { tc.node("n1").Backend().Detach(context.Background(), vol.ID) })
	if _, err := via.VolumeOp(ctx, "n1", VolumeCheckRemove, vol.ID); !errors.Is(err, cow.ErrBusy) {
		t.Fatalf("check remove of an attached volume: %v", err)
	}
	if _, err := via.VolumeOp(ctx, "n1", VolumeDetach, vol.ID); err != nil {
		t.Fatalf("detach through n2: %v", err)
	}
}

// After every node restarts, a follower's read barrier still completes:
// the new leader's first entries (raft's own no-op and configuration) never
// reach the FSM, so a barrier on the commit index would wait forever, and
// the executors would sit idle until some unrelated write.
func TestClusterFullRestartBarrier(t *testing.T) {
	tc := newTestCluster(t, []int64{100 * MiB, 100 * MiB, 100 * MiB}, nil)
	vol := tc.createVolume(tc.leader(), "v", "", "n2", 4*MiB)
	// Restart on the same addresses, as hosts do.
	cfgs := make([]Config, len(tc.nodes))
	for i, n := range tc.nodes {
		cfgs[i] = tc.cfgs[i]
		cfgs[i].GossipAddr, cfgs[i].ClusterAddr, cfgs[i].APIAddr = n.GossipAddr(), n.ClusterAddr(), n.APIAddr()
	}
	for i, n := range tc.nodes {
		n.shutdown(false)
		tc.nodes[i] = nil
	}
	for i := range cfgs {
		cfg := cfgs[i]
		cfg.Join = nil
		for j := range cfgs {
			if j != i {
				cfg.Join = append(cfg.Join, cfgs[j].GossipAddr)
			}
		}
		n, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		tc.nodes[i] = n
	}
	testutil.Eventually(t, 20*time.Second, "leader after full restart", func() bool { return tc.leader() != nil })
	for _, n := range tc.nodes {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := n.Barrier(ctx)
		cancel()
		if err != nil {
			t.Fatalf("barrier on %s: %v", n.Name(), err)
		}
		ok := false
		n.View(func(s *fsm.State) { _, ok = s.Volume(vol.ID) })
		if !ok {
			t.Fatalf("%s: catalog lacks %s after the barrier", n.Name(), vol.ID)
		}
	}
	// The executors act without any further write: a delete is carried out.
	if _, err := tc.leader().Apply(context.Background(), fsm.CmdSetVolumeState, &fsm.SetVolumeStateCmd{ID: vol.ID, State: fsm.VolumeDeleting}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "volume removed by its host", func() bool {
		ok := true
		tc.leader().View(func(s *fsm.State) { _, ok = s.Volume(vol.ID) })
		return !ok
	})
}

// A node that stops gracefully leaves: the leader removes it from raft, so
// the quorum shrinks with it. (A crashed node stays a voter.)
// A stopping node asks the leader to take it out of raft (the "leave"
// forward op), for itself only. The leader acts at once, whatever gossip
// still says, and reconcile does not add it back while gossip shows it
// alive with its old metadata.
func TestClusterLeaveRequest(t *testing.T) {
	tc := newTestCluster(t, []int64{100 * MiB, 100 * MiB, 100 * MiB}, nil)
	l := tc.leader()
	var followers []*Node
	for _, n := range tc.nodes {
		if n != l {
			followers = append(followers, n)
		}
	}
	leaver, other := followers[0], followers[1]
	servers := func() map[string]bool {
		cf := l.raft.GetConfiguration()
		if cf.Error() != nil {
			return nil
		}
		out := map[string]bool{}
		for _, s := range cf.Configuration().Servers {
			out[string(s.ID)] = true
		}
		return out
	}
	testutil.Eventually(t, 10*time.Second, "three raft servers", func() bool { return len(servers()) == 3 })

	// A node cannot make another leave.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := leaver.forwardCall(ctx, fwdRequest{Op: "leave", ID: other.Name()})
	if err != nil || !strings.Contains(resp.Error, "only leave for itself") {
		t.Fatalf("leave for another node: %v %+v", err, resp)
	}
	if s := servers(); !s[other.Name()] {
		t.Fatalf("%s removed by another node's request: %v", other.Name(), s)
	}

	if err := leaver.leaveRaft(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	// l applies the committed removal to its configuration a moment later
	// if leadership moved under load meanwhile.
	testutil.Eventually(t, 10*time.Second, leaver.Name()+" out of l's raft configuration", func() bool {
		s := servers()
		return s != nil && !s[leaver.Name()] && len(s) == 2
	})
	// Gossip still has it alive without a leave intent in its metadata.
	for _, m := range l.gossip.snapshot() {
		if m.name == leaver.Name() && (m.state != "alive" || m.meta.Leaving) {
			t.Fatalf("test premise: leaver in gossip is %s, leaving %v", m.state, m.meta.Leaving)
		}
	}
	for range 3 {
		l.reconcile(map[string]time.Time{})
	}
	if s := servers(); s[leaver.Name()] {
		t.Fatalf("reconcile re-added %s: %v", leaver.Name(), s)
	}
}

func TestClusterGracefulLeaveRemovesServer(t *testing.T) {
	tc := newTestCluster(t, []int64{100 * MiB, 100 * MiB, 100 * MiB}, nil)
	f := tc.follower()
	name := f.Name()
	for i, n := range tc.nodes {
		if n == f {
			if err := n.Close(); err != nil {
				t.Logf("close: %v", err)
			}
			tc.nodes[i] = nil
		}
	}
	testutil.Eventually(t, 10*time.Second, "leaver removed from raft", func() bool {
		l := tc.leader()
		if l == nil {
			return false
		}
		cf := l.raft.GetConfiguration()
		if cf.Error() != nil {
			return false
		}
		for _, s := range cf.Configuration().Servers {
			if string(s.ID) == name {
				return false
			}
		}
		return len(cf.Configuration().Servers) == 2
	})
}

// A second node on a running node's data dir fails at once with a clear
// error (bolt's own lock would block it for ever); once the first stops,
// the dir is free again.
func TestDataDirLocked(t *testing.T) {
	tc := newTestCluster(t, []int64{100 * MiB}, nil)
	cfg := tc.cfgs[0]
	cfg.GossipAddr, cfg.ClusterAddr, cfg.APIAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	start := time.Now()
	_, err := New(cfg)
	if !errors.Is(err, ErrDataDirInUse) || !strings.Contains(err.Error(), fmt.Sprintf("by pid %d", os.Getpid())) {
		t.Fatalf("second node on the same dir: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("refusal took %v", d) // not a speed goal: it must not wait on bolt's lock
	}
	tc.nodes[0].shutdown(false)
	tc.nodes[0] = nil
	// The agent's way: lock first, hand the lock to New, which releases it
	// at shutdown.
	lock, err := LockDataDir(cfg.DataDir)
	if err != nil {
		t.Fatalf("lock the freed dir: %v", err)
	}
	if _, err := LockDataDir(cfg.DataDir); !errors.Is(err, ErrDataDirInUse) {
		t.Fatalf("second lock: %v", err)
	}
	cfg.DataDirLock = lock
	n, err := New(cfg)
	if err != nil {
		t.Fatalf("restart on the freed dir: %v", err)
	}
	n.shutdown(false)
	lock, err = LockDataDir(cfg.DataDir)
	if err != nil {
		t.Fatalf("lock after shutdown: %v", err)
	}
	lock.Release()
}
