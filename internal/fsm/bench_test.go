package fsm

import (
	"fmt"
	"math/rand"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

const (
	benchHosts   = 1000
	benchVolumes = 100_000
	benchAppSize = 10 // volumes per app
)

// bigState builds a catalog of benchHosts hosts in 5 regions (half can
// clone, one in ten full) and benchVolumes ready volumes in apps of
// benchAppSize spread over random hosts. It inserts directly, bypassing
// JSON, so that building stays well under a second.
func bigState(tb testing.TB) *State {
	tb.Helper()
	rng := rand.New(rand.NewSource(1))
	s := newState(0)
	for i := 0; i < benchHosts; i++ {
		h := mkHost(fmt.Sprintf("h%04d", i), fmt.Sprintf("r%d", i%5), i%2 == 0, 0)
		s.hosts[h.ID] = &h
	}
	for i := 0; i < benchVolumes; i++ {
		host := fmt.Sprintf("h%04d", rng.Intn(benchHosts))
		size := int64(1+rng.Intn(64)) * 64 * MiB
		v := mkVol(fmt.Sprintf("vol_%06d", i), fmt.Sprintf("v%06d", i), fmt.Sprintf("app%05d", i/benchAppSize), host, size)
		s.addVolume(&v)
	}
	for i, h := range s.hosts {
		h.Budget = s.used[i] + 512*GiB
		if rng.Intn(10) == 0 {
			h.Budget = s.used[i] // full
		}
	}
	if err := s.checkIndexes(); err != nil {
		tb.Fatal(err)
	}
	return s
}

// benchRequests mixes every kind of source and flag.
func benchRequests(n int) []ForkRequest {
	rng := rand.New(rand.NewSource(2))
	reqs := make([]ForkRequest, n)
	for i := range reqs {
		v := rng.Intn(benchVolumes)
		r := ForkRequest{Name: fmt.Sprintf("fork%d", i)}
		switch i % 4 {
		case 0:
			r.Source = fmt.Sprintf("app%05d", v/benchAppSize)
		case 1:
			r.Source = fmt.Sprintf("vol_%06d", v)
		case 2:
			r.Source = fmt.Sprintf("v%06d", v)
		case 3:
			r.Source = fmt.Sprintf("app%05d:vol_%06d", v/benchAppSize, v)
		}
		switch rng.Intn(20) {
		case 0, 1:
			r.Region = fmt.Sprintf("r%d", rng.Intn(5))
		case 2:
			r.Host = fmt.Sprintf("h%04d", rng.Intn(benchHosts))
		case 3:
			r.Via = PathStream
		}
		reqs[i] = r
	}
	return reqs
}

var (
	bigOnce  sync.Once
	bigCache *State
)

func sharedBigState(tb testing.TB) *State {
	bigOnce.Do(func() { bigCache = bigState(tb) })
	return bigCache
}

func BenchmarkPlanFork(b *testing.B) {
	s := sharedBigState(b)
	reqs := benchRequests(4096)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_, _ = PlanFork(s, reqs[i%len(reqs)])
	}
}

func BenchmarkApplyCreateFork(b *testing.B) {
	f := New(nil)
	f.state = bigState(b)
	reqs := benchRequests(b.N)
	entries := make([][]byte, b.N)
	for i := range entries {
		entries[i] = entry(b, CmdCreateFork, CreateForkCmd{Header: Header{RequestID: fmt.Sprintf("bench-%d", i), Time: int64(i)},
			ForkID: fmt.Sprintf("fork_b%d", i), TargetVolumeID: fmt.Sprintf("vol_b%d", i), Request: reqs[i]})
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f.Apply(&raft.Log{Index: uint64(i + 1), Data: entries[i]})
	}
}

// planLatency times n PlanFork calls and returns the p50 and p99.
func planLatency(s *State, n int) (p50, p99 time.Duration, okCount int) {
	reqs := benchRequests(n)
	lat := make([]time.Duration, n)
	for i, r := range reqs {
		start := time.Now()
		_, err := PlanFork(s, r)
		lat[i] = time.Since(start)
		if err == nil {
			okCount++
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat[n/2], lat[n*99/100], okCount
}

var latencyOnce sync.Once

// BenchmarkPlanForkP99 prints the planner's latency distribution over 10k
// calls once, in the BENCH line format the project's reports collect.
func BenchmarkPlanForkP99(b *testing.B) {
	s := sharedBigState(b)
	latencyOnce.Do(func() {
		p50, p99, ok := planLatency(s, 10_000)
		fmt.Printf("BENCH name=planner volumes=%d hosts=%d p50_us=%.1f p99_us=%.1f planned=%d/10000\n",
			benchVolumes, benchHosts, float64(p50.Nanoseconds())/1e3, float64(p99.Nanoseconds())/1e3, ok)
	})
	reqs := benchRequests(1024)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_, _ = PlanFork(s, reqs[i%len(reqs)])
	}
}

// TestPlannerLatency guards the indexes: with 100k volumes and 1k hosts the
// p99 must stay far below a scan of the catalog. The goal is 1 ms; the bound
// here is 10 ms so that a loaded CI machine does not flake.
func TestPlannerLatency(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a 100k-volume catalog")
	}
	s := sharedBigState(t)
	p50, p99, ok := planLatency(s, 2000)
	t.Logf("planner p50 %v p99 %v (%d/2000 planned)", p50, p99, ok)
	if ok < 1000 {
		t.Fatalf("only %d of 2000 requests planned: the benchmark catalog is wrong", ok)
	}
	if p99 > 10*time.Millisecond {
		t.Fatalf("planner p99 %v > 10ms", p99)
	}
}

// BenchmarkSnapshot is the time Apply is blocked by a snapshot: the copy
// under the read lock, not the encoding.
func BenchmarkSnapshot(b *testing.B) {
	f := New(nil)
	f.state = sharedBigState(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		snap, _ := f.Snapshot()
		snap.Release()
	}
}

func BenchmarkPersistRestore(b *testing.B) {
	f := New(nil)
	f.state = sharedBigState(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		data := persist(b, f)
		g := New(nil)
		if err := g.Restore(readCloser{bytesReader(data)}); err != nil {
			b.Fatal(err)
		}
		b.SetBytes(int64(len(data)))
	}
}
