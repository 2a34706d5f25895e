package cow_test

// An external test package: cow and fsm do not import each other, and this
// test holds the two sides of one rule together.

import (
	"math/rand/v2"
	"testing"

	"github.com/forknode/forknode/internal/cow"
	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/lvm"
)

// TestSnapshotCostMatchesLVM: what the catalog reserves for a thick LVM
// snapshot (fsm.SnapshotCost of the figures the backend advertises) is
// the COW area the backend then creates (lvm.SnapshotSize).
func TestSnapshotCostMatchesLVM(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		ratio  float64
		min    int64
		extent int64
	}{
		{0.2, 64 * mib, 4 * mib},
		{0.1, 0, 4 * mib},
		{0.33, 8 * mib, 32 * mib},
		{1, 0, 4 * mib},
		{1.5, 0, 4 * mib}, // past 1 the volume plus its extents caps both
		{0.2, 64 * mib, 1024 * mib},
	} {
		f := cow.Features{SnapshotPermille: cow.SnapshotPermille(c.ratio), SnapshotMin: c.min, SnapshotGrain: c.extent}
		h := fsm.Host{SnapshotPermille: f.SnapshotPermille, SnapshotMin: f.SnapshotMin, SnapshotGrain: f.SnapshotGrain}
		rng := rand.New(rand.NewPCG(1, 2))
		var sizes []int64
		for i := int64(1); i <= 4096; i++ {
			sizes = append(sizes, i*mib, i*4096)
		}
		for range 4000 {
			sizes = append(sizes, rng.Int64N(1<<44)/4096*4096+4096)
		}
		for _, s := range sizes {
			got, want := fsm.SnapshotCost(h, s), lvm.SnapshotSize(s, c.extent, c.ratio, c.min)
			if got != want {
				t.Fatalf("ratio %g min %d extent %d, size %d: catalog reserves %d, lvm creates %d", c.ratio, c.min, c.extent, s, got, want)
			}
		}
	}
}
