package fsm

import (
	"reflect"
	"testing"
)

func TestAccessors(t *testing.T) {
	f := newCatalog(t, []Host{mkHost("h2", "us", true, 10*GiB), mkHost("h1", "us", true, 10*GiB)}, []Volume{
		mkVol("vol_c", "c", "shop", "h1", GiB),
		mkVol("vol_a", "a", "shop", "h2", GiB),
		mkVol("vol_b", "b", "blog", "h1", 2*GiB),
	})
	f.View(func(s *State) {
		ids := func(vs []Volume) (out []string) {
			for _, v := range vs {
				out = append(out, v.ID)
			}
			return
		}
		if got := ids(s.Volumes()); !reflect.DeepEqual(got, []string{"vol_a", "vol_b", "vol_c"}) {
			t.Fatalf("Volumes %v", got)
		}
		if got := ids(s.VolumesByApp("shop")); !reflect.DeepEqual(got, []string{"vol_a", "vol_c"}) {
			t.Fatalf("VolumesByApp %v", got)
		}
		if got := ids(s.VolumesOnHost("h1")); !reflect.DeepEqual(got, []string{"vol_b", "vol_c"}) {
			t.Fatalf("VolumesOnHost %v", got)
		}
		if hs := s.Hosts(); len(hs) != 2 || hs[0].ID != "h1" {
			t.Fatalf("Hosts %v", hs)
		}
		if v, ok := s.VolumeByName("b"); !ok || v.ID != "vol_b" {
			t.Fatalf("VolumeByName %v %v", v, ok)
		}
		if _, ok := s.VolumeByName("zz"); ok {
			t.Fatal("VolumeByName found a ghost")
		}
		if _, ok := s.Volume("vol_zz"); ok {
			t.Fatal("Volume found a ghost")
		}
		if _, ok := s.Host("zz"); ok {
			t.Fatal("Host found a ghost")
		}
		if _, ok := s.Fork("fork_zz"); ok {
			t.Fatal("Fork found a ghost")
		}
		if s.Used("h1") != 3*GiB || s.Free("h1") != 7*GiB || s.Free("zz") != 0 || s.Used("zz") != 0 {
			t.Fatalf("used/free %d %d", s.Used("h1"), s.Free("h1"))
		}
		// Copies: mutating a returned value leaves the catalog alone.
		v, _ := s.Volume("vol_a")
		v.Name = "changed"
		if w, _ := s.Volume("vol_a"); w.Name != "a" {
			t.Fatal("accessor returned a reference")
		}
	})
	// Free never goes negative when a budget shrinks below use.
	h := mkHost("h1", "us", true, GiB)
	mustApply(t, f, CmdUpsertHost, UpsertHostCmd{Header: hdr(), Host: h})
	f.View(func(s *State) {
		if s.Free("h1") != 0 {
			t.Fatalf("free %d", s.Free("h1"))
		}
	})
}

// A zero State is an empty catalog, not a panic.
func TestZeroState(t *testing.T) {
	var s State
	if len(s.Hosts())+len(s.Volumes())+len(s.Forks()) != 0 || s.Free("x") != 0 {
		t.Fatal("zero state not empty")
	}
	if _, err := PlanFork(&s, ForkRequest{Source: "x", Name: "y"}); err == nil {
		t.Fatal("planned from nothing")
	}
}
