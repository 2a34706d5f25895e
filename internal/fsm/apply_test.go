package fsm

import (
	"github.com/hashicorp/raft"

	"fmt"
	"reflect"
	"strings"
	"testing"
)

func getHost(f *FSM, id string) (h Host, ok bool) {
	f.View(func(s *State) { h, ok = s.Host(id) })
	return
}

func getVol(f *FSM, id string) (v Volume, ok bool) {
	f.View(func(s *State) { v, ok = s.Volume(id) })
	return
}

func getFork(f *FSM, id string) (fk Fork, ok bool) {
	f.View(func(s *State) { fk, ok = s.Fork(id) })
	return
}

func used(f *FSM, host string) (u int64) {
	f.View(func(s *State) { u = s.Used(host) })
	return
}

func TestUpsertHost(t *testing.T) {
	f := New(nil)
	h := mkHost("node-1", "eu-west", true, 10*GiB)
	res := mustApply(t, f, CmdUpsertHost, UpsertHostCmd{Header: Header{RequestID: "r1", Time: 42}, Host: h})
	got := res.Value.(*Host)
	want := h
	want.UpdatedAt = 42
	if *got != want {
		t.Fatalf("got %+v want %+v", *got, want)
	}
	// Update: the host keeps its Alive and UpdatedAt; only SetHostAlive
	// changes liveness.
	h.Budget, h.Alive, h.UpdatedAt, h.APIAddr = 20*GiB, false, 7, "127.0.0.1:9"
	mustApply(t, f, CmdUpsertHost, UpsertHostCmd{Header: Header{RequestID: "r2", Time: 43}, Host: h})
	if g, _ := getHost(f, "node-1"); g.Budget != 20*GiB || g.APIAddr != "127.0.0.1:9" || !g.Alive || g.UpdatedAt != 42 {
		t.Fatalf("after update: %+v", g)
	}
	mustApply(t, f, CmdSetHostAlive, SetHostAliveCmd{Header: Header{RequestID: "r3", Time: 44}, ID: "node-1"})
	h.Alive = true
	mustApply(t, f, CmdUpsertHost, UpsertHostCmd{Header: Header{RequestID: "r4", Time: 45}, Host: h})
	if g, _ := getHost(f, "node-1"); g.Alive || g.UpdatedAt != 44 {
		t.Fatalf("re-registration revived a dead host: %+v", g)
	}
	for _, c := range []struct {
		name string
		h    Host
		frag string
	}{
		{"empty id", Host{Region: "us"}, "host id is empty"},
		{"bad id", Host{ID: "a b", Region: "us"}, "a b"},
		{"long id", Host{ID: strings.Repeat("a", 64), Region: "us"}, "at most 63"},
		{"no region", Host{ID: "h"}, "region is empty"},
		{"negative budget", Host{ID: "h", Region: "us", Budget: -1}, "negative"},
	} {
		t.Run(c.name, func(t *testing.T) {
			res := apply(t, f, CmdUpsertHost, UpsertHostCmd{Header: hdr(), Host: c.h})
			wantErr(t, res.Err, ErrInvalid, c.frag)
			if res.Value != nil {
				t.Fatalf("value with error: %v", res.Value)
			}
		})
	}
}

func TestRemoveHostAndSetAlive(t *testing.T) {
	f := newCatalog(t, []Host{mkHost("h1", "us", true, 10*GiB), mkHost("h2", "us", true, 10*GiB)},
		[]Volume{mkVol("vol_a", "db", "", "h1", GiB)})
	wantErr(t, apply(t, f, CmdRemoveHost, RemoveHostCmd{Header: hdr(), ID: "h9"}).Err, ErrNotFound, "h9")
	wantErr(t, apply(t, f, CmdRemoveHost, RemoveHostCmd{Header: hdr(), ID: "h1"}).Err, ErrConflict, "1 volume")
	res := mustApply(t, f, CmdRemoveHost, RemoveHostCmd{Header: hdr(), ID: "h2"})
	if res.Value.(*Host).ID != "h2" {
		t.Fatalf("value %+v", res.Value)
	}
	if _, ok := getHost(f, "h2"); ok {
		t.Fatal("h2 still there")
	}

	wantErr(t, apply(t, f, CmdSetHostAlive, SetHostAliveCmd{Header: hdr(), ID: "h2"}).Err, ErrNotFound)
	res = mustApply(t, f, CmdSetHostAlive, SetHostAliveCmd{Header: Header{RequestID: "alive-1", Time: 99}, ID: "h1", Alive: false})
	if h := res.Value.(*Host); h.Alive || h.UpdatedAt != 99 {
		t.Fatalf("host %+v", h)
	}
	if h, _ := getHost(f, "h1"); h.Alive {
		t.Fatal("h1 still alive in state")
	}
	// Once its volume is gone the host can leave.
	mustApply(t, f, CmdSetVolumeState, SetVolumeStateCmd{Header: hdr(), ID: "vol_a", State: VolumeDeleting})
	mustApply(t, f, CmdDeleteVolume, DeleteVolumeCmd{Header: hdr(), ID: "vol_a"})
	mustApply(t, f, CmdRemoveHost, RemoveHostCmd{Header: hdr(), ID: "h1"})
}

