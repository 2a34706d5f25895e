package fsm

import (
	"testing"
	"time"
)

func TestVolumeTTL(t *testing.T) {
	const now = int64(1_800_000_000_000_000_000)
	day := int64(24 * time.Hour)
	f := newCatalog(t, []Host{mkHost("h1", "us", true, 10*GiB)}, []Volume{mkVol("vol_a", "db", "shop", "h1", GiB)})

	// A volume created with a TTL expires relative to the leader's stamp.
	res := mustApply(t, f, CmdCreateVolume, CreateVolumeCmd{Header: Header{RequestID: "c1", Time: now},
		Volume: mkVol("vol_b", "scratch", "", "h1", GiB), TTL: day})
	if got := res.Value.(*Volume).ExpiresAt; got != now+day {
		t.Fatalf("created: expires_at %d, want %d", got, now+day)
	}
	// So does a fork's target.
	fc := forkCmd("db", "pr-7")
	fc.Time = now
	fc.Request.TTL = 3 * day
	fk := mustApply(t, f, CmdCreateFork, fc).Value.(*Fork)
	if v, _ := getVol(f, fk.TargetVolume); v.ExpiresAt != now+3*day {
		t.Fatalf("fork target: expires_at %d, want %d", v.ExpiresAt, now+3*day)
	}
	// Without a TTL nothing expires.
	plain := mustApply(t, f, CmdCreateFork, forkCmd("db", "pr-8")).Value.(*Fork)
	if v, _ := getVol(f, plain.TargetVolume); v.ExpiresAt != 0 {
		t.Fatalf("no ttl: expires_at %d", v.ExpiresAt)
	}

	for _, c := range []struct {
		name   string
		id     string
		ttl    int64
		time   int64
		want   int64
		err    error
		frag   string
		before func()
	}{
		{name: "set", id: "vol_a", ttl: day, time: now + 5, want: now + 5 + day},
		{name: "move", id: "vol_a", ttl: 2 * day, time: now + 6, want: now + 6 + 2*day},
		{name: "clear", id: "vol_a", ttl: 0, time: now + 7, want: 0},
		{name: "unknown", id: "vol_zz", ttl: day, err: ErrNotFound, frag: "vol_zz"},
		{name: "negative", id: "vol_a", ttl: -1, err: ErrInvalid, frag: "negative"},
		{name: "too long", id: "vol_a", ttl: MaxTTL + 1, err: ErrInvalid, frag: "100 years"},
		{name: "deleting", id: "vol_b", ttl: day, err: ErrConflict, frag: "being deleted", before: func() {
			mustApply(t, f, CmdSetVolumeState, SetVolumeStateCmd{Header: hdr(), ID: "vol_b", State: VolumeDeleting})
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.before != nil {
				c.before()
			}
			h := hdr()
			if c.time != 0 {
				h.Time = c.time
			}
			res := apply(t, f, CmdSetVolumeTTL, SetVolumeTTLCmd{Header: h, ID: c.id, TTL: c.ttl})
			if c.err != nil {
				wantErr(t, res.Err, c.err, c.frag)
				return
			}
			if res.Err != nil {
				t.Fatal(res.Err)
			}
			if got := res.Value.(*Volume).ExpiresAt; got != c.want {
				t.Fatalf("expires_at %d, want %d", got, c.want)
			}
			if v, _ := getVol(f, c.id); v.ExpiresAt != c.want {
				t.Fatalf("stored expires_at %d, want %d", v.ExpiresAt, c.want)
			}
		})
	}

	// Bad TTLs on create are refused and leave nothing behind.
	wantErr(t, apply(t, f, CmdCreateVolume, CreateVolumeCmd{Header: hdr(), Volume: mkVol("vol_c", "c", "", "h1", GiB), TTL: -5}).Err, ErrInvalid, "negative")
	bad := forkCmd("db", "pr-9")
	bad.Request.TTL = MaxTTL + 1
	wantErr(t, apply(t, f, CmdCreateFork, bad).Err, ErrInvalid, "100 years")
	if _, ok := getVol(f, "vol_c"); ok {
		t.Fatal("refused volume was created")
	}
	f.View(func(s *State) {
		if err := s.checkIndexes(); err != nil {
			t.Fatal(err)
		}
	})
	testSnapshotRestore(t, f)
}

func TestPruneForks(t *testing.T) {
	f := newCatalog(t, []Host{mkHost("h1", "us", false, 100*GiB)}, []Volume{mkVol("vol_a", "db", "", "h1", GiB)})
	mk := func(name string) string { return mustApply(t, f, CmdCreateFork, forkCmd("db", name)).Value.(*Fork).ID }
	finish := func(id string, at int64, ok bool) {
		mustApply(t, f, CmdFinishFork, FinishForkCmd{Header: Header{RequestID: "fin-" + id, Time: at}, ForkID: id, OK: ok, Error: "x"})
	}
	oldReady, oldFailed, newReady, running := mk("a"), mk("b"), mk("c"), mk("d")
	finish(oldReady, 100, true)
	finish(oldFailed, 150, false)
	finish(newReady, 300, true)
	mustApply(t, f, CmdForkProgress, ForkProgressCmd{Header: hdr(), ForkID: running, BytesDone: 1})

	wantErr(t, apply(t, f, CmdPruneForks, PruneForksCmd{Header: hdr()}).Err, ErrInvalid, "before")
	// The flag lets an older replica skip the command; this one applies it.
	mustApply(t, f, CmdPruneForks|IgnoreUnknownFlag, PruneForksCmd{Header: hdr(), Before: 200})
	for id, want := range map[string]bool{oldReady: false, oldFailed: false, newReady: true, running: true} {
		if _, ok := getFork(f, id); ok != want {
			t.Errorf("fork %s kept=%v, want %v", id, ok, want)
		}
	}
	// Volumes are not touched, even the one a pruned fork made.
	var n int
	f.View(func(s *State) { n = len(s.Volumes()) })
	if n != 5 {
		t.Fatalf("volumes %d, want 5", n)
	}
	// A running fork is never pruned, however old.
	mustApply(t, f, CmdPruneForks, PruneForksCmd{Header: hdr(), Before: 1 << 62})
	if _, ok := getFork(f, running); !ok {
		t.Fatal("running fork pruned")
	}
	if _, ok := getFork(f, newReady); ok {
		t.Fatal("finished fork kept past the cutoff")
	}
	f.View(func(s *State) {
		if err := s.checkIndexes(); err != nil {
			t.Fatal(err)
		}
	})
	testSnapshotRestore(t, f)
}
