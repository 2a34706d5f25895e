package transfer

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/testutil"
)

// benchImage writes a synthetic volume of mb MiB in 1 MiB blocks: one third
// zero (half holes, half written zeros), the rest database-like text and
// random bytes 3:1. It streams, so memory stays small.
func benchImage(b *testing.B, dir string, mb int) string {
	b.Helper()
	path := filepath.Join(dir, "bench.img")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	size := int64(mb) << 20
	if err := f.Truncate(size); err != nil {
		b.Fatal(err)
	}
	kinds := []int{blkText, blkHole, blkText, blkRandom, blkZeroWritten, blkText}
	rng := newRand(42)
	buf := make([]byte, 1<<20)
	for i := 0; i < mb; i++ {
		k := kinds[i%len(kinds)]
		if k == blkHole {
			continue
		}
		fillBlock(rng, buf, k)
		if _, err := f.WriteAt(buf, int64(i)<<20); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	return path
}

// rssSampler records the peak VmRSS of this process while running.
type rssSampler struct {
	peak atomic.Int64
	stop chan struct{}
	done chan struct{}
}

func vmRSS() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func startRSS() *rssSampler {
	s := &rssSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			if r := vmRSS(); r > s.peak.Load() {
				s.peak.Store(r)
			}
			select {
			case <-t.C:
			case <-s.stop:
				return
			}
		}
	}()
	return s
}

func (s *rssSampler) finish() int64 { close(s.stop); <-s.done; return s.peak.Load() }

func freePort(b *testing.B) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// runBaseline times dd | zstd -1 -T0 | socat → socat | zstd -d | dd.
func runBaseline(b *testing.B, img, out string) time.Duration {
	port := freePort(b)
	recv := exec.Command("sh", "-c", fmt.Sprintf(
		"socat -u TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr - | zstd -d -q | dd of=%s bs=1M iflag=fullblock conv=sparse,fdatasync status=none", port, out))
	send := exec.Command("sh", "-c", fmt.Sprintf(
		"dd if=%s bs=1M status=none | zstd -1 -T0 -q | socat -u - TCP:127.0.0.1:%d,retry=200,interval=0.01", img, port))
	start := time.Now()
	if err := recv.Start(); err != nil {
		b.Fatal(err)
	}
	if outp, err := send.CombinedOutput(); err != nil {
		recv.Process.Kill()
		recv.Wait()
		b.Fatalf("baseline sender: %v: %s", err, outp)
	}
	if err := recv.Wait(); err != nil {
		b.Fatalf("baseline receiver: %v", err)
	}
	return time.Since(start)
}

// runOurs times one Pull over loopback into a fresh file.
func runOurs(b *testing.B, img string, size int64, codec, out string) (time.Duration, Stats) {
	f, err := os.Open(img)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := NewServer(func(ctx context.Context, forkID, peer string) (Source, []Extent, func(), error) {
		return &fileDev{File: f, size: size}, nil, nil, nil // nil extents: scan, like dd
	}, Options{Codec: codec})
	go srv.Serve(l)
	defer srv.Close()
	sink := openDev(b, out, size)
	start := time.Now()
	st, err := Pull(context.Background(), dialer(l.Addr().String()), "bench", "bench", sink, Options{})
	if err != nil {
		b.Fatal(err)
	}
	return time.Since(start), st
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// BenchmarkStreamLoopback compares Pull over loopback with the shell
// pipeline baseline, alternating ≥ 5 pairs per codec. ratio_median is the
// median over pairs of our throughput / the baseline's (> 1: we are faster).
// FORKNODE_BENCH_MB overrides the 512 MiB image size; FORKNODE_BENCH_PAIRS
// the number of pairs.
func BenchmarkStreamLoopback(b *testing.B) {
	testutil.RequireCmd(b, "socat", "zstd", "dd", "sh")
	mb, pairs := 512, 5
	if v, err := strconv.Atoi(os.Getenv("FORKNODE_BENCH_MB")); err == nil && v > 0 {
		mb = v
	}
	if v, err := strconv.Atoi(os.Getenv("FORKNODE_BENCH_PAIRS")); err == nil && v > 0 {
		pairs = v
	}
	dir := b.TempDir()
	img := benchImage(b, dir, mb)
	size := int64(mb) << 20
	wc, err := exec.Command("sh", "-c", fmt.Sprintf("zstd -1 -T0 -q -c %s | wc -c", img)).Output()
	if err != nil {
		b.Fatal(err)
	}
	baselineWire, _ := strconv.ParseInt(strings.TrimSpace(string(wc)), 10, 64)
	out := filepath.Join(dir, "out.img")
	b.ResetTimer()
	for _, codec := range []string{"zstd", "s2"} {
		var ratios, mbps []float64
		var wire int64
		var peak int64
		for range pairs {
			os.Remove(out)
			runtime.GC()
			debug.FreeOSMemory()
			rss := startRSS()
			d, st := runOurs(b, img, size, codec, out)
			peak = max(peak, rss.finish())
			wire = st.Wire
			os.Remove(out)
			bd := runBaseline(b, img, out)
			os.Remove(out)
			ratios = append(ratios, bd.Seconds()/d.Seconds())
			mbps = append(mbps, float64(size)/1e6/d.Seconds())
			b.Logf("codec=%s ours=%s baseline=%s", codec, d.Round(time.Millisecond), bd.Round(time.Millisecond))
		}
		fmt.Printf("BENCH name=stream_loopback codec=%s ratio_median=%.3f mbps=%.1f wire_bytes=%d baseline_wire_bytes=%d peak_rss_mb=%.1f\n",
			codec, median(ratios), median(mbps), wire, baselineWire, float64(peak)/(1<<20))
		b.ReportMetric(median(mbps), codec+"_MB/s")
	}
}
