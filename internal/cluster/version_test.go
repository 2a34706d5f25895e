package cluster

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/cow"
	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/testutil"
)

// TestClusterCatalogVersion: the catalog's rules follow the oldest raft
// server through a rolling upgrade, and a member older than the catalog
// is kept out of raft and of the hosts until it is upgraded.
func TestClusterCatalogVersion(t *testing.T) {
	versions := map[string]uint32{"n1": 2, "n2": 1, "n3": 2}
	tc := newTestClusterWith(t, []int64{100 * MiB, 100 * MiB, 100 * MiB}, nil, func(c *Config) {
		c.catalogVersion = versions[c.Name]
	})
	recorded := func() uint32 {
		var v uint32
		tc.leader().View(func(s *fsm.State) { v = s.RecordedCatalogVersion() })
		return v
	}
	testutil.Eventually(t, 10*time.Second, "catalog version 1, n2's", func() bool { return tc.leader() != nil && recorded() == 1 })

	// Upgrade n2 (a restart with version 2): the catalog follows.
	idx := 1
	tc.nodes[idx].shutdown(false)
	tc.nodes[idx] = nil
	cfg := tc.cfgs[idx]
	cfg.catalogVersion = 2
	cfg.Join = []string{tc.nodes[0].GossipAddr()}
	n2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tc.nodes[idx] = n2
	testutil.Eventually(t, 15*time.Second, "catalog version 2 after the upgrade", func() bool {
		return tc.leader() != nil && recorded() == 2
	})
	testutil.Eventually(t, 10*time.Second, "n2 reports catalog version 2", func() bool {
		st := n2.Status()
		return st.CatalogVersion == 2 && st.NodeCatalogVersion == 2
	})

	// A new member on version 1 stays out.
	dir := t.TempDir()
	lg := testLogger(t, "n4")
	be, err := cow.NewFileBackend(filepath.Join(dir, "volumes"), 100*MiB, lg)
	if err != nil {
		t.Fatal(err)
	}
	cfg4 := tc.cfgs[0]
	cfg4.Name, cfg4.DataDir, cfg4.Backend, cfg4.Logger = "n4", filepath.Join(dir, "data"), be, lg
	cfg4.GossipAddr, cfg4.ClusterAddr, cfg4.APIAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg4.Join = []string{tc.nodes[0].GossipAddr()}
	cfg4.catalogVersion = 1
	n4, err := New(cfg4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n4.shutdown(false) })
	var leader *Node
	testutil.Eventually(t, 10*time.Second, "the leader sees n4 on version 1", func() bool {
		leader = tc.leader()
		if leader == nil {
			return false
		}
		for _, m := range leader.Status().Members {
			if m.Name == "n4" && m.Status == "alive" && m.CatalogVersion == 1 {
				return true
			}
		}
		return false
	})
	from := leader.reconciles.Load()
	testutil.Eventually(t, 10*time.Second, "three reconcile passes", func() bool { return leader.reconciles.Load() >= from+3 })
	inRaft := func(l *Node, name string) (voter, host bool) {
		for _, m := range l.Status().Members {
			if m.Name == name {
				voter = m.Voter
			}
		}
		l.View(func(s *fsm.State) { _, host = s.Host(name) })
		return voter, host
	}
	if voter, host := inRaft(leader, "n4"); voter || host {
		t.Fatalf("n4 on catalog version 1 was added: voter %v, host %v", voter, host)
	}
	if recorded() != 2 {
		t.Fatalf("catalog version went to %d", recorded())
	}
}

// TestClusterOwnAddressChange: a node restarted on another cluster port
// that leads (here the only server) updates its own address in raft. It
// used to remove itself first, which shut its raft down for good.
func TestClusterOwnAddressChange(t *testing.T) {
	tc := newTestCluster(t, []int64{100 * MiB}, nil)
	old := tc.nodes[0].ClusterAddr()
	tc.nodes[0].shutdown(false)
	tc.nodes[0] = nil
	n, err := New(tc.cfgs[0]) // 127.0.0.1:0: a new port
	if err != nil {
		t.Fatal(err)
	}
	tc.nodes[0] = n
	if n.ClusterAddr() == old {
		t.Fatalf("restarted on the same address %s", old)
	}
	testutil.Eventually(t, 10*time.Second, "raft and the host record on the new address", func() bool {
		cf := n.raft.GetConfiguration()
		if cf.Error() != nil || len(cf.Configuration().Servers) != 1 || string(cf.Configuration().Servers[0].Address) != n.ClusterAddr() {
			return false
		}
		ok := false
		n.View(func(s *fsm.State) {
			h, found := s.Host("n1")
			ok = found && h.RaftAddr == n.ClusterAddr()
		})
		return ok
	})
	tc.createVolume(n, "after", "app", "n1", 4*MiB)
}

// TestCatalogVersionNotRaisedPastANewVoter: in one reconcile pass the
// last old server turns out upgraded while an old member joins. The
// member is judged against the version recorded before the pass and
// added; the raise must then count it, not the server list read before.
func TestCatalogVersionNotRaisedPastANewVoter(t *testing.T) {
	versions := map[string]uint32{"n1": 2, "n2": 2, "n3": 1}
	tc := newTestClusterWith(t, []int64{100 * MiB, 100 * MiB, 100 * MiB}, nil, func(c *Config) {
		c.catalogVersion = versions[c.Name]
	})
	var l *Node
	recorded := func() uint32 {
		var v uint32
		l.View(func(s *fsm.State) { v = s.RecordedCatalogVersion() })
		return v
	}
	testutil.Eventually(t, 10*time.Second, "catalog version 1", func() bool {
		l = tc.leader()
		return l != nil && recorded() == 1
	})
	// The leader's gossip table at one instant: n3 upgraded, n9 on
	// version 1 joined (at an address nothing listens on).
	g := l.gossip
	g.mu.Lock()
	g.members["n3"].meta.Version = 2
	g.members["n9"] = &member{name: "n9", addr: "127.0.0.1:1", state: "alive", since: time.Now(),
		meta: nodeMeta{Region: "r1", ClusterAddr: "127.0.0.1:1", APIAddr: "127.0.0.1:2", Backend: "file", Budget: 100 * MiB, Version: 1}}
	g.mu.Unlock()
	from := l.reconciles.Load()
	testutil.Eventually(t, 10*time.Second, "three reconcile passes", func() bool { return l.reconciles.Load() >= from+3 })
	voter := false
	for _, s := range l.raft.GetConfiguration().Configuration().Servers {
		voter = voter || s.ID == "n9"
	}
	if v := recorded(); voter && v > 1 {
		t.Fatalf("n9 applies catalog version 1 and is a raft voter, and the catalog records version %d", v)
	}
}
