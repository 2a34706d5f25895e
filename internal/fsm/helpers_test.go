package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

const (
	MiB int64 = 1 << 20
	GiB int64 = 1 << 30
)

// mkHost is an alive host.
func mkHost(id, region string, clone bool, budget int64) Host {
	backend := "file"
	if clone {
		backend = "lvm-thin"
	}
	return Host{ID: id, Region: region, Backend: backend, CanClone: clone, Budget: budget, Alive: true}
}

// mkVol is a ready volume.
func mkVol(id, name, app, host string, size int64) Volume {
	return Volume{ID: id, Name: name, App: app, Host: host, Size: size, State: VolumeReady}
}

var reqSeq int

// entry encodes a command, stamping a fresh RequestID unless one is set.
func entry(t testing.TB, typ CommandType, cmd any) []byte {
	t.Helper()
	b, err := Encode(typ, cmd)
	if err != nil {
		t.Fatalf("encode: %v", err)
	}
	return b
}

var logIndex uint64

func applyRaw(f *FSM, data []byte) ApplyResult {
	logIndex++
	res, ok := f.Apply(&raft.Log{Index: logIndex, Type: raft.LogCommand, Data: data}).(ApplyResult)
	if !ok {
		panic("Apply returned a non-ApplyResult")
	}
	return res
}

func apply(t testing.TB, f *FSM, typ CommandType, cmd any) ApplyResult {
	t.Helper()
	return applyRaw(f, entry(t, typ, cmd))
}

// mustApply fails the test if the command is refused.
func mustApply(t testing.TB, f *FSM, typ CommandType, cmd any) ApplyResult {
	t.Helper()
	res := apply(t, f, typ, cmd)
	if res.Err != nil {
		t.Fatalf("apply %v: %v", typ, res.Err)
	}
	return res
}

func hdr() Header {
	reqSeq++
	return Header{RequestID: fmt.Sprintf("req-%d", reqSeq), Time: int64(1_700_000_000_000_000_000 + reqSeq)}
}

// newCatalog builds an FSM holding hosts and volumes; hosts named in dead
// are marked down after their volumes are placed. Volumes keep their given
// state (only creating/ready can be created; others are set afterwards).
func newCatalog(t testing.TB, hosts []Host, vols []Volume, dead ...string) *FSM {
	t.Helper()
	f := New(nil)
	for _, h := range hosts {
		mustApply(t, f, CmdUpsertHost, UpsertHostCmd{Header: hdr(), Host: h})
	}
	for _, v := range vols {
		st := v.State
		if st == VolumeFailed || st == VolumeDeleting {
			v.State = VolumeCreating // the only state both can follow
		}
		mustApply(t, f, CmdCreateVolume, CreateVolumeCmd{Header: hdr(), Volume: v})
		if st != v.State {
			mustApply(t, f, CmdSetVolumeState, SetVolumeStateCmd{Header: hdr(), ID: v.ID, State: st})
		}
	}
	for _, id := range dead {
		mustApply(t, f, CmdSetHostAlive, SetHostAliveCmd{Header: hdr(), ID: id, Alive: false})
	}
	return f
}

// wantErr checks a result error against a sentinel and message fragments.
func wantErr(t testing.TB, err, sentinel error, frags ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("want error %v, got nil", sentinel)
	}
	if !errors.Is(err, sentinel) {
		t.Fatalf("want errors.Is(%v), got %v", sentinel, err)
	}
	for _, fr := range frags {
		if !strings.Contains(err.Error(), fr) {
			t.Fatalf("error %q does not mention %q", err, fr)
		}
	}
}

// fakeSink is an in-memory raft.SnapshotSink.
type fakeSink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *fakeSink) ID() string    { return "fake" }
func (s *fakeSink) Cancel() error { s.cancelled = true; return nil }
func (s *fakeSink) Close() error  { s.closed = true; return nil }

func persist(t testing.TB, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	sink := &fakeSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatalf("persist: %v", err)
	}
	snap.Release()
	if !sink.closed || sink.cancelled {
		t.Fatalf("sink closed=%v cancelled=%v", sink.closed, sink.cancelled)
	}
	return sink.Bytes()
}

// testSnapshotRestore persists f, restores it into a fresh FSM and checks the
// two catalogs are deep-equal, indexes and idempotency memory included.
func testSnapshotRestore(t testing.TB, f *FSM) *FSM {
	t.Helper()
	data := persist(t, f)
	g := NewWithOptions(nil, f.maxResults)
	if err := g.Restore(readCloser{bytes.NewReader(data)}); err != nil {
		t.Fatalf("restore: %v", err)
	}
	compareStates(t, f, g)
	if again := persist(t, g); !bytes.Equal(again, data) {
		t.Fatalf("re-persisted snapshot differs (%d vs %d bytes)", len(again), len(data))
	}
	return g
}

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }

func compareStates(t testing.TB, a, b *FSM) {
	t.Helper()
	a.View(func(sa *State) {
		b.View(func(sb *State) {
			for _, s := range []*State{sa, sb} {
				if err := s.checkIndexes(); err != nil {
					t.Fatalf("indexes: %v", err)
				}
			}
			if !reflect.DeepEqual(sa.Hosts(), sb.Hosts()) {
				t.Fatalf("hosts differ:\n%+v\n%+v", sa.Hosts(), sb.Hosts())
			}
			if !reflect.DeepEqual(sa.Volumes(), sb.Volumes()) {
				t.Fatalf("volumes differ")
			}
			if !reflect.DeepEqual(sa.Forks(), sb.Forks()) {
				t.Fatalf("forks differ:\n%+v\n%+v", sa.Forks(), sb.Forks())
			}
			if !reflect.DeepEqual(sa.ActiveForks(), sb.ActiveForks()) {
				t.Fatalf("active forks differ")
			}
			if !reflect.DeepEqual(sa.RevokedTokens(), sb.RevokedTokens()) {
				t.Fatalf("revoked tokens differ: %v vs %v", sa.RevokedTokens(), sb.RevokedTokens())
			}
			if sa.version != sb.version {
				t.Fatalf("catalog version differs: %d vs %d", sa.version, sb.version)
			}
			if !reflect.DeepEqual(sa.used, sb.used) {
				t.Fatalf("used differs: %v vs %v", sa.used, sb.used)
			}
			if !reflect.DeepEqual(sa.rememberedResults(), sb.rememberedResults()) {
				t.Fatalf("remembered results differ")
			}
		})
	})
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