func TestCreateVolume(t *testing.T) {
	hosts := []Host{
		mkHost("a1", "us", false, 10*GiB),
		mkHost("a2", "us", false, 10*GiB),
		mkHost("b1", "eu", false, 20*GiB),
		mkHost("c1", "eu", false, 100*GiB),
	}
	f := newCatalog(t, hosts, nil, "c1")
	res := mustApply(t, f, CmdCreateVolume, CreateVolumeCmd{Header: Header{RequestID: "cv1", Time: 5},
		Volume: Volume{ID: "vol_1", Name: "db", App: "shop", Host: "a2", Size: GiB}})
	v := res.Value.(*Volume)
	if v.State != VolumeCreating || v.CreatedAt != 5 || v.Host != "a2" {
		t.Fatalf("volume %+v", v)
	}
	if u := used(f, "a2"); u != GiB {
		t.Fatalf("used %d", u)
	}

	// Placement: region hint first, then most free, then id; dead hosts never.
	place := func(name, region string, size int64) (string, error) {
		res := apply(t, f, CmdCreateVolume, CreateVolumeCmd{Header: hdr(), Region: region,
			Volume: Volume{ID: "vol_" + strings.ReplaceAll(name, "-", "_"), Name: name, Size: size}})
		if res.Err != nil {
			return "", res.Err
		}
		return res.Value.(*Volume).Host, nil
	}
	for _, c := range []struct {
		name, region string
		size         int64
		want         string
	}{
		{"p1", "", GiB, "b1"},        // most free (c1 is dead)
		{"p2", "us", GiB, "a1"},      // us: a1 10 free, a2 9 free
		{"p3", "us", GiB, "a1"},      // a1 9, a2 9 -> tie by id
		{"p4", "us", GiB, "a2"},      // a1 8, a2 9
		{"p5", "us", 15 * GiB, "b1"}, // no us host has room: elsewhere
	} {
		got, err := place(c.name, c.region, c.size)
		if err != nil || got != c.want {
			t.Fatalf("%s: placed on %q (%v), want %s", c.name, got, err, c.want)
		}
	}
	_, err := place("p6", "", 50*GiB)
	wantErr(t, err, ErrNoRoom, "need 50 GiB, most free is 8.0 GiB on a1")
	// A region no host has is a typo, not a wish to place anywhere.
	_, err = place("p7", "mars", GiB)
	wantErr(t, err, ErrNotFound, `no host in region "mars"`)

	bad := []struct {
		name string
		v    Volume
		err  error
		frag string
	}{
		{"upper case", Volume{ID: "vol_x", Name: "DB", Host: "a1", Size: GiB}, ErrInvalid, "DB"},
		{"leading dash", Volume{ID: "vol_x", Name: "-db", Host: "a1", Size: GiB}, ErrInvalid, "-db"},
		{"empty name", Volume{ID: "vol_x", Host: "a1", Size: GiB}, ErrInvalid, "empty"},
		{"64 chars", Volume{ID: "vol_x", Name: strings.Repeat("a", 64), Host: "a1", Size: GiB}, ErrInvalid, "at most 63"},
		{"reserved prefix", Volume{ID: "vol_x", Name: "vol_y", Host: "a1", Size: GiB}, ErrInvalid, "reserved"},
		{"bad app", Volume{ID: "vol_x", Name: "x", App: "A", Host: "a1", Size: GiB}, ErrInvalid, "app"},
		{"zero size", Volume{ID: "vol_x", Name: "x", Host: "a1"}, ErrInvalid, "> 0"},
		{"odd size", Volume{ID: "vol_x", Name: "x", Host: "a1", Size: 4095}, ErrInvalid, "multiple of 4096"},
		{"bad id", Volume{ID: "v1", Name: "x", Host: "a1", Size: GiB}, ErrInvalid, "vol_"},
		{"bare prefix", Volume{ID: "vol_", Name: "x", Host: "a1", Size: GiB}, ErrInvalid, "vol_"},
		{"bad state", Volume{ID: "vol_x", Name: "x", Host: "a1", Size: GiB, State: VolumeFailed}, ErrInvalid, "failed"},
		{"dup id", Volume{ID: "vol_1", Name: "x", Host: "a1", Size: GiB}, ErrExists, "vol_1"},
		{"dup name", Volume{ID: "vol_x", Name: "db", Host: "a1", Size: GiB}, ErrExists, `"db"`},
		{"unknown host", Volume{ID: "vol_x", Name: "x", Host: "zz", Size: GiB}, ErrNotFound, `host "zz" (hosts: a1, a2, b1, c1)`},
		{"dead host", Volume{ID: "vol_x", Name: "x", Host: "c1", Size: GiB}, ErrConflict, "down"},
		{"host full", Volume{ID: "vol_x", Name: "x", Host: "a1", Size: 9 * GiB}, ErrNoRoom, "need 9.0 GiB"},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			res := apply(t, f, CmdCreateVolume, CreateVolumeCmd{Header: hdr(), Volume: c.v})
			wantErr(t, res.Err, c.err, c.frag)
		})
	}
	// Boundary names are fine.
	for i, name := range []string{"a", strings.Repeat("z", 63), "0db.v-1_x"} {
		mustApply(t, f, CmdCreateVolume, CreateVolumeCmd{Header: hdr(), Volume: Volume{ID: fmt.Sprintf("vol_ok%d", i), Name: name, Host: "b1", Size: 4096}})
	}
}

