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

func vmRSS() int64 { return procStatusKB("VmRSS:") << 10 }

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

// benchChildEnv makes the test binary a bench receiver (see
// TestBenchReceiverChild): the puller runs in its own process, so its peak
// RSS (VmHWM) is measured apart from the sender's, as on two hosts.
const benchChildEnv = "FORKNODE_BENCH_RECEIVER"

// runOurs times one Pull over loopback into a fresh file: the server runs
// in this process, the puller in a child process (this test binary again),
// timed from its start to its exit like the baseline's pipeline. It returns
// the wall time, the wire bytes the puller counted and its peak RSS.
func runOurs(b *testing.B, img string, size int64, codec, out string) (time.Duration, int64, int64) {
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
		return &fileDev{File: f, size: size}, nil, nil, nil // nil extents: the server finds holes itself
	}, Options{Codec: codec, PlainPeers: true})
	go srv.Serve(l)
	defer srv.Close()
	args := []string{"-test.run=^TestBenchReceiverChild$", "-test.count=1"}
	if prof := os.Getenv("FORKNODE_BENCH_RECEIVER_PROFILE"); prof != "" {
		args = append(args, "-test.cpuprofile="+prof) // the last pull's profile stays
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%s,%d", benchChildEnv, l.Addr(), out, size))
	start := time.Now()
	outp, err := cmd.Output()
	d := time.Since(start)
	if err != nil {
		b.Fatalf("receiver child: %v\n%s", err, outp)
	}
	var wire, hwm, pullUS int64
	for _, line := range strings.Split(string(outp), "\n") {
		if rest, ok := strings.CutPrefix(line, "RECEIVER "); ok {
			if _, err := fmt.Sscanf(rest, "wire=%d hwm_kb=%d pull_us=%d", &wire, &hwm, &pullUS); err != nil {
				b.Fatalf("receiver child said %q: %v", line, err)
			}
		}
	}
	if wire == 0 {
		b.Fatalf("receiver child reported nothing:\n%s", outp)
	}
	b.Logf("codec=%s receiver process %s, of which Pull %s", codec, d.Round(time.Millisecond), (time.Duration(pullUS) * time.Microsecond).Round(time.Millisecond))
	return d, wire, hwm << 10
}

// TestBenchReceiverChild is the puller half of BenchmarkStreamLoopback; it
// skips unless the benchmark started it.
func TestBenchReceiverChild(t *testing.T) {
	spec := os.Getenv(benchChildEnv)
	if spec == "" {
		t.Skip("only run by BenchmarkStreamLoopback")
	}
	parts := strings.Split(spec, ",")
	if len(parts) != 3 {
		t.Fatalf("bad %s=%q", benchChildEnv, spec)
	}
	size, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	sink := openDev(t, parts[1], size)
	st, err := Pull(context.Background(), dialer(parts[0]), "bench", "bench", sink, Options{})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("RECEIVER wire=%d hwm_kb=%d pull_us=%d\n", st.Wire, procStatusKB("VmHWM:"), st.Duration.Microseconds())
}

// procStatusKB reads one kB field of /proc/self/status.
func procStatusKB(field string) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb
		}
	}
	return 0
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
// pipeline baseline, alternating ≥ 5 pairs per codec (which runs first
// alternates too). wall_ratio_median is the median over pairs of our wall
// time / the baseline's (< 1: we are faster; the goals are ≤ 0.5 for zstd,
// ≤ 0.3 for s2); ratio_median is its inverse as throughput. Both sides end
// durable (fdatasync / fsync). sender_rss_mb is the peak VmRSS of this
// process while it serves (test harness included); receiver_rss_mb the
// VmHWM of the puller's own process. FORKNODE_BENCH_MB sets the image size
// (default 512 MiB); FORKNODE_BENCH_PAIRS the number of pairs;
// FORKNODE_BENCH_RECEIVER_PROFILE a file for the puller's CPU profile.
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
		var walls, ratios, mbps []float64
		var wire, sendPeak, recvPeak int64
		for i := range pairs {
			ours := func() time.Duration {
				os.Remove(out)
				runtime.GC()
				debug.FreeOSMemory()
				rss := startRSS()
				d, w, hwm := runOurs(b, img, size, codec, out)
				sendPeak = max(sendPeak, rss.finish())
				recvPeak = max(recvPeak, hwm)
				wire = w
				os.Remove(out)
				return d
			}
			base := func() time.Duration {
				os.Remove(out)
				d := runBaseline(b, img, out)
				os.Remove(out)
				return d
			}
			var d, bd time.Duration
			if i%2 == 0 {
				d, bd = ours(), base()
			} else {
				bd, d = base(), ours()
			}
			walls = append(walls, d.Seconds()/bd.Seconds())
			ratios = append(ratios, bd.Seconds()/d.Seconds())
			mbps = append(mbps, float64(size)/1e6/d.Seconds())
			b.Logf("codec=%s ours=%s baseline=%s wall_ratio=%.3f", codec, d.Round(time.Millisecond), bd.Round(time.Millisecond), d.Seconds()/bd.Seconds())
		}
		fmt.Printf("BENCH name=stream_loopback codec=%s pairs=%d wall_ratio_median=%.3f ratio_median=%.3f mbps=%.1f wire_bytes=%d baseline_wire_bytes=%d wire_ratio=%.4f sender_rss_mb=%.1f receiver_rss_mb=%.1f\n",
			codec, pairs, median(walls), median(ratios), median(mbps), wire, baselineWire, float64(wire)/float64(baselineWire),
			float64(sendPeak)/(1<<20), float64(recvPeak)/(1<<20))
		b.ReportMetric(median(walls), codec+"_wall_ratio")
		b.ReportMetric(median(mbps), codec+"_MB/s")
	}
}

// BenchmarkStreamLargeVolume checks that memory does not grow with the
// volume: a 16 GiB volume with 512 MiB of data spread over it (every 32nd
// MiB) streams once per codec; it reports each side's peak RSS and the
// time. FORKNODE_BENCH_LARGE_GB overrides the volume size.
func BenchmarkStreamLargeVolume(b *testing.B) {
	gb := 16
	if v, err := strconv.Atoi(os.Getenv("FORKNODE_BENCH_LARGE_GB")); err == nil && v > 0 {
		gb = v
	}
	dir := b.TempDir()
	size := int64(gb) << 30
	path := filepath.Join(dir, "large.img")
	src := openDev(b, path, size)
	rng := newRand(7)
	buf := make([]byte, 1<<20)
	kinds := []int{blkText, blkText, blkRandom, blkZeroWritten}
	for i := 0; int64(i)<<25 < size; i++ {
		fillBlock(rng, buf, kinds[i%len(kinds)])
		if _, err := src.WriteAt(buf, int64(i)<<25); err != nil {
			b.Fatal(err)
		}
	}
	if err := src.Sync(); err != nil {
		b.Fatal(err)
	}
	out := filepath.Join(dir, "out.img")
	b.ResetTimer()
	for _, codec := range []string{"zstd", "s2"} {
		os.Remove(out)
		runtime.GC()
		debug.FreeOSMemory()
		rss := startRSS()
		d, wire, hwm := runOurs(b, path, size, codec, out)
		peak := rss.finish()
		os.Remove(out)
		fmt.Printf("BENCH name=stream_large_volume codec=%s volume_gb=%d seconds=%.3f wire_bytes=%d sender_rss_mb=%.1f receiver_rss_mb=%.1f\n",
			codec, gb, d.Seconds(), wire, float64(peak)/(1<<20), float64(hwm)/(1<<20))
	}
}
