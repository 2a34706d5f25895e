package cluster

import (
	"testing"
	"time"

	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/testutil"
)

// TestStopKeepsTheVoter: a node stopped with Stop (the agent's default on
// SIGTERM) stays a raft voter, so after a restart it and one other node
// still make a quorum of three even while the third is down. With Close
// it would have left, and the cluster would have been stuck until the
// third came back (found by a failure walkthrough).
func TestStopKeepsTheVoter(t *testing.T) {
	tc := newTestCluster(t, []int64{100 * MiB, 100 * MiB, 100 * MiB}, nil)
	voters := func(l *Node) int {
		cf := l.raft.GetConfiguration()
		if cf.Error() != nil {
			return -1
		}
		return len(cf.Configuration().Servers)
	}
	// Stop the leader itself: the hardest case for a graceful stop.
	idx := 0
	for i, n := range tc.nodes {
		if n.IsLeader() {
			idx = i
		}
	}
	// An agent restarts on its configured ports.
	cfg := tc.cfgs[idx]
	cfg.ClusterAddr, cfg.GossipAddr = tc.nodes[idx].ClusterAddr(), tc.nodes[idx].GossipAddr()
	if err := tc.nodes[idx].Stop(); err != nil {
		t.Fatal(err)
	}
	tc.nodes[idx] = nil
	var l *Node
	testutil.Eventually(t, 10*time.Second, "a new leader", func() bool { l = tc.leader(); return l != nil })
	from := l.reconciles.Load()
	testutil.Eventually(t, 10*time.Second, "three reconcile passes", func() bool { return l.reconciles.Load() >= from+3 })
	if got := voters(l); got != 3 {
		t.Fatalf("after Stop the raft configuration has %d servers, want 3", got)
	}

	// Restart the stopped node, then crash another: two of three remain.
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tc.nodes[idx] = n
	other := (idx + 1) % 3
	tc.nodes[other].shutdown(false)
	tc.nodes[other] = nil
	testutil.Eventually(t, 15*time.Second, "a leader among the restarted node and the third, and the node alive in its catalog", func() bool {
		l := tc.leader()
		if l == nil {
			return false
		}
		alive := false
		l.View(func(s *fsm.State) {
			h, ok := s.Host(tc.cfgs[idx].Name)
			alive = ok && h.Alive
		})
		return alive
	})
	tc.createVolume(tc.leader(), "after", "app", tc.cfgs[idx].Name, 4*MiB)
}

// TestDowngradedVoterRemoved: a stopped node stays a voter, so one
// restarted on an older build (a rollback) would apply the log by older
// rules. The leader removes it from raft, and adds it back once it runs
// the cluster's rules again (found by a review of Stop).
func TestDowngradedVoterRemoved(t *testing.T) {
	tc := newTestCluster(t, []int64{100 * MiB, 100 * MiB, 100 * MiB}, nil)
	testutil.Eventually(t, 10*time.Second, "catalog version recorded", func() bool {
		l := tc.leader()
		var v uint32
		if l != nil {
			l.View(func(s *fsm.State) { v = s.RecordedCatalogVersion() })
		}
		return v == fsm.CatalogVersion
	})
	idx := 0
	for i, n := range tc.nodes {
		if !n.IsLeader() {
			idx = i
		}
	}
	name := tc.cfgs[idx].Name
	cfg := tc.cfgs[idx]
	cfg.ClusterAddr, cfg.GossipAddr = tc.nodes[idx].ClusterAddr(), tc.nodes[idx].GossipAddr()
	if err := tc.nodes[idx].Stop(); err != nil {
		t.Fatal(err)
	}
	isVoter := func() bool {
		l := tc.leader()
		if l == nil {
			return false
		}
		for _, s := range l.raft.GetConfiguration().Configuration().Servers {
			if string(s.ID) == name {
				return true
			}
		}
		return false
	}
	restart := func(version uint32) {
		c := cfg
		c.catalogVersion = version
		n, err := New(c)
		if err != nil {
			t.Fatal(err)
		}
		tc.nodes[idx] = n
	}
	restart(fsm.CatalogVersion - 1)
	testutil.Eventually(t, 15*time.Second, name+" on an older build removed from raft", func() bool { return !isVoter() })
	tc.nodes[idx].shutdown(false)
	restart(0)
	testutil.Eventually(t, 15*time.Second, name+" upgraded again is a voter again", isVoter)
}