func TestSetVolumeStateAndDelete(t *testing.T) {
	f := newCatalog(t, []Host{mkHost("h1", "us", true, 2*GiB)},
		[]Volume{mkVol("vol_a", "db", "", "h1", GiB), mkVol("vol_b", "db2", "", "h1", GiB)})
	wantErr(t, apply(t, f, CmdSetVolumeState, SetVolumeStateCmd{Header: hdr(), ID: "vol_q", State: VolumeReady}).Err, ErrNotFound)
	wantErr(t, apply(t, f, CmdSetVolumeState, SetVolumeStateCmd{Header: hdr(), ID: "vol_a", State: "gone"}).Err, ErrInvalid, "gone")

	// Every transition from every state: a volume is made, then ready or
	// failed; deleting is final; the same state again is a no-op.
	all := []VolumeState{VolumeCreating, VolumeReady, VolumeFailed, VolumeDeleting}
	allowed := map[[2]VolumeState]bool{
		{VolumeCreating, VolumeReady}: true, {VolumeCreating, VolumeFailed}: true, {VolumeCreating, VolumeDeleting}: true,
		{VolumeReady, VolumeDeleting}: true, {VolumeFailed, VolumeDeleting}: true,
	}
	for _, from := range all {
		for _, to := range all {
			g := newCatalog(t, []Host{mkHost("h1", "us", true, 2*GiB)}, []Volume{{ID: "vol_x", Name: "x", Host: "h1", Size: GiB, State: from}})
			res := apply(t, g, CmdSetVolumeState, SetVolumeStateCmd{Header: hdr(), ID: "vol_x", State: to})
			switch {
			case from == to || allowed[[2]VolumeState{from, to}]:
				if res.Err != nil || res.Value.(*Volume).State != to {
					t.Errorf("%s -> %s: %+v, %v", from, to, res.Value, res.Err)
				}
			default:
				wantErr(t, res.Err, ErrConflict, fmt.Sprintf("is %s and cannot become %s", from, to))
			}
		}
	}

	mustApply(t, f, CmdSetVolumeState, SetVolumeStateCmd{Header: hdr(), ID: "vol_a", State: VolumeDeleting})
	if u := used(f, "h1"); u != 2*GiB {
		t.Fatalf("deleting still counts: used %d", u)
	}
	// A late "ready" (a create that raced the delete) cannot undo it.
	wantErr(t, apply(t, f, CmdSetVolumeState, SetVolumeStateCmd{Header: hdr(), ID: "vol_a", State: VolumeReady}).Err, ErrConflict)

	// Only a volume being deleted, or failed, can be purged.
	wantErr(t, apply(t, f, CmdDeleteVolume, DeleteVolumeCmd{Header: hdr(), ID: "vol_q"}).Err, ErrNotFound)
	wantErr(t, apply(t, f, CmdDeleteVolume, DeleteVolumeCmd{Header: hdr(), ID: "vol_b"}).Err, ErrConflict, "vol_b is ready")
	res := mustApply(t, f, CmdDeleteVolume, DeleteVolumeCmd{Header: hdr(), ID: "vol_a"})
	if res.Value.(*Volume).ID != "vol_a" {
		t.Fatalf("value %+v", res.Value)
	}
	if u := used(f, "h1"); u != GiB {
		t.Fatalf("after delete used %d", u)
	}
	// A failed volume frees its space and can be purged.
	mustApply(t, f, CmdCreateVolume, CreateVolumeCmd{Header: hdr(), Volume: Volume{ID: "vol_c", Name: "c", Host: "h1", Size: GiB}})
	mustApply(t, f, CmdSetVolumeState, SetVolumeStateCmd{Header: hdr(), ID: "vol_c", State: VolumeFailed})
	if u := used(f, "h1"); u != GiB {
		t.Fatalf("failed frees: used %d", u)
	}
	mustApply(t, f, CmdDeleteVolume, DeleteVolumeCmd{Header: hdr(), ID: "vol_c"})
	// The name is free again.
	mustApply(t, f, CmdCreateVolume, CreateVolumeCmd{Header: hdr(), Volume: Volume{ID: "vol_d", Name: "c", Host: "h1", Size: GiB}})
	f.View(func(s *State) {
		if err := s.checkIndexes(); err != nil {
			t.Fatal(err)
		}
	})
}

