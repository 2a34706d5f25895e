package fsm

import (
	"github.com/hashicorp/raft"

	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
)

// populated builds a catalog with every kind of record and state.
func populated(t testing.TB) *FSM {
	f := newCatalog(t, []Host{
		mkHost("h1", "us", true, 10*GiB),
		{ID: "h2", Region: "us", Backend: "lvm", Budget: 10 * GiB, Alive: true,
			SnapshotPermille: 200, SnapshotMin: 64 * MiB, SnapshotGrain: 4 * MiB},
		mkHost("h3", "eu", true, 10*GiB),
	}, []Volume{
		mkVol("vol_a", "db", "shop", "h1", GiB),
		mkVol("vol_b", "db2", "shop", "h3", 2*GiB),
		{ID: "vol_c", Name: "gone", Host: "h2", Size: GiB, State: VolumeFailed},
		{ID: "vol_d", Name: "old", App: "blog", Host: "h2", Size: GiB, State: VolumeDeleting, ExpiresAt: 12345},
	}, "h2")
	fk1 := mustApply(t, f, CmdCreateFork, forkCmd("shop", "s1")).Value.(*Fork)
	mustApply(t, f, CmdCreateFork, forkCmd("vol_b", "s2"))
	mustApply(t, f, CmdForkProgress, ForkProgressCmd{Header: hdr(), ForkID: fk1.ID, BytesDone: 4096})
	fk3 := mustApply(t, f, CmdCreateFork, CreateForkCmd{Header: hdr(), ForkID: "fork_s3", TargetVolumeID: "vol_s3",
		Request: ForkRequest{Source: "db", Name: "s3", Via: PathStream, App: "review", RateLimit: 1 << 20}}).Value.(*Fork)
	mustApply(t, f, CmdFinishFork, FinishForkCmd{Header: hdr(), ForkID: fk3.ID, Error: "boom"})
	apply(t, f, CmdCreateFork, forkCmd("nothing", "s4")) // remembered error
	mustApply(t, f, CmdSetCatalogVersion, SetCatalogVersionCmd{Header: hdr(), Version: CatalogVersion})
	mustApply(t, f, CmdRevokeToken, RevokeTokenCmd{Header: hdr(), ID: "tok_0000000000000001"})
	mustApply(t, f, CmdRevokeToken, RevokeTokenCmd{Header: hdr(), ID: "tok_0000000000000002", Expires: 4e9})
	return f
}

func TestSnapshotRestoreRoundTrip(t *testing.T) {
	f := populated(t)
	g := testSnapshotRestore(t, f)
	// Both go on identically.
	c := forkCmd("shop", "after")
	if a, b := apply(t, f, CmdCreateFork, c), apply(t, g, CmdCreateFork, c); !reflect.DeepEqual(a, b) || a.Err != nil {
		t.Fatalf("after restore: %+v vs %+v", a, b)
	}
	compareStates(t, f, g)

	// An empty catalog round-trips too.
	testSnapshotRestore(t, New(nil))
}

// TestPersistConcurrentWithApply: Persist runs while Apply goes on and
// writes the catalog as it was at Snapshot time.
func TestPersistConcurrentWithApply(t *testing.T) {
	f := populated(t)
	want := persist(t, f)
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var active []Fork
	f.View(func(s *State) { active = s.ActiveForks() })
	if len(active) == 0 {
		t.Fatal("populated catalog has no active fork")
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		// New records and changes to every kind of record Persist is reading.
		for i := 0; i < 200; i++ {
			apply(t, f, CmdCreateVolume, CreateVolumeCmd{Header: hdr(), Volume: Volume{ID: fmt.Sprintf("vol_c%d", i), Name: fmt.Sprintf("c%d", i), Host: "h1", Size: 4096}})
			apply(t, f, CmdSetVolumeState, SetVolumeStateCmd{Header: hdr(), ID: "vol_a", State: []VolumeState{VolumeReady, VolumeDeleting}[i%2]})
			apply(t, f, CmdSetHostAlive, SetHostAliveCmd{Header: hdr(), ID: "h3", Alive: i%2 == 0})
			apply(t, f, CmdUpsertHost, UpsertHostCmd{Header: hdr(), Host: mkHost("h1", "us", true, int64(10+i)*GiB)})
			for _, fk := range active {
				apply(t, f, CmdForkProgress, ForkProgressCmd{Header: hdr(), ForkID: fk.ID, BytesDone: int64(i)})
			}
			f.View(func(s *State) { _ = s.Volumes() })
		}
		for _, fk := range active {
			apply(t, f, CmdFinishFork, FinishForkCmd{Header: hdr(), ForkID: fk.ID, OK: true})
		}
	}()
	sink := &fakeSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if !bytes.Equal(sink.Bytes(), want) {
		t.Fatal("snapshot saw applies made after Snapshot()")
	}
}

