package cluster

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/testutil"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
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
	// Work placed on the restarted node commits. The new leader's gossip
	// can still be settling (the restarted member briefly suspect), which
	// refuses with "host down" for a moment: retry until it takes (a CI
	// run caught that moment).
	var vol fsm.Volume
	testutil.Eventually(t, 15*time.Second, "a volume placed on the restarted node", func() bool {
		l := tc.leader()
		if l == nil {
			return false
		}
		found := false
		l.View(func(s *fsm.State) {
			for _, x := range s.Volumes() {
				if x.Name == "after" { // an attempt that timed out yet committed
					vol, found = x, true
				}
			}
		})
		if found {
			return true
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		v, err := l.Apply(ctx, fsm.CmdCreateVolume, &fsm.CreateVolumeCmd{
			Volume: fsm.Volume{ID: NewID("vol_"), Name: "after", App: "app", Host: tc.cfgs[idx].Name, Size: 4 * MiB},
		})
		if err != nil {
			t.Logf("create volume after: %v", err)
			time.Sleep(100 * time.Millisecond)
			return false
		}
		vol = *(v.(*fsm.Volume))
		return true
	})
	testutil.Eventually(t, 10*time.Second, "volume after ready on the restarted node", func() bool {
		var st fsm.VolumeState
		if l := tc.leader(); l != nil {
			l.View(func(s *fsm.State) {
				if x, ok := s.Volume(vol.ID); ok {
					st = x.State
				}
			})
		}
		return st == fsm.VolumeReady
	})
}

// waitRecorded waits until the leader records this build's catalog
// version.
func waitRecorded(t *testing.T, tc *testCluster) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, "catalog version recorded", func() bool {
		l := tc.leader()
		var v uint32
		if l != nil {
			l.View(func(s *fsm.State) { v = s.RecordedCatalogVersion() })
		}
		return v == fsm.CatalogVersion
	})
}

// restartOld stops node i (it stays a voter) and starts it again on its
// ports, gossiping catalog version v (0: this build's): a rollback or an
// upgrade.
func restartOld(t *testing.T, tc *testCluster, i int, v uint32) {
	t.Helper()
	cfg := tc.cfgs[i]
	cfg.ClusterAddr, cfg.GossipAddr = tc.nodes[i].ClusterAddr(), tc.nodes[i].GossipAddr()
	if err := tc.nodes[i].Stop(); err != nil {
		t.Fatal(err)
	}
	cfg.catalogVersion = v
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tc.nodes[i] = n
	tc.cfgs[i] = cfg
}

// TestRolledBackVoterGetsNoWork: a stopped node stays a voter, so one
// restarted on an older build (a rollback) would apply the log by older
// rules. It keeps its vote (removing it could cost the quorum: with
// another server down, 2 of 3 voters must stay a quorum), but its host
// counts as down, so nothing new is placed there; upgraded, it takes work
// again. A review found the first version of this, which removed the
// voter, left a cluster with one server dead and one rolled back without
// a leader.
func TestRolledBackVoterGetsNoWork(t *testing.T) {
	tc := newTestCluster(t, []int64{100 * MiB, 100 * MiB, 100 * MiB}, nil)
	waitRecorded(t, tc)
	var li int
	var fs []int
	for i, n := range tc.nodes {
		if n.IsLeader() {
			li = i
		} else {
			fs = append(fs, i)
		}
	}
	old, dead := fs[0], fs[1]
	name := tc.cfgs[old].Name
	restartOld(t, tc, old, fsm.CatalogVersion-1)
	hostAlive := func() bool {
		ok := false
		tc.nodes[li].View(func(s *fsm.State) { h, f := s.Host(name); ok = f && h.Alive })
		return ok
	}
	testutil.Eventually(t, 15*time.Second, name+" on older rules counts as down", func() bool { return !hostAlive() })
	_, err := tc.nodes[li].Apply(context.Background(), fsm.CmdCreateVolume, &fsm.CreateVolumeCmd{
		Volume: fsm.Volume{ID: NewID("vol_"), Name: "stranded", Host: name, Size: 4 * MiB},
	})
	if !errors.Is(err, fsm.ErrConflict) && !errors.Is(err, fsm.ErrNoRoom) {
		t.Fatalf("a volume placed on the rolled-back host: %v, want it refused", err)
	}
	// With a third server down, the leader and the rolled-back voter are
	// still 2 of 3: the cluster keeps committing.
	tc.nodes[dead].shutdown(false)
	tc.nodes[dead] = nil
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := tc.nodes[li].Apply(ctx, fsm.CmdCreateVolume, &fsm.CreateVolumeCmd{
		Volume: fsm.Volume{ID: NewID("vol_"), Name: "after", Host: tc.cfgs[li].Name, Size: 4 * MiB},
	}); err != nil {
		t.Fatalf("2 of 3 voters up (one rolled back), a write fails: %v", err)
	}
	restartOld(t, tc, old, 0)
	testutil.Eventually(t, 15*time.Second, name+" upgraded again takes work", hostAlive)
}

// TestRolledBackLeaderHandsOver: a voter on an older build (a rollback)
// that becomes leader anyway (it can win an election: it keeps its vote
// and its log is as long as anyone's) would judge newer entries by older
// rules. It must hand leadership over at once.
func TestRolledBackLeaderHandsOver(t *testing.T) {
	tc := newTestCluster(t, []int64{100 * MiB, 100 * MiB, 100 * MiB}, nil)
	waitRecorded(t, tc)
	old := -1
	for i, n := range tc.nodes {
		if !n.IsLeader() {
			old = i
			break
		}
	}
	var logs syncBuffer
	tc.cfgs[old].Logger = hclog.New(&hclog.LoggerOptions{Name: tc.cfgs[old].Name, Level: hclog.Info, Output: io.MultiWriter(&logs, os.Stderr)})
	restartOld(t, tc, old, fsm.CatalogVersion-1)
	const handover = "handing leadership over"
	id, addr := raft.ServerID(tc.cfgs[old].Name), raft.ServerAddress(tc.nodes[old].ClusterAddr())
	// Make it leader, as an election could: transfer leadership to it.
	testutil.Eventually(t, 20*time.Second, "the rolled-back node wins leadership", func() bool {
		if l := tc.leader(); l != nil && l != tc.nodes[old] && !strings.Contains(logs.String(), handover) {
			_ = l.raft.LeadershipTransferToServer(id, addr).Error()
		}
		return strings.Contains(logs.String(), handover)
	})
	testutil.Eventually(t, 10*time.Second, "leadership with a node on the current rules", func() bool {
		l := tc.leader()
		return l != nil && l != tc.nodes[old]
	})
}