func forkCmd(src, name string) CreateForkCmd {
	reqSeq++
	return CreateForkCmd{Header: hdr(), ForkID: fmt.Sprintf("fork_%d", reqSeq), TargetVolumeID: fmt.Sprintf("vol_t%d", reqSeq),
		Request: ForkRequest{Source: src, Name: name}}
}

func TestCreateForkRecordsForkAndVolume(t *testing.T) {
	f := newCatalog(t, []Host{mkHost("h1", "us", true, 10*GiB)}, []Volume{mkVol("vol_a", "db", "shop", "h1", GiB)})
	c := CreateForkCmd{Header: Header{RequestID: "fk1", Time: 777}, ForkID: "fork_1", TargetVolumeID: "vol_new",
		Request: ForkRequest{Source: "shop", Name: "staging"}}
	res := mustApply(t, f, CmdCreateFork, c)
	wantFork := Fork{ID: "fork_1", Request: "shop", Name: "staging", SourceVolume: "vol_a", SourceHost: "h1",
		TargetVolume: "vol_new", TargetHost: "h1", Path: PathClone, State: ForkPending, BytesTotal: GiB, CreatedAt: 777, UpdatedAt: 777}
	if got := *res.Value.(*Fork); got != wantFork {
		t.Fatalf("fork\n got %+v\nwant %+v", got, wantFork)
	}
	if got, _ := getFork(f, "fork_1"); got != wantFork {
		t.Fatalf("stored fork %+v", got)
	}
	wantVol := Volume{ID: "vol_new", Name: "staging", Host: "h1", Size: GiB, State: VolumeCreating,
		Origin: "vol_a", ForkID: "fork_1", CreatedAt: 777}
	if got, _ := getVol(f, "vol_new"); got != wantVol {
		t.Fatalf("volume\n got %+v\nwant %+v", got, wantVol)
	}
	if u := used(f, "h1"); u != 2*GiB {
		t.Fatalf("reservation: used %d", u)
	}
	// Explicit app for the new volume.
	c2 := forkCmd("db", "pr-1")
	c2.Request.App = "review"
	res = mustApply(t, f, CmdCreateFork, c2)
	if v, _ := getVol(f, res.Value.(*Fork).TargetVolume); v.App != "review" {
		t.Fatalf("app %q", v.App)
	}
	// A fork's own rate limit is kept on the fork for the executors.
	c3 := forkCmd("db", "pr-2")
	c3.Request.RateLimit = 8 << 20
	res = mustApply(t, f, CmdCreateFork, c3)
	if got, _ := getFork(f, res.Value.(*Fork).ID); got.RateLimit != 8<<20 {
		t.Fatalf("rate limit %d, want %d", got.RateLimit, 8<<20)
	}

	bad := []struct {
		name string
		mod  func(c *CreateForkCmd)
		err  error
		frag string
	}{
		{"dup name", func(c *CreateForkCmd) { c.Request.Name = "staging" }, ErrExists, "staging"},
		{"bad fork id", func(c *CreateForkCmd) { c.ForkID = "f1" }, ErrInvalid, "fork_"},
		{"bad target id", func(c *CreateForkCmd) { c.TargetVolumeID = "x" }, ErrInvalid, "vol_"},
		{"dup fork id", func(c *CreateForkCmd) { c.ForkID = "fork_1" }, ErrExists, "fork_1"},
		{"target id taken", func(c *CreateForkCmd) { c.TargetVolumeID = "vol_a" }, ErrExists, "vol_a"},
		{"unknown source", func(c *CreateForkCmd) { c.Request.Source = "ghost" }, ErrNotFound, "ghost"},
		{"source not ready", func(c *CreateForkCmd) { c.Request.Source = "staging" }, ErrConflict, "creating"},
		{"negative rate limit", func(c *CreateForkCmd) { c.Request.RateLimit = -1 }, ErrInvalid, "rate limit"},
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			c := forkCmd("db", "other")
			b.mod(&c)
			var before int
			f.View(func(s *State) { before = len(s.volumes) + len(s.forks) })
			wantErr(t, apply(t, f, CmdCreateFork, c).Err, b.err, b.frag)
			f.View(func(s *State) {
				if len(s.volumes)+len(s.forks) != before {
					t.Fatal("refused fork left records behind")
				}
			})
		})
	}
}

