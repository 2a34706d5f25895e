package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
)

// TestSnapshotReserve: from catalog version 3 a fork from a file host
// without reflink holds its snapshot's space on the source host while it
// runs, survives a snapshot and restore, and gives it back when it ends;
// from version 4 so does a thick LVM host's copy-on-write area.
func TestSnapshotReserve(t *testing.T) {
	for _, tc := range []struct {
		name    string
		version uint32
		thick   bool
		ok      bool
		// Used on h2 while the fork runs and after it ends.
		during, after int64
	}{
		{"v3, ready", 3, false, true, 3 * GiB, 2 * GiB},
		{"v3, failed", 3, false, false, 3 * GiB, GiB},
		{"v1 reserves nothing", 1, false, true, 2 * GiB, 2 * GiB},
		{"v4, thick LVM, ready", 4, true, true, 2*GiB + 208*MiB, 2 * GiB},
		{"v4, thick LVM, failed", 4, true, false, 2*GiB + 208*MiB, GiB},
		{"v3, thick LVM reserves nothing", 3, true, true, 2 * GiB, 2 * GiB},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := mkHost("h2", "us", false, 10*GiB)
			if tc.thick {
				h.Backend, h.SnapshotPermille, h.SnapshotMin, h.SnapshotGrain = "lvm", 200, 64*MiB, 4*MiB
			}
			f := newCatalog(t, []Host{h}, []Volume{mkVol("vol_a", "db", "", "h2", GiB)})
			if tc.version > 1 {
				mustApply(t, f, CmdSetCatalogVersion, SetCatalogVersionCmd{Header: hdr(), Version: tc.version})
				mustApply(t, f, CmdUpsertHost, UpsertHostCmd{Header: hdr(), Host: h}) // as the leader does after a bump
			}
			mustApply(t, f, CmdCreateFork, CreateForkCmd{Header: hdr(), ForkID: "fork_1", TargetVolumeID: "vol_f",
				Request: ForkRequest{Source: "db", Name: "f", Via: PathCopy}})
			used := func() int64 {
				var u int64
				f.View(func(s *State) { u = s.Used("h2") })
				return u
			}
			if got := used(); got != tc.during {
				t.Fatalf("used while the fork runs: %d, want %d", got, tc.during)
			}
			mustApply(t, f, CmdForkProgress, ForkProgressCmd{Header: hdr(), ForkID: "fork_1", BytesDone: 1, BytesTotal: GiB})
			if got := used(); got != tc.during {
				t.Fatalf("used after progress: %d, want %d", got, tc.during)
			}
			f = testSnapshotRestore(t, f) // rebuilt from the fork records alike
			mustApply(t, f, CmdFinishFork, FinishForkCmd{Header: hdr(), ForkID: "fork_1", OK: tc.ok, Error: "x"})
			if got := used(); got != tc.after {
				t.Fatalf("used after the fork: %d, want %d", got, tc.after)
			}
			testSnapshotRestore(t, f)
		})
	}
}

// stripFigures is an UpsertHost entry as a build before version 4 decodes
// it: without the snapshot figures.
func stripFigures(t *testing.T, e []byte) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(e[1:], &m); err != nil {
		t.Fatal(err)
	}
	h := m["host"].(map[string]any)
	delete(h, "snapshot_permille")
	delete(h, "snapshot_min")
	delete(h, "snapshot_grain")
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte{e[0]}, b...)
}

// TestRollingUpgradeKeepsReplicasAlike: during a rolling upgrade a new
// leader upserts hosts while an old follower drops the snapshot figures
// (and its own snapshot has none). After the bump to version 4 that
// follower, upgraded and restored from its snapshot, must plan forks as
// the leader does (found by review: one refused a fork the other
// admitted). The figures are only kept from version 4 on, when the leader
// sends them again.
func TestRollingUpgradeKeepsReplicasAlike(t *testing.T) {
	thick := mkHost("h2", "us", false, 2*GiB+100*MiB)
	thick.Backend, thick.SnapshotPermille, thick.SnapshotMin, thick.SnapshotGrain = "lvm", 200, 64*MiB, 4*MiB
	before := [][]byte{
		entry(t, CmdSetCatalogVersion, SetCatalogVersionCmd{Header: hdr(), Version: 3}),
		entry(t, CmdUpsertHost, UpsertHostCmd{Header: hdr(), Host: mkHost("h1", "us", true, 10*GiB)}),
		entry(t, CmdUpsertHost, UpsertHostCmd{Header: hdr(), Host: thick}),
		entry(t, CmdCreateVolume, CreateVolumeCmd{Header: hdr(), Volume: mkVol("vol_a", "db", "", "h2", GiB)}),
	}
	leader, old := New(nil), New(nil)
	for _, e := range before {
		applyRaw(leader, e)
		if CommandType(e[0]) == CmdUpsertHost {
			e = stripFigures(t, e)
		}
		applyRaw(old, e)
	}
	follower := New(nil) // upgraded, restarted from its own snapshot
	if err := follower.Restore(readCloser{bytes.NewReader(persist(t, old))}); err != nil {
		t.Fatal(err)
	}
	after := [][]byte{
		entry(t, CmdSetCatalogVersion, SetCatalogVersionCmd{Header: hdr(), Version: 4}),
		entry(t, CmdCreateFork, CreateForkCmd{Header: hdr(), ForkID: "fork_1", TargetVolumeID: "vol_f",
			Request: ForkRequest{Source: "db", Name: "f", Via: PathCopy}}),
		entry(t, CmdFinishFork, FinishForkCmd{Header: hdr(), ForkID: "fork_1", Error: "x"}),
		entry(t, CmdUpsertHost, UpsertHostCmd{Header: hdr(), Host: thick}), // the leader's next pass
		entry(t, CmdCreateFork, CreateForkCmd{Header: hdr(), ForkID: "fork_2", TargetVolumeID: "vol_g",
			Request: ForkRequest{Source: "db", Name: "g", Via: PathCopy}}),
	}
	var rl, rf ApplyResult
	for i, e := range after {
		rl, rf = applyRaw(leader, e), applyRaw(follower, e)
		var ul, uf int64
		leader.View(func(s *State) { ul = s.Used("h2") })
		follower.View(func(s *State) { uf = s.Used("h2") })
		if (rl.Err == nil) != (rf.Err == nil) || ul != uf {
			t.Fatalf("entry %d (%v): leader %v, used %d; follower %v, used %d", i, CommandType(e[0]), rl.Err, ul, rf.Err, uf)
		}
	}
	// With the figures back, both refuse the second copy for its COW area.
	if !errors.Is(rl.Err, ErrNoRoom) || !errors.Is(rf.Err, ErrNoRoom) {
		t.Fatalf("second copy: leader %v, follower %v; want both refused for want of room", rl.Err, rf.Err)
	}
	var h Host
	follower.View(func(s *State) { h, _ = s.Host("h2") })
	if h.SnapshotPermille != 200 {
		t.Fatalf("after the leader's upsert the follower's record has no figures: %+v", h)
	}
}
