package fsm

import (
	"fmt"
	"slices"
	"testing"
)

func TestPlanFork(t *testing.T) {
	// Standard cluster: us has h1 (clone) and h2 (copy), eu has h3 (clone)
	// and h4 (copy).
	std := func() []Host {
		return []Host{
			mkHost("h1", "us", true, 10*GiB),
			mkHost("h2", "us", false, 10*GiB),
			mkHost("h3", "eu", true, 10*GiB),
			mkHost("h4", "eu", false, 10*GiB),
		}
	}
	with := func(hs []Host, id string, budget int64) []Host {
		for i := range hs {
			if hs[i].ID == id {
				hs[i].Budget = budget
			}
		}
		return hs
	}
	type tc struct {
		name  string
		hosts []Host
		vols  []Volume
		dead  []string
		v     uint32 // catalog version to record (0: none, i.e. 1)
		req   ForkRequest
		want  Plan
		err   error
		frags []string
	}
	plan := func(src, srcHost, target string, path Path, size int64) Plan {
		return Plan{SourceVolume: src, SourceHost: srcHost, TargetHost: target, Path: path, Size: size}
	}
	reserve := func(p Plan) Plan { p.SnapshotReserve = p.Size; return p }
	reserveN := func(p Plan, n int64) Plan { p.SnapshotReserve = n; return p }
	// thick makes h2 a thick LVM host: 20 % COW, at least 64 MiB, 4 MiB
	// extents (what cow.LVMBackend advertises by default).
	thick := func(hs []Host) []Host {
		for i := range hs {
			if hs[i].ID == "h2" {
				hs[i].Backend, hs[i].SnapshotPermille, hs[i].SnapshotMin, hs[i].SnapshotGrain = "lvm", 200, 64*MiB, 4*MiB
			}
		}
		return hs
	}
	cases := []tc{
		// --- the four paths, unforced ---
		{name: "clone on a clone host with room", hosts: std(),
			vols: []Volume{mkVol("vol_a", "db", "shop", "h1", GiB)},
			req:  ForkRequest{Source: "db", Name: "f"},
			want: plan("vol_a", "h1", "h1", PathClone, GiB)},
		{name: "copy on a host without clone", hosts: std(),
			vols: []Volume{mkVol("vol_a", "db", "shop", "h2", GiB)},
			req:  ForkRequest{Source: "vol_a", Name: "f"},
			want: plan("vol_a", "h2", "h2", PathCopy, GiB)},
		{name: "replica when the source host is full", hosts: with(std(), "h1", 2*GiB),
			vols: []Volume{mkVol("vol_a", "db", "shop", "h1", 2*GiB), mkVol("vol_b", "db2", "shop", "h4", 2*GiB)},
			req:  ForkRequest{Source: "db", Name: "f"},
			want: plan("vol_b", "h4", "h4", PathReplica, 2*GiB)},
		{name: "replica prefers a clone host over more free space", hosts: with(with(std(), "h1", 2*GiB), "h4", 100*GiB),
			vols: []Volume{mkVol("vol_a", "db", "shop", "h1", 2*GiB), mkVol("vol_b", "db2", "shop", "h4", 2*GiB), mkVol("vol_c", "db3", "shop", "h3", 2*GiB)},
			req:  ForkRequest{Source: "vol_a", Name: "f"},
			want: plan("vol_c", "h3", "h3", PathReplica, 2*GiB)},
		{name: "replica ties broken by volume id", hosts: with(std(), "h1", 2*GiB),
			vols: []Volume{mkVol("vol_a", "db", "shop", "h1", 2*GiB), mkVol("vol_z", "db2", "shop", "h2", 2*GiB), mkVol("vol_y", "db3", "shop", "h4", 2*GiB)},
			req:  ForkRequest{Source: "vol_a", Name: "f"},
			want: plan("vol_y", "h4", "h4", PathReplica, 2*GiB)},
		{name: "replica ignores volumes not ready", hosts: with(std(), "h1", 2*GiB),
			vols: []Volume{mkVol("vol_a", "db", "shop", "h1", 2*GiB), {ID: "vol_b", Name: "db2", App: "shop", Host: "h3", Size: 2 * GiB, State: VolumeCreating}},
			req:  ForkRequest{Source: "vol_a", Name: "f"},
			want: plan("vol_a", "h1", "h2", PathStream, 2*GiB)},
		{name: "app:vol_id pins the source: stream, no replica", hosts: with(std(), "h1", 2*GiB),
			vols: []Volume{mkVol("vol_a", "db", "shop", "h1", 2*GiB), mkVol("vol_b", "db2", "shop", "h3", 2*GiB)},
			req:  ForkRequest{Source: "shop:vol_a", Name: "f"},
			want: plan("vol_a", "h1", "h2", PathStream, 2*GiB)},
		{name: "stream prefers the source region over more free space", hosts: with(with(std(), "h1", GiB), "h3", 100*GiB),
			vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)},
			req:  ForkRequest{Source: "db", Name: "f"},
			want: plan("vol_a", "h1", "h2", PathStream, GiB)},
		{name: "stream to the most free host of another region", hosts: with(with(with(std(), "h1", GiB), "h2", 0), "h4", 11*GiB),
			vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)},
			req:  ForkRequest{Source: "db", Name: "f"},
			want: plan("vol_a", "h1", "h4", PathStream, GiB)},
		{name: "stream ties broken by host id", hosts: with(with(std(), "h1", GiB), "h2", 0),
			vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)},
			req:  ForkRequest{Source: "db", Name: "f"},
			want: plan("vol_a", "h1", "h3", PathStream, GiB)},
		{name: "creating volumes are reservations", hosts: with(std(), "h1", 2*GiB),
			vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB), {ID: "vol_r", Name: "resv", Host: "h1", Size: GiB, State: VolumeCreating}},
			req:  ForkRequest{Source: "db", Name: "f"},
			want: plan("vol_a", "h1", "h2", PathStream, GiB)},
		{name: "failed volumes free their space", hosts: with(std(), "h1", 2*GiB),
			vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB), {ID: "vol_r", Name: "dead", Host: "h1", Size: GiB, State: VolumeFailed}},
			req:  ForkRequest{Source: "db", Name: "f"},
			want: plan("vol_a", "h1", "h1", PathClone, GiB)},
		{name: "deleting volumes still count", hosts: with(std(), "h1", 2*GiB),
			vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB), {ID: "vol_r", Name: "old", Host: "h1", Size: GiB, State: VolumeDeleting}},
			req:  ForkRequest{Source: "db", Name: "f"},
			want: plan("vol_a", "h1", "h2", PathStream, GiB)},

		// --- host / region flags ---
		{name: "--host elsewhere streams although local has room", hosts: std(),
			vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)},
			req:  ForkRequest{Source: "db", Name: "f", Host: "h4"},
			want: plan("vol_a", "h1", "h4", PathStream, GiB)},
		{name: "--host equal to the source host forks locally", hosts: std(),
			vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)},
			req:  ForkRequest{Source: "db", Name: "f", Host: "h1"},
			want: plan("vol_a", "h1", "h1", PathClone, GiB)},
		{name: "--host equal to a full source host: no room", hosts: with(std(), "h1", GiB),
			vols:  []Volume{mkVol("vol_a", "db", "", "h1", GiB)},
			req:   ForkRequest{Source: "db", Name: "f", Host: "h1"},
			err:   ErrNoRoom,
			frags: []string{"need 1.0 GiB, most free is 0 B on h1", "--host h1"}},
		{name: "--region other streams into that region", hosts: std(),
			vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)},
			req:  ForkRequest{Source: "db", Name: "f", Region: "eu"},
			want: plan("vol_a", "h1", "h3", PathStream, GiB)},
		{name: "--region of the source forks locally", hosts: std(),
			vols: []Volume{mkVol("vol_a", "db", "", "h2", GiB)},
			req:  ForkRequest{Source: "db", Name: "f", Region: "us"},
			want: plan("vol_a", "h2", "h2", PathCopy, GiB)},
		{name: "--region with a full source: replica in region", hosts: with(std(), "h1", GiB),
			vols: []Volume{mkVol("vol_a", "db", "shop", "h1", GiB), mkVol("vol_b", "db2", "shop", "h3", GiB), mkVol("vol_c", "db3", "shop", "h2", GiB)},
			req:  ForkRequest{Source: "db", Name: "f", Region: "us"},
			want: plan("vol_c", "h2", "h2", PathReplica, GiB)},
		{name: "unknown --host", hosts: std(), vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)},
			req: ForkRequest{Source: "db", Name: "f", Host: "h9"}, err: ErrNotFound, frags: []string{`target host "h9" (hosts: h1, h2, h3, h4)`}},
		{name: "dead --host", hosts: std(), vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)}, dead: []string{"h2"},
			req: ForkRequest{Source: "db", Name: "f", Host: "h2"}, err: ErrConflict, frags: []string{"h2 is down"}},
		{name: "unknown --region", hosts: std(), vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)},
			req: ForkRequest{Source: "db", Name: "f", Region: "mars"}, err: ErrNotFound, frags: []string{"mars"}},
		{name: "--host outside --region", hosts: std(), vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)},
			req: ForkRequest{Source: "db", Name: "f", Host: "h1", Region: "eu"}, err: ErrInvalid, frags: []string{"region us, not eu"}},

		// --- forced via ---
		{name: "via clone on a copy host", hosts: std(), vols: []Volume{mkVol("vol_a", "db", "", "h2", GiB)},
			req: ForkRequest{Source: "db", Name: "f", Via: PathClone}, err: ErrConflict,
			frags: []string{"via clone: host h2 (file backend) cannot clone"}},
		{name: "via clone on a full host", hosts: with(std(), "h1", GiB), vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)},
			req: ForkRequest{Source: "db", Name: "f", Via: PathClone}, err: ErrNoRoom,
			frags: []string{"via clone: host h1 has no room: need 1.0 GiB, free 0 B"}},
		{name: "via clone with --host elsewhere", hosts: std(), vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)},
			req: ForkRequest{Source: "db", Name: "f", Via: PathClone, Host: "h3"}, err: ErrInvalid,
			frags: []string{"via clone", "--host h3"}},
		{name: "via clone on a dead host", hosts: std(), vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)}, dead: []string{"h1"},
			req: ForkRequest{Source: "db", Name: "f", Via: PathClone}, err: ErrConflict, frags: []string{"h1 is down"}},
		{name: "via copy on a clone host", hosts: std(), vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)},
			req:  ForkRequest{Source: "db", Name: "f", Via: PathCopy},
			want: plan("vol_a", "h1", "h1", PathCopy, GiB)},
		{name: "via stream although local has room", hosts: std(), vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)},
			req:  ForkRequest{Source: "db", Name: "f", Via: PathStream},
			want: plan("vol_a", "h1", "h2", PathStream, GiB)},
		{name: "via stream from a dead host", hosts: std(), vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)}, dead: []string{"h1"},
			req: ForkRequest{Source: "db", Name: "f", Via: PathStream}, err: ErrConflict, frags: []string{"via stream: source host h1 is down"}},
		{name: "via stream with nowhere to go", hosts: []Host{mkHost("h1", "us", true, 10*GiB), mkHost("h2", "us", false, GiB/2)},
			vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)},
			req:  ForkRequest{Source: "db", Name: "f", Via: PathStream}, err: ErrNoRoom, frags: []string{"via stream: need 1.0 GiB, most free is 512 MiB on h2", "the source's host h1 does not count"}},
		{name: "via stream with no other host alive", hosts: []Host{mkHost("h1", "us", true, 10*GiB), mkHost("h2", "us", false, 10*GiB)},
			vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)}, dead: []string{"h2"},
			req: ForkRequest{Source: "db", Name: "f", Via: PathStream}, err: ErrNoRoom, frags: []string{"need 1.0 GiB, no alive host other than the source's (h1)"}},
		{name: "via stream with --host the source host", hosts: std(), vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)},
			req: ForkRequest{Source: "db", Name: "f", Via: PathStream, Host: "h1"}, err: ErrInvalid, frags: []string{"is the source host"}},
		{name: "via replica although local has room", hosts: std(),
			vols: []Volume{mkVol("vol_a", "db", "shop", "h1", GiB), mkVol("vol_b", "db2", "shop", "h2", GiB)},
			req:  ForkRequest{Source: "db", Name: "f", Via: PathReplica},
			want: plan("vol_b", "h2", "h2", PathReplica, GiB)},
		{name: "via replica on a pinned source", hosts: std(),
			vols: []Volume{mkVol("vol_a", "db", "shop", "h1", GiB), mkVol("vol_b", "db2", "shop", "h2", GiB)},
			req:  ForkRequest{Source: "shop:vol_a", Name: "f", Via: PathReplica}, err: ErrConflict, frags: []string{"pinned"}},
		{name: "via replica without another volume", hosts: std(),
			vols: []Volume{mkVol("vol_a", "db", "shop", "h1", GiB)},
			req:  ForkRequest{Source: "db", Name: "f", Via: PathReplica}, err: ErrNoRoom, frags: []string{"app \"shop\""}},
		{name: "via nonsense", hosts: std(), vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)},
			req: ForkRequest{Source: "db", Name: "f", Via: "teleport"}, err: ErrInvalid, frags: []string{"teleport"}},

		// --- dead and full hosts ---
		{name: "dead source host: replica", hosts: std(),
			vols: []Volume{mkVol("vol_a", "db", "shop", "h1", GiB), mkVol("vol_b", "db2", "shop", "h4", GiB)}, dead: []string{"h1"},
			req:  ForkRequest{Source: "db", Name: "f"},
			want: plan("vol_b", "h4", "h4", PathReplica, GiB)},
		{name: "dead source host without replica", hosts: std(),
			vols: []Volume{mkVol("vol_a", "db", "shop", "h1", GiB)}, dead: []string{"h1"},
			req: ForkRequest{Source: "db", Name: "f"}, err: ErrConflict, frags: []string{"host h1 is down"}},
		{name: "dead hosts are never targets", hosts: []Host{mkHost("h1", "us", true, GiB), mkHost("h2", "us", true, 100*GiB), mkHost("h3", "us", true, 3*GiB/2)},
			vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB), mkVol("vol_x", "x", "", "h3", GiB)}, dead: []string{"h2"},
			req: ForkRequest{Source: "db", Name: "f"}, err: ErrNoRoom,
			frags: []string{"no host has room: need 1.0 GiB, most free is 512 MiB on h3"}},
		{name: "every host full", hosts: []Host{mkHost("h1", "us", true, GiB), mkHost("h2", "eu", false, GiB/2)},
			vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)},
			req:  ForkRequest{Source: "db", Name: "f"}, err: ErrNoRoom,
			frags: []string{"no host has room: need 1.0 GiB, most free is 512 MiB on h2"}},

		// --- source resolution ---
		{name: "by id", hosts: std(), vols: []Volume{mkVol("vol_a", "db", "shop", "h2", GiB)},
			req: ForkRequest{Source: "vol_a", Name: "f"}, want: plan("vol_a", "h2", "h2", PathCopy, GiB)},
		{name: "by name", hosts: std(), vols: []Volume{mkVol("vol_a", "db", "shop", "h2", GiB)},
			req: ForkRequest{Source: "db", Name: "f"}, want: plan("vol_a", "h2", "h2", PathCopy, GiB)},
		{name: "app:vol_id", hosts: std(), vols: []Volume{mkVol("vol_a", "db", "shop", "h2", GiB), mkVol("vol_b", "db2", "shop", "h1", GiB)},
			req: ForkRequest{Source: "shop:vol_a", Name: "f"}, want: plan("vol_a", "h2", "h2", PathCopy, GiB)},
		{name: "app:vol_id of another app", hosts: std(), vols: []Volume{mkVol("vol_a", "db", "shop", "h2", GiB)},
			req: ForkRequest{Source: "blog:vol_a", Name: "f"}, err: ErrNotFound, frags: []string{"belongs to app \"shop\""}},
		{name: "app:vol_id unknown volume", hosts: std(), vols: []Volume{mkVol("vol_a", "db", "shop", "h2", GiB)},
			req: ForkRequest{Source: "shop:vol_q", Name: "f"}, err: ErrNotFound, frags: []string{"vol_q"}},
		{name: "app:", hosts: std(), vols: []Volume{mkVol("vol_a", "db", "shop", "h2", GiB)},
			req: ForkRequest{Source: "shop:", Name: "f"}, err: ErrInvalid},
		{name: "v3: app: names the app", v: 3, hosts: std(), vols: []Volume{mkVol("vol_a", "db", "shop", "h2", GiB)},
			req: ForkRequest{Source: "shop:", Name: "f"}, want: reserve(plan("vol_a", "h2", "h2", PathCopy, GiB))},
		{name: "v3: app: of no app", v: 3, hosts: std(), vols: []Volume{mkVol("vol_a", "db", "shop", "h2", GiB)},
			req: ForkRequest{Source: "blog:", Name: "f"}, err: ErrNotFound, frags: []string{`no app "blog"`}},
		{name: "v3: :vol_id", v: 3, hosts: std(), vols: []Volume{mkVol("vol_a", "db", "shop", "h2", GiB)},
			req: ForkRequest{Source: ":vol_a", Name: "f"}, err: ErrInvalid, frags: []string{"app: for the app"}},
		{name: "v3: a name that is an app and another app's volume is ambiguous", v: 3, hosts: std(),
			vols: []Volume{mkVol("vol_a", "db", "shop", "h2", GiB), mkVol("vol_b", "shop", "other", "h1", GiB)},
			req:  ForkRequest{Source: "shop", Name: "f"}, err: ErrInvalid,
			frags: []string{"both the name of volume vol_b", "fork vol_b", "shop: for the app"}},
		{name: "v1: the volume's name wins, as before", hosts: std(),
			vols: []Volume{mkVol("vol_a", "db", "shop", "h2", GiB), mkVol("vol_b", "shop", "other", "h1", GiB)},
			req:  ForkRequest{Source: "shop", Name: "f"}, want: plan("vol_b", "h1", "h1", PathClone, GiB)},
		{name: "v3: a volume named as its own app is no clash", v: 3, hosts: std(),
			vols: []Volume{mkVol("vol_a", "db", "shop", "h2", GiB), mkVol("vol_b", "shop", "shop", "h1", GiB)},
			req:  ForkRequest{Source: "shop", Name: "f"}, want: plan("vol_b", "h1", "h1", PathClone, GiB)},
		{name: "v3: the app form with a clash", v: 3, hosts: std(),
			vols: []Volume{mkVol("vol_a", "db", "shop", "h2", GiB), mkVol("vol_b", "shop", "other", "h1", GiB)},
			req:  ForkRequest{Source: "shop:", Name: "f"}, want: reserve(plan("vol_a", "h2", "h2", PathCopy, GiB))},

		// --- catalog version 3: a file host without reflink needs room for the snapshot too ---
		{name: "v3: a copy needs room for its snapshot: 1.5 GiB free is not enough", v: 3, hosts: with(std(), "h2", 2*GiB+GiB/2),
			vols: []Volume{mkVol("vol_a", "db", "", "h2", GiB)},
			req:  ForkRequest{Source: "db", Name: "f", Via: PathCopy}, err: ErrNoRoom,
			frags: []string{"need 2.0 GiB", "1.0 GiB for its snapshot, a full copy", "free 1.5 GiB"}},
		{name: "v1: the same copy fits, as before", hosts: with(std(), "h2", 2*GiB+GiB/2),
			vols: []Volume{mkVol("vol_a", "db", "", "h2", GiB)},
			req:  ForkRequest{Source: "db", Name: "f", Via: PathCopy}, want: plan("vol_a", "h2", "h2", PathCopy, GiB)},
		{name: "v3: unforced, no room for fork and snapshot: stream, the snapshot fits", v: 3, hosts: with(std(), "h2", 2*GiB+GiB/2),
			vols: []Volume{mkVol("vol_a", "db", "", "h2", GiB)},
			req:  ForkRequest{Source: "db", Name: "f"}, want: reserve(plan("vol_a", "h2", "h1", PathStream, GiB))},
		{name: "v3: a stream from a full file host without reflink is refused up front", v: 3, hosts: with(std(), "h2", GiB+GiB/2),
			vols: []Volume{mkVol("vol_a", "db", "", "h2", GiB)},
			req:  ForkRequest{Source: "db", Name: "f"}, err: ErrNoRoom,
			frags: []string{"source host h2 has no room for the snapshot a stream reads from", "need 1.0 GiB", "free 512 MiB"}},
		{name: "v3: a stream from a clone host reserves nothing", v: 3, hosts: with(std(), "h1", GiB),
			vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)},
			req:  ForkRequest{Source: "db", Name: "f"}, want: plan("vol_a", "h1", "h2", PathStream, GiB)},
		// --- catalog version 4: the snapshot cost the host advertises ---
		{name: "v4: a copy on a thick LVM host needs room for the COW area", v: 4, hosts: thick(with(std(), "h2", 2*GiB)),
			vols: []Volume{mkVol("vol_a", "db", "", "h2", GiB)},
			req:  ForkRequest{Source: "db", Name: "f", Via: PathCopy}, err: ErrNoRoom,
			frags: []string{"need 1.2 GiB", "208 MiB for its snapshot, a classic LVM snapshot's copy-on-write area", "free 1.0 GiB"}},
		{name: "v3: the thick host's COW area is not counted yet", v: 3, hosts: thick(with(std(), "h2", 2*GiB)),
			vols: []Volume{mkVol("vol_a", "db", "", "h2", GiB)},
			req:  ForkRequest{Source: "db", Name: "f", Via: PathCopy}, want: plan("vol_a", "h2", "h2", PathCopy, GiB)},
		{name: "v4: a copy on a thick host with room holds its COW area", v: 4, hosts: thick(with(std(), "h2", 3*GiB)),
			vols: []Volume{mkVol("vol_a", "db", "", "h2", GiB)},
			req:  ForkRequest{Source: "db", Name: "f", Via: PathCopy}, want: reserveN(plan("vol_a", "h2", "h2", PathCopy, GiB), 208*MiB)},
		{name: "v4: a stream from a full thick host is refused up front", v: 4, hosts: thick(with(std(), "h2", GiB+100*MiB)),
			vols: []Volume{mkVol("vol_a", "db", "", "h2", GiB)},
			req:  ForkRequest{Source: "db", Name: "f"}, err: ErrNoRoom,
			frags: []string{"source host h2 has no room for the snapshot a stream reads from", "need 208 MiB", "copy-on-write area", "free 100 MiB"}},
		{name: "v4: a file host without figures yet keeps the v3 rule", v: 4, hosts: with(std(), "h2", 2*GiB+GiB/2),
			vols: []Volume{mkVol("vol_a", "db", "", "h2", GiB)},
			req:  ForkRequest{Source: "db", Name: "f"}, want: reserve(plan("vol_a", "h2", "h1", PathStream, GiB))},
		{name: "app prefers a clone host with room", hosts: with(std(), "h2", 100*GiB),
			vols: []Volume{mkVol("vol_a", "db", "shop", "h2", GiB), mkVol("vol_b", "db2", "shop", "h3", GiB), mkVol("vol_c", "db3", "shop", "h1", GiB)},
			req:  ForkRequest{Source: "shop", Name: "f"},
			want: plan("vol_b", "h3", "h3", PathClone, GiB)}, // h1 and h3 both clone, 9 GiB free: tie by id
		{name: "app skips full hosts", hosts: with(std(), "h3", GiB),
			vols: []Volume{mkVol("vol_b", "db2", "shop", "h3", GiB), mkVol("vol_c", "db3", "shop", "h2", GiB)},
			req:  ForkRequest{Source: "shop", Name: "f"},
			want: plan("vol_c", "h2", "h2", PathCopy, GiB)},
		{name: "app skips volumes not ready", hosts: std(),
			vols: []Volume{{ID: "vol_a", Name: "db", App: "shop", Host: "h1", Size: GiB, State: VolumeCreating}, mkVol("vol_c", "db3", "shop", "h2", GiB)},
			req:  ForkRequest{Source: "shop", Name: "f"},
			want: plan("vol_c", "h2", "h2", PathCopy, GiB)},
		{name: "app with --host uses the volume there", hosts: std(),
			vols: []Volume{mkVol("vol_a", "db", "shop", "h1", GiB), mkVol("vol_c", "db3", "shop", "h4", GiB)},
			req:  ForkRequest{Source: "shop", Name: "f", Host: "h4"},
			want: plan("vol_c", "h4", "h4", PathCopy, GiB)},
		{name: "app all full streams", hosts: with(with(std(), "h1", GiB), "h2", GiB),
			vols: []Volume{mkVol("vol_a", "db", "shop", "h1", GiB), mkVol("vol_b", "db2", "shop", "h2", GiB)},
			req:  ForkRequest{Source: "shop", Name: "f"},
			want: plan("vol_a", "h1", "h3", PathStream, GiB)},
		{name: "app via clone without clone hosts", hosts: std(),
			vols: []Volume{mkVol("vol_a", "db", "shop", "h2", GiB), mkVol("vol_b", "db2", "shop", "h4", GiB)},
			req:  ForkRequest{Source: "shop", Name: "f", Via: PathClone}, err: ErrConflict, frags: []string{"can clone"}},
		{name: "app via copy", hosts: std(),
			vols: []Volume{mkVol("vol_a", "db", "shop", "h1", GiB)},
			req:  ForkRequest{Source: "shop", Name: "f", Via: PathCopy},
			want: plan("vol_a", "h1", "h1", PathCopy, GiB)},
		{name: "app with no ready volume", hosts: std(),
			vols: []Volume{{ID: "vol_a", Name: "db", App: "shop", Host: "h1", Size: GiB, State: VolumeCreating}},
			req:  ForkRequest{Source: "shop", Name: "f"}, err: ErrConflict, frags: []string{"no ready volume", "creating"}},
		{name: "unknown source", hosts: std(), vols: []Volume{mkVol("vol_a", "db", "shop", "h1", GiB)},
			req: ForkRequest{Source: "nope", Name: "f"}, err: ErrNotFound, frags: []string{`"nope"`}},
		{name: "empty source", hosts: std(), req: ForkRequest{Name: "f"}, err: ErrInvalid},
		{name: "source not ready", hosts: std(),
			vols: []Volume{{ID: "vol_a", Name: "db", Host: "h1", Size: GiB, State: VolumeCreating}},
			req:  ForkRequest{Source: "db", Name: "f"}, err: ErrConflict, frags: []string{"is creating, not ready"}},
		{name: "source deleting", hosts: std(),
			vols: []Volume{{ID: "vol_a", Name: "db", Host: "h1", Size: GiB, State: VolumeDeleting}},
			req:  ForkRequest{Source: "vol_a", Name: "f"}, err: ErrConflict, frags: []string{"deleting"}},
		{name: "name taken", hosts: std(), vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)},
			req: ForkRequest{Source: "db", Name: "db"}, err: ErrExists, frags: []string{"vol_a"}},
		{name: "bad name", hosts: std(), vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)},
			req: ForkRequest{Source: "db", Name: "Bad!"}, err: ErrInvalid},
		{name: "bad app", hosts: std(), vols: []Volume{mkVol("vol_a", "db", "", "h1", GiB)},
			req: ForkRequest{Source: "db", Name: "f", App: "-x"}, err: ErrInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newCatalog(t, c.hosts, c.vols, c.dead...)
			if c.v != 0 {
				mustApply(t, f, CmdSetCatalogVersion, SetCatalogVersionCmd{Header: hdr(), Version: c.v})
				for _, h := range c.hosts { // as the leader does after a bump
					mustApply(t, f, CmdUpsertHost, UpsertHostCmd{Header: hdr(), Host: h})
				}
			}
			f.View(func(s *State) {
				var first Plan
				for i := 0; i < 20; i++ { // map order must never matter
					got, err := PlanFork(s, c.req)
					if c.err != nil {
						wantErr(t, err, c.err, c.frags...)
						continue
					}
					if err != nil {
						t.Fatalf("PlanFork: %v", err)
					}
					if got != c.want {
						t.Fatalf("plan:\n got %+v\nwant %+v", got, c.want)
					}
					if i == 0 {
						first = got
					} else if got != first {
						t.Fatalf("nondeterministic plan")
					}
				}
			})
		})
	}
}

