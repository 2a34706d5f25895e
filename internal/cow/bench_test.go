package cow

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/testutil"
)

// BenchmarkClone: reflink clones on XFS are O(1) whatever the volume size.
func BenchmarkClone(b *testing.B) {
	ctx := context.Background()
	dir := hostFS(b, "xfs")
	be := newTestBackend(b, dir, 0)
	for _, sz := range []struct {
		name string
		size int64
	}{{"1GiB", 1 << 30}, {"16GiB", 16 << 30}} {
		b.Run(sz.name, func(b *testing.B) {
			src := "src_" + strings.ToLower(sz.name)
			if _, err := be.Create(ctx, CreateSpec{ID: src, Name: src, Size: sz.size}); err != nil {
				b.Fatal(err)
			}
			writeSpots(b, imgPath(be, src), sz.size, 64)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				id := fmt.Sprintf("c_%s_%d", strings.ToLower(sz.name), i)
				if _, err := be.Clone(ctx, src, CreateSpec{ID: id, Name: id}); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := be.Remove(ctx, id); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

// benchImage returns FORKNODE_BENCH_IMAGE, or makes a 256 MiB synthetic
// image: per 1 MiB block, a third written zeros, a sixth holes, the rest
// random data.
func benchImage(b testing.TB, dir string) string {
	if p := os.Getenv("FORKNODE_BENCH_IMAGE"); p != "" {
		return p
	}
	p := filepath.Join(dir, "bench.img")
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	const blocks = 256
	f.Truncate(blocks << 20)
	rng := rand.New(rand.NewSource(9))
	buf := make([]byte, 1<<20)
	zero := make([]byte, 1<<20)
	for i := 0; i < blocks; i++ {
		switch {
		case i%3 == 0:
			f.WriteAt(zero, int64(i)<<20)
		case i%6 == 1:
			// hole
		default:
			rng.Read(buf)
			f.WriteAt(buf, int64(i)<<20)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	return p
}

func dropCaches(b testing.TB) {
	exec.Command("sync").Run()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		b.Fatalf("drop caches: %v", err)
	}
}

// durableCopy is what ForkLocal does after the snapshot: sparse target,
// parallel verified Copy, fsync.
func durableCopy(src, dst string) error {
	ext, err := FileExtents(src)
	if err != nil {
		return err
	}
	sd, err := OpenFileDevice(src, false)
	if err != nil {
		return err
	}
	defer sd.Close()
	if err := makeSparse(dst, sd.Size()); err != nil {
		return err
	}
	dd, err := OpenFileDevice(dst, true)
	if err != nil {
		return err
	}
	_, err = Copy(context.Background(), sd, ext, dd, CopyOptions{})
	if cerr := dd.Close(); err == nil {
		err = cerr
	}
	return err
}

// BenchmarkLocalCopy times `cp --sparse=always SRC DST && sync` against the
// durable Copy on the same image, alternating, caches dropped before each.
func BenchmarkLocalCopy(b *testing.B) {
	testutil.RequireRoot(b)
	testutil.RequireCmd(b, "cp", "sync")
	dir := b.TempDir()
	src := benchImage(b, dir)
	st, err := os.Stat(src)
	if err != nil {
		b.Fatal(err)
	}
	size := st.Size()
	const pairs = 5
	for n := 0; n < b.N; n++ {
		var ratios []float64
		var tBase, tOurs time.Duration
		for i := 0; i < pairs; i++ {
			dst := filepath.Join(dir, "dst.img")
			os.Remove(dst)
			dropCaches(b)
			start := time.Now()
			if out, err := exec.Command("sh", "-c", `cp --sparse=always "$1" "$2" && sync`, "sh", src, dst).CombinedOutput(); err != nil {
				b.Fatalf("cp: %v %s", err, out)
			}
			base := time.Since(start)
			os.Remove(dst)
			dropCaches(b)
			start = time.Now()
			if err := durableCopy(src, dst); err != nil {
				b.Fatal(err)
			}
			ours := time.Since(start)
			os.Remove(dst)
			ratios = append(ratios, ours.Seconds()/base.Seconds())
			tBase += base
			tOurs += ours
		}
		sort.Float64s(ratios)
		ratio := ratios[len(ratios)/2]
		mb := float64(size) / (1 << 20)
		oursMBps := mb * pairs / tOurs.Seconds()
		baseMBps := mb * pairs / tBase.Seconds()
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		rss := float64(ru.Maxrss) / 1024
		fmt.Printf("BENCH name=local_copy size=%d ratio_median=%.3f forknode_mbps=%.1f baseline_mbps=%.1f peak_rss_mb=%.1f\n",
			size, ratio, oursMBps, baseMBps, rss)
		b.ReportMetric(ratio, "ratio_median")
		b.ReportMetric(oursMBps, "forknode_MB/s")
		b.ReportMetric(baseMBps, "baseline_MB/s")
		b.ReportMetric(rss, "peak_rss_MB")
	}
}
