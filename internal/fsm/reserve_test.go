package fsm

import "testing"

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