func TestForkLifecycle(t *testing.T) {
	f := newCatalog(t, []Host{mkHost("h1", "us", false, 10*GiB), mkHost("h2", "us", false, 10*GiB)},
		[]Volume{mkVol("vol_a", "db", "", "h1", 4*GiB)})
	okFork := mustApply(t, f, CmdCreateFork, forkCmd("db", "good")).Value.(*Fork)
	badFork := mustApply(t, f, CmdCreateFork, forkCmd("db", "bad")).Value.(*Fork)
	if okFork.Path != PathCopy || badFork.Path != PathStream || badFork.TargetHost != "h2" {
		t.Fatalf("paths %s %s->%s", okFork.Path, badFork.Path, badFork.TargetHost)
	}

	wantErr(t, apply(t, f, CmdForkProgress, ForkProgressCmd{Header: hdr(), ForkID: "fork_nope"}).Err, ErrNotFound)
	wantErr(t, apply(t, f, CmdForkProgress, ForkProgressCmd{Header: hdr(), ForkID: okFork.ID, BytesDone: -1}).Err, ErrInvalid)
	res := mustApply(t, f, CmdForkProgress, ForkProgressCmd{Header: Header{RequestID: "p1", Time: 50}, ForkID: okFork.ID, BytesDone: GiB, WireBytes: 10})
	if fk := res.Value.(*Fork); fk.State != ForkRunning || fk.BytesDone != GiB || fk.BytesTotal != 4*GiB || fk.WireBytes != 10 || fk.UpdatedAt != 50 {
		t.Fatalf("progress %+v", fk)
	}
	var active []Fork
	f.View(func(s *State) { active = s.ActiveForks() })
	if len(active) != 2 {
		t.Fatalf("active %d", len(active))
	}
	// A volume in use by an active fork cannot be purged, nor marked for
	// deletion (source or target), so no delete slips in under a fork.
	wantErr(t, apply(t, f, CmdDeleteVolume, DeleteVolumeCmd{Header: hdr(), ID: "vol_a"}).Err, ErrConflict, "fork_")
	// Nor failed or made ready behind the fork's back: the fork's end sets
	// its target, and a failed source would have its data removed.
	for _, id := range []string{"vol_a", okFork.TargetVolume} {
		for _, st := range []VolumeState{VolumeDeleting, VolumeFailed} {
			wantErr(t, apply(t, f, CmdSetVolumeState, SetVolumeStateCmd{Header: hdr(), ID: id, State: st}).Err, ErrConflict, "forks cancel")
		}
	}
	wantErr(t, apply(t, f, CmdSetVolumeState, SetVolumeStateCmd{Header: hdr(), ID: okFork.TargetVolume, State: VolumeReady}).Err, ErrConflict, "forks cancel")

	wantErr(t, apply(t, f, CmdFinishFork, FinishForkCmd{Header: hdr(), ForkID: "fork_nope", OK: true}).Err, ErrNotFound)
	res = mustApply(t, f, CmdFinishFork, FinishForkCmd{Header: Header{RequestID: "fin1", Time: 60}, ForkID: okFork.ID, OK: true})
	done := *res.Value.(*Fork)
	if done.State != ForkReady || done.BytesDone != 4*GiB || done.FinishedAt != 60 {
		t.Fatalf("finished %+v", done)
	}
	if v, _ := getVol(f, okFork.TargetVolume); v.State != VolumeReady {
		t.Fatalf("target %s", v.State)
	}

	h2Used := used(f, "h2")
	res = mustApply(t, f, CmdFinishFork, FinishForkCmd{Header: hdr(), ForkID: badFork.ID, Error: "stream: connection reset"})
	if fk := res.Value.(*Fork); fk.State != ForkFailed || fk.Error != "stream: connection reset" {
		t.Fatalf("failed fork %+v", fk)
	}
	if v, _ := getVol(f, badFork.TargetVolume); v.State != VolumeFailed {
		t.Fatalf("target %s", v.State)
	}
	if u := used(f, "h2"); u != h2Used-4*GiB {
		t.Fatalf("failed target still reserved: %d", u)
	}

	// Finishing again, or late progress, changes nothing.
	again := mustApply(t, f, CmdFinishFork, FinishForkCmd{Header: hdr(), ForkID: okFork.ID, OK: false, Error: "late"})
	if *again.Value.(*Fork) != done {
		t.Fatalf("refinish changed the fork: %+v", again.Value)
	}
	late := mustApply(t, f, CmdForkProgress, ForkProgressCmd{Header: hdr(), ForkID: okFork.ID, BytesDone: 1})
	if *late.Value.(*Fork) != done {
		t.Fatalf("late progress changed the fork: %+v", late.Value)
	}
	f.View(func(s *State) {
		if n := len(s.ActiveForks()); n != 0 {
			t.Fatalf("active forks %d", n)
		}
	})
	// Now the source can go.
	mustApply(t, f, CmdSetVolumeState, SetVolumeStateCmd{Header: hdr(), ID: "vol_a", State: VolumeDeleting})
	mustApply(t, f, CmdDeleteVolume, DeleteVolumeCmd{Header: hdr(), ID: "vol_a"})
	testSnapshotRestore(t, f)
}