// record frames one snapshot record.
func record(t byte, body string) []byte {
	b := []byte{t}
	b = binary.AppendUvarint(b, uint64(len(body)))
	return append(b, body...)
}

func TestRestoreRejectsAndSkips(t *testing.T) {
	good := persist(t, populated(t))
	head := []byte(snapMagic + "\x01")

	// An unknown record type from a newer node is skipped.
	withUnknown := append(append([]byte{}, head...), record(99, `{"future":true}`)...)
	withUnknown = append(withUnknown, good[len(head):]...)
	g := New(nil)
	if err := g.Restore(readCloser{bytes.NewReader(withUnknown)}); err != nil {
		t.Fatalf("unknown record: %v", err)
	}
	if again := persist(t, g); !bytes.Equal(again, good) {
		t.Fatal("restore with an unknown record lost data")
	}

	huge := append(append([]byte{}, head...), recHost)
	huge = binary.AppendUvarint(huge, 1<<40)
	for _, c := range []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"bad magic", []byte("NOTSNAP\x01\x00\x00")},
		{"future version", []byte(snapMagic + "\x09\x00\x00")},
		{"truncated", good[:len(good)-5]},
		{"no end record", good[:len(good)-2]},
		{"bad json", append(append([]byte{}, head...), record(recVolume, `{"id":`)...)},
		{"huge length", huge},
		{"duplicate host", append(append(append([]byte{}, head...), record(recHost, `{"id":"h1"}`)...), record(recHost, `{"id":"h1"}`)...)},
		{"result without id", append(append([]byte{}, head...), record(recResult, `{}`)...)},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := populated(t)
			before := persist(t, f)
			err := f.Restore(readCloser{bytes.NewReader(c.data)})
			if !errors.Is(err, ErrBadSnapshot) {
				t.Fatalf("want ErrBadSnapshot, got %v", err)
			}
			if after := persist(t, f); !bytes.Equal(before, after) {
				t.Fatal("failed restore changed the state")
			}
		})
	}
}

type failingSink struct{ fakeSink }

func (s *failingSink) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestPersistCancelsOnError(t *testing.T) {
	snap, _ := populated(t).Snapshot()
	sink := &failingSink{}
	if err := snap.Persist(sink); err == nil || !sink.cancelled || sink.closed {
		t.Fatalf("err %v cancelled %v closed %v", err, sink.cancelled, sink.closed)
	}
}

// The applied index survives a snapshot, so a restored follower's
// read-your-writes barrier knows how far its catalog has come.
func TestSnapshotKeepsAppliedIndex(t *testing.T) {
	f := New(nil)
	e := entry(t, CmdUpsertHost, UpsertHostCmd{Header: hdr(), Host: mkHost("h1", "us", true, GiB)})
	f.Apply(&raft.Log{Index: 42, Type: raft.LogCommand, Data: e})
	if got := f.AppliedIndex(); got != 42 {
		t.Fatalf("applied %d, want 42", got)
	}
	g := testSnapshotRestore(t, f)
	if got := g.AppliedIndex(); got != 42 {
		t.Fatalf("restored applied index %d, want 42", got)
	}
}
