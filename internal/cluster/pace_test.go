package cluster

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/testutil"
)

// TestClusterPacing: a node with a rate limit and pacing reports its pace
// in Status, waits at a quarter of the ceiling while idle, writes its probe
// file where it was told, and a stream fork under it still completes with
// the right bytes. A node with pacing off reports none.
func TestClusterPacing(t *testing.T) {
	tc := newTestClusterWith(t, []int64{64 * MiB, 64 * MiB}, nil, func(c *Config) {
		c.RateLimit = 16 * MiB
		c.StreamCodec = "none"
		if c.Name == "n1" {
			c.Pace = true
			c.PaceProbe = filepath.Join(c.DataDir, "probe")
		}
	})
	n1, n2 := tc.node("n1"), tc.node("n2")
	if st := n2.Status(); st.Pace != nil {
		t.Fatalf("n2 runs without --pace but reports %+v", *st.Pace)
	}
	testutil.Eventually(t, 10*time.Second, "n1 reports its pace", func() bool {
		st := n1.Status()
		return st.Pace != nil && st.Pace.Ceiling == 16*MiB && st.Pace.Rate == 4*MiB && !st.Pace.Active
	})
	if fi, err := os.Stat(tc.cfgs[0].PaceProbe); err != nil || fi.Size() == 0 {
		t.Fatalf("probe file: %v", err)
	}

	src := tc.createVolume(tc.leader(), "paced", "app", "n1", 8*MiB)
	tc.fill(src, 11)
	fk, err := tc.fork(tc.leader(), fsm.ForkRequest{Source: src.ID, Name: "paced-2", Host: "n2"})
	if err != nil {
		t.Fatal(err)
	}
	sawActive := false
	testutil.Eventually(t, 60*time.Second, "paced stream fork ready", func() bool {
		if st := n1.Status(); st.Pace != nil && st.Pace.Active {
			sawActive = true
		}
		var f fsm.Fork
		tc.leader().View(func(s *fsm.State) { f, _ = s.Fork(fk.ID) })
		if f.State == fsm.ForkFailed {
			t.Fatalf("fork failed: %s", f.Error)
		}
		return f.State == fsm.ForkReady
	})
	if !sawActive {
		t.Error("the source's pacer never saw the stream's bytes")
	}
	if !bytes.Equal(tc.read("n1", src.ID), tc.read("n2", fk.TargetVolume)) {
		t.Fatal("the paced fork's bytes differ from the source's")
	}
}