func TestIdempotentRetry(t *testing.T) {
	f := newCatalog(t, []Host{mkHost("h1", "us", true, 10*GiB), mkHost("h2", "us", true, 10*GiB)},
		[]Volume{mkVol("vol_a", "db", "", "h1", GiB)})
	cmd := CreateForkCmd{Header: Header{RequestID: "same", Time: 1}, ForkID: "fork_1", TargetVolumeID: "vol_b",
		Request: ForkRequest{Source: "db", Name: "copy1"}}
	first := mustApply(t, f, CmdCreateFork, cmd)
	u := used(f, "h1")
	// A retry, even one the leader stamped with fresh ids, returns the first
	// result and has no effect.
	cmd.ForkID, cmd.TargetVolumeID, cmd.Time = "fork_2", "vol_c", 2
	second := apply(t, f, CmdCreateFork, cmd)
	if !reflect.DeepEqual(first, second) {
		t.Fatalf("retry result differs:\n%+v\n%+v", first, second)
	}
	if used(f, "h1") != u {
		t.Fatal("retry reserved space again")
	}
	if _, ok := getFork(f, "fork_2"); ok {
		t.Fatal("retry created a fork")
	}
	// Mutating a returned value does not touch the remembered result.
	first.Value.(*Fork).Name = "mutated"
	if third := apply(t, f, CmdCreateFork, cmd); third.Value.(*Fork).Name != "copy1" {
		t.Fatal("remembered result was mutated through the returned pointer")
	}

	// An error result is remembered too (deterministically, on every replica).
	bad := CreateVolumeCmd{Header: Header{RequestID: "bad-vol"}, Volume: Volume{ID: "vol_x", Name: "x", Host: "h1", Size: 100 * GiB}}
	e1 := apply(t, f, CmdCreateVolume, bad)
	wantErr(t, e1.Err, ErrNoRoom)
	mustApply(t, f, CmdUpsertHost, UpsertHostCmd{Header: hdr(), Host: mkHost("h1", "us", true, 1000*GiB)})
	e2 := apply(t, f, CmdCreateVolume, bad)
	if !reflect.DeepEqual(e1, e2) {
		t.Fatalf("error retry differs: %v vs %v", e1.Err, e2.Err)
	}
	wantErr(t, e2.Err, ErrNoRoom)

	// Without a RequestID there is no dedup.
	h := UpsertHostCmd{Host: mkHost("h3", "us", true, GiB)}
	mustApply(t, f, CmdUpsertHost, h)
	mustApply(t, f, CmdUpsertHost, h)

	// The memory survives a snapshot: the restored replica dedups alike.
	g := testSnapshotRestore(t, f)
	cmd.Request.Name = "copy9"
	if r := apply(t, g, CmdCreateFork, cmd); !reflect.DeepEqual(r, second) {
		t.Fatalf("restored replica did not dedup: %+v", r)
	}
}

func TestIdempotencyMemoryIsBounded(t *testing.T) {
	f := NewWithOptions(nil, 3)
	up := func(req string, budget int64) ApplyResult {
		return apply(t, f, CmdUpsertHost, UpsertHostCmd{Header: Header{RequestID: req}, Host: mkHost("h1", "us", true, budget)})
	}
	up("r0", 1)
	for i := 1; i <= 3; i++ {
		up(fmt.Sprintf("r%d", i), int64(i+1))
	}
	f.View(func(s *State) {
		if len(s.results) != 3 {
			t.Fatalf("remembered %d", len(s.results))
		}
		if err := s.checkIndexes(); err != nil {
			t.Fatal(err)
		}
	})
	// r0 was evicted: it applies again; r3 is still remembered.
	if r := up("r0", 100); r.Value.(*Host).Budget != 100 {
		t.Fatalf("evicted request not re-applied: %+v", r.Value)
	}
	if r := up("r3", 200); r.Value.(*Host).Budget != 4 {
		t.Fatalf("remembered request re-applied: %+v", r.Value)
	}
	for i := 0; i < 50; i++ { // exercise compaction
		up(fmt.Sprintf("x%d", i), 1)
	}
	f.View(func(s *State) {
		if err := s.checkIndexes(); err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, r := range s.rememberedResults() {
			ids = append(ids, r.RequestID)
		}
		if strings.Join(ids, ",") != "x47,x48,x49" {
			t.Fatalf("order %v", ids)
		}
	})
	testSnapshotRestore(t, f)
}

