package fsm

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
)

// fuzzCatalog is a small catalog for the fuzzer to act on: the seed corpus
// names these hosts, volumes and forks so random mutations reach deep code.
func fuzzCatalog(t testing.TB) *FSM {
	reqSeq = 0 // the same stamps for every replica built here
	f := newCatalog(t, []Host{
		mkHost("h1", "us", true, 4*GiB),
		mkHost("h2", "us", false, 4*GiB),
		mkHost("h3", "eu", true, 2*GiB),
	}, []Volume{
		mkVol("vol_a", "db", "shop", "h1", GiB),
		mkVol("vol_b", "db2", "shop", "h2", GiB),
	})
	mustApply(t, f, CmdCreateFork, CreateForkCmd{Header: Header{RequestID: "seed-fork"}, ForkID: "fork_1", TargetVolumeID: "vol_f1",
		Request: ForkRequest{Source: "db", Name: "f1"}})
	return f
}

// FuzzApply: any bytes as a log entry must yield an ApplyResult, never a
// panic, leave consistent indexes, be deterministic across replicas and
// survive a snapshot round trip.
func FuzzApply(f *testing.F) {
	for _, seed := range fuzzSeeds(f) {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		a, b := fuzzCatalog(t), fuzzCatalog(t)
		for i := 0; i < 2; i++ { // the second time exercises the retry path
			ra, rb := applyRaw(a, data), applyRaw(b, data)
			if !reflect.DeepEqual(ra, rb) {
				t.Fatalf("replicas disagree: %+v vs %+v", ra, rb)
			}
		}
		a.View(func(s *State) {
			if err := s.checkIndexes(); err != nil {
				t.Fatal(err)
			}
			// Only a lowered budget (UpsertHost) may leave a host over it.
			if len(data) > 0 && CommandType(data[0])&^IgnoreUnknownFlag == CmdUpsertHost {
				return
			}
			for _, h := range s.hosts {
				if s.Used(h.ID) > h.Budget {
					t.Fatalf("host %s over budget: %d > %d", h.ID, s.Used(h.ID), h.Budget)
				}
			}
		})
		testSnapshotRestore(t, a)
	})
}

// fuzzSeeds are valid entries of every type plus junk; the same set is
// committed under testdata/fuzz/FuzzApply (see gen_fuzz_corpus.go).
func fuzzSeeds(t testing.TB) [][]byte {
	return [][]byte{
		entry(t, CmdUpsertHost, UpsertHostCmd{Header: Header{RequestID: "s1", Time: 1}, Host: mkHost("h4", "eu", true, 8*GiB)}),
		entry(t, CmdRemoveHost, RemoveHostCmd{Header: Header{RequestID: "s2"}, ID: "h3"}),
		entry(t, CmdSetHostAlive, SetHostAliveCmd{Header: Header{RequestID: "s3"}, ID: "h1"}),
		entry(t, CmdCreateVolume, CreateVolumeCmd{Header: Header{RequestID: "s4"}, Region: "eu", Volume: Volume{ID: "vol_n", Name: "n", App: "shop", Size: GiB}}),
		entry(t, CmdSetVolumeState, SetVolumeStateCmd{Header: Header{RequestID: "s5"}, ID: "vol_f1", State: VolumeFailed}),
		entry(t, CmdDeleteVolume, DeleteVolumeCmd{Header: Header{RequestID: "s6"}, ID: "vol_b"}),
		entry(t, CmdCreateFork, CreateForkCmd{Header: Header{RequestID: "s7"}, ForkID: "fork_2", TargetVolumeID: "vol_f2",
			Request: ForkRequest{Source: "shop", Name: "f2", Region: "eu"}}),
		entry(t, CmdCreateFork, CreateForkCmd{Header: Header{RequestID: "s8"}, ForkID: "fork_3", TargetVolumeID: "vol_f3",
			Request: ForkRequest{Source: "shop:vol_b", Name: "f3", Via: PathClone}}),
		entry(t, CmdForkProgress, ForkProgressCmd{Header: Header{RequestID: "s9"}, ForkID: "fork_1", BytesDone: 4096}),
		entry(t, CmdFinishFork, FinishForkCmd{Header: Header{RequestID: "s10"}, ForkID: "fork_1", OK: true}),
		entry(t, CmdFinishFork|IgnoreUnknownFlag, FinishForkCmd{ForkID: "fork_1", Error: "x"}),
		entry(t, CmdSetVolumeTTL, SetVolumeTTLCmd{Header: Header{RequestID: "s11", Time: 5}, ID: "vol_a", TTL: 3600e9}),
		entry(t, CmdPruneForks|IgnoreUnknownFlag, PruneForksCmd{Header: Header{Time: 6}, Before: 1 << 60}),
		{0x7f, '{', '}'},
		{0xfe, 0x00},
		{byte(CmdCreateFork), '{', '"', 'r'},
		{},
	}
}

var writeCorpus = flag.Bool("fsm.write-corpus", false, "rewrite testdata/fuzz/FuzzApply from fuzzSeeds")

// TestFuzzCorpus checks the committed seed corpus is the current seed set
// (so a changed command format shows up here), or rewrites it with
// -fsm.write-corpus.
func TestFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzApply")
	seeds := fuzzSeeds(t)
	if *writeCorpus {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, s := range seeds {
			body := "go test fuzz v1\n[]byte(" + strconv.Quote(string(s)) + ")\n"
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i, s := range seeds {
		raw, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)))
		if err != nil {
			t.Fatalf("seed corpus missing (run with -fsm.write-corpus): %v", err)
		}
		want := "go test fuzz v1\n[]byte(" + strconv.Quote(string(s)) + ")\n"
		if string(raw) != want {
			t.Fatalf("seed-%02d is stale (run with -fsm.write-corpus)", i)
		}
	}
}