func TestPlanForkNilState(t *testing.T) {
	if _, err := PlanFork(nil, ForkRequest{Source: "x", Name: "y"}); err == nil {
		t.Fatal("want error")
	}
}

func TestFormatNames(t *testing.T) {
	many := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("n%02d", n-1-i) // reversed: the output is sorted
		}
		return out
	}
	for _, c := range []struct {
		names []string
		want  string
	}{
		{nil, "none"},
		{[]string{"h1"}, "h1"},
		{[]string{"h3", "h1", "h2"}, "h1, h2, h3"},
		{many(10), "n00, n01, n02, n03, n04, n05, n06, n07, n08, n09"},
		{many(11), "n00, n01, n02, n03, n04, n05, n06, n07, n08, n09 and 1 more"},
		{many(25), "n00, n01, n02, n03, n04, n05, n06, n07, n08, n09 and 15 more"},
	} {
		in := slices.Clone(c.names)
		if got := FormatNames(c.names); got != c.want {
			t.Errorf("FormatNames(%v) = %q, want %q", c.names, got, c.want)
		}
		if !slices.Equal(in, c.names) {
			t.Errorf("FormatNames sorted its argument: %v", c.names)
		}
	}
}

func TestFormatBytes(t *testing.T) {
	for _, c := range []struct {
		n    int64
		want string
	}{{0, "0 B"}, {1023, "1023 B"}, {4096, "4.0 KiB"}, {512 * MiB, "512 MiB"}, {GiB, "1.0 GiB"}, {15 * GiB / 10, "1.5 GiB"}, {10 * GiB, "10 GiB"}} {
		if got := FormatBytes(c.n); got != c.want {
			t.Errorf("FormatBytes(%d) = %q, want %q", c.n, got, c.want)
		}
	}
}