func TestBadEntries(t *testing.T) {
	f := newCatalog(t, []Host{mkHost("h1", "us", true, GiB)}, nil)
	for _, c := range []struct {
		name string
		data []byte
		err  bool
	}{
		{"empty", nil, true},
		{"type only", []byte{byte(CmdUpsertHost)}, true},
		{"bad json", append([]byte{byte(CmdCreateVolume)}, `{"volume":`...), true},
		{"wrong json type", append([]byte{byte(CmdCreateVolume)}, `{"volume":{"size":"big"}}`...), true},
		{"trailing junk", append([]byte{byte(CmdRemoveHost)}, `{"id":"x"} junk`...), true},
		{"null body", append([]byte{byte(CmdCreateFork)}, `null`...), true},
		{"unknown type", append([]byte{0x42}, `{}`...), true},
		{"type zero", []byte{0}, true},
		{"unknown type, ignorable", append([]byte{0x42 | byte(IgnoreUnknownFlag)}, `{}`...), false},
		{"unknown type, ignorable, junk body", []byte{0xFF, 0, 1, 2}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			res := applyRaw(f, c.data)
			if c.err {
				wantErr(t, res.Err, ErrInvalid)
			} else if !reflect.DeepEqual(res, ApplyResult{}) {
				t.Fatalf("want empty result, got %+v", res)
			}
		})
	}
	// A known type with the ignorable flag is applied as that type.
	res := applyRaw(f, entry(t, CmdRemoveHost|IgnoreUnknownFlag, RemoveHostCmd{ID: "h1"}))
	if res.Err != nil {
		t.Fatalf("flagged known command: %v", res.Err)
	}
	if res := f.Apply(nil).(ApplyResult); res.Err == nil {
		t.Fatal("nil log accepted")
	}
}

func TestDecode(t *testing.T) {
	data := entry(t, CmdSetHostAlive, SetHostAliveCmd{Header: Header{RequestID: "r", Time: 3}, ID: "h1", Alive: true})
	typ, cmd, err := Decode(data)
	if err != nil || typ != CmdSetHostAlive {
		t.Fatalf("decode: %v %v", typ, err)
	}
	want := &SetHostAliveCmd{Header: Header{RequestID: "r", Time: 3}, ID: "h1", Alive: true}
	if !reflect.DeepEqual(cmd, want) {
		t.Fatalf("got %+v", cmd)
	}
	if CmdCreateFork.String() != "CreateFork" || CommandType(0xC2).String() != "CommandType(66)|IgnoreUnknown" {
		t.Fatalf("names: %s %s", CmdCreateFork, CommandType(0xC2))
	}
	if _, err := Encode(CmdUpsertHost, make(chan int)); err == nil {
		t.Fatal("unencodable body accepted")
	}
}

// TestCapacityRace: 20 forks race for a host with room for 5. The log
// serializes them: exactly 5 land there, the rest elsewhere or ErrNoRoom,
// and no budget is ever exceeded.
func TestCapacityRace(t *testing.T) {
	f := newCatalog(t, []Host{
		mkHost("h1", "us", true, 6*GiB), // source (1 GiB) + room for 5
		mkHost("h2", "us", false, 3*GiB),
		mkHost("h3", "eu", false, 2*GiB+GiB/2),
	}, []Volume{mkVol("vol_src", "db", "", "h1", GiB)})
	budgets := map[string]int64{"h1": 6 * GiB, "h2": 3 * GiB, "h3": 2*GiB + GiB/2}
	placed := map[string]int{}
	noRoom := 0
	for i := 0; i < 20; i++ {
		res := apply(t, f, CmdCreateFork, forkCmd("db", fmt.Sprintf("race-%d", i)))
		switch {
		case res.Err == nil:
			placed[res.Value.(*Fork).TargetHost]++
		default:
			wantErr(t, res.Err, ErrNoRoom, "need 1.0 GiB, most free is 512 MiB on h3")
			noRoom++
		}
		f.View(func(s *State) {
			for h, b := range budgets {
				if s.Used(h) > b {
					t.Fatalf("after fork %d: %s used %d > budget %d", i, h, s.Used(h), b)
				}
			}
		})
	}
	if placed["h1"] != 5 || placed["h2"] != 3 || placed["h3"] != 2 || noRoom != 10 {
		t.Fatalf("placed %v, no room %d", placed, noRoom)
	}
	testSnapshotRestore(t, f)
}

func TestWatch(t *testing.T) {
	f := newCatalog(t, []Host{mkHost("h1", "us", true, GiB)}, nil)
	w := f.Watch()
	select {
	case <-w:
		t.Fatal("closed before any change")
	default:
	}
	// A refused command is no change.
	apply(t, f, CmdRemoveHost, RemoveHostCmd{Header: hdr(), ID: "nope"})
	select {
	case <-w:
		t.Fatal("closed by a refused command")
	default:
	}
	mustApply(t, f, CmdSetHostAlive, SetHostAliveCmd{Header: hdr(), ID: "h1"})
	select {
	case <-w:
	default:
		t.Fatal("not closed by a change")
	}
	w2 := f.Watch()
	if w2 == w {
		t.Fatal("same channel after a change")
	}
	data := persist(t, f)
	if err := f.Restore(readCloser{bytesReader(data)}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w2:
	default:
		t.Fatal("not closed by a restore")
	}
}