func TestSnapshotCost(t *testing.T) {
	thick := Host{SnapshotPermille: 200, SnapshotMin: 64 * MiB, SnapshotGrain: 4 * MiB}
	for _, tc := range []struct {
		name string
		h    Host
		size int64
		want int64
	}{
		{"thick: 20 %, on the extent grid", thick, GiB, 208 * MiB},
		{"thick: the minimum", thick, 100 * MiB, 64 * MiB},
		{"thick: never more than the volume plus an extent per 64 MiB", thick, 32 * MiB, 36 * MiB},
		{"thick: a tiny volume takes one extent", Host{SnapshotPermille: 200, SnapshotGrain: 4 * MiB}, 4096, 4 * MiB},
		{"full copy", Host{SnapshotPermille: 1000}, 3 * GiB, 3 * GiB},
		{"nothing advertised", Host{}, GiB, 0},
		{"zero size", thick, 0, 0},
		{"figures out of range are clamped", Host{SnapshotPermille: 1 << 62, SnapshotMin: -5, SnapshotGrain: -1}, GiB, 4 * GiB},
		{"past 1000 permille the volume plus its extents caps it", Host{SnapshotPermille: 1500, SnapshotGrain: 4 * MiB}, GiB, GiB + 68*MiB},
		{"a size past 1 PiB cannot overflow", Host{SnapshotPermille: 1000}, 1 << 62, 1 << 50},
	} {
		if got := SnapshotCost(tc.h, tc.size); got != tc.want {
			t.Errorf("%s: SnapshotCost(%d) = %d, want %d", tc.name, tc.size, got, tc.want)
		}
	}
}