// TestDeterministicReplicas: two FSMs applying the same log agree byte for
// byte, whatever Go's map order did inside each.
func TestDeterministicReplicas(t *testing.T) {
	var log [][]byte
	add := func(typ CommandType, cmd any) { log = append(log, entry(t, typ, cmd)) }
	for i := 0; i < 12; i++ {
		add(CmdUpsertHost, UpsertHostCmd{Header: hdr(), Host: mkHost(fmt.Sprintf("h%02d", i), []string{"us", "eu"}[i%2], i%3 == 0, 8*GiB)})
	}
	for i := 0; i < 30; i++ {
		add(CmdCreateVolume, CreateVolumeCmd{Header: hdr(), Region: []string{"", "us", "eu"}[i%3],
			Volume: Volume{ID: fmt.Sprintf("vol_%03d", i), Name: fmt.Sprintf("v%d", i), App: fmt.Sprintf("app%d", i%4), Size: GiB, State: VolumeReady}})
	}
	for i := 0; i < 60; i++ {
		add(CmdCreateFork, forkCmd(fmt.Sprintf("app%d", i%5), fmt.Sprintf("f%d", i)))
	}
	a, b := New(nil), New(nil)
	for i, e := range log {
		// Same log, same indexes: the applied index is in the snapshot.
		ra := a.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: e}).(ApplyResult)
		rb := b.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: e}).(ApplyResult)
		if !reflect.DeepEqual(ra, rb) {
			t.Fatalf("entry %d: results differ: %+v vs %+v", i, ra, rb)
		}
	}
	if pa, pb := persist(t, a), persist(t, b); string(pa) != string(pb) {
		t.Fatal("replica snapshots differ")
	}
	testSnapshotRestore(t, a)
}

// A request id carries the request's digest: a retry with the same digest
// (or none, from an older client) gets the first result; another request
// under the same id is refused and changes nothing, also after a restore.
func TestIdempotencyDigest(t *testing.T) {
	f := NewWithOptions(nil, 10)
	up := func(digest string, budget int64) ApplyResult {
		return apply(t, f, CmdUpsertHost, UpsertHostCmd{Header: Header{RequestID: "host:k", Digest: digest}, Host: mkHost("h1", "us", true, budget)})
	}
	first := up("d1", 1)
	if first.Err != nil {
		t.Fatal(first.Err)
	}
	tests := []struct {
		name   string
		f      *FSM
		digest string
		budget int64
		err    error
	}{
		{"same digest", f, "d1", 2, nil},
		{"no digest", f, "", 3, nil},
		{"other digest", f, "d2", 4, ErrConflict},
		{"other digest after restore", testSnapshotRestore(t, f), "d2", 5, ErrConflict},
	}
	for _, tc := range tests {
		r := apply(t, tc.f, CmdUpsertHost, UpsertHostCmd{Header: Header{RequestID: "host:k", Digest: tc.digest}, Host: mkHost("h1", "us", true, tc.budget)})
		if tc.err != nil {
			wantErr(t, r.Err, tc.err, `idempotency key "k" was already used for a different request`)
		} else if !reflect.DeepEqual(r, first) {
			t.Errorf("%s: %+v, want the first result %+v", tc.name, r, first)
		}
		tc.f.View(func(s *State) {
			if h, _ := s.Host("h1"); h.Budget != 1 {
				t.Errorf("%s: budget %d: the retry was applied", tc.name, h.Budget)
			}
		})
	}
}

// FinishFork{OK} with a target that is no longer being created (only a
// forged or reordered log could get there) fails the fork instead of
// making a volume ready whose space may be someone else's.
func TestFinishForkNeedsCreatingTarget(t *testing.T) {
	f := newCatalog(t, []Host{mkHost("h1", "us", false, 2*GiB)}, []Volume{mkVol("vol_a", "db", "", "h1", GiB)})
	fk := mustApply(t, f, CmdCreateFork, forkCmd("db", "copy")).Value.(*Fork)
	f.mu.Lock()
	f.state.setVolumeState(f.state.volumes[fk.TargetVolume], VolumeFailed) // its space is free again
	f.mu.Unlock()
	mustApply(t, f, CmdCreateVolume, CreateVolumeCmd{Header: hdr(), Volume: Volume{ID: "vol_z", Name: "z", Host: "h1", Size: GiB}})
	res := mustApply(t, f, CmdFinishFork, FinishForkCmd{Header: hdr(), ForkID: fk.ID, OK: true})
	if got := res.Value.(*Fork); got.State != ForkFailed || !strings.Contains(got.Error, "is failed, not creating") {
		t.Fatalf("fork %+v", got)
	}
	if u := used(f, "h1"); u != 2*GiB {
		t.Fatalf("used %d: the host is overbooked", u)
	}
}
