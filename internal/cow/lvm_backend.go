package cow

// The LVM backend: volumes are logical volumes of one volume group.
//
// Thin mode (a thin pool in the VG): volumes are thin LVs, Clone and
// Snapshot are thin snapshots (O(1), no size to choose), and the budget is
// pool size × overprovision ratio.
//
// Thick mode: volumes are linear LVs, Snapshot is a classic dm-snapshot
// with a fixed copy-on-write area (lvm.SnapshotSize), and a fork is
// ForkLocal: snapshot -> new LV -> Copy from the snapshot -> drop the
// snapshot. Reads through a snapshot are guarded by lvm.SnapshotWatch, so
// a copy stops with ErrSnapshotOverflow before the COW area fills up.
//
// Crash consistency of Snapshot: we rely on lvcreate -s suspending the
// origin's device-mapper device with its default lockfs flag. The kernel's
// dm suspend then freezes a filesystem mounted on the origin (freeze_bdev:
// dirty data flushed, new writes held) for the instant the snapshot is
// taken, and flushes in-flight I/O. So no FIFREEZE is issued here: it
// would add nothing to dm's own freeze, and a forknode that died between
// freeze and thaw would leave the database's filesystem frozen.
//
// Stale data: a new thick LV sits on extents a removed LV may have used.
// Create zeroes the whole LV (BLKZEROOUT) before it reports the volume, and
// Device.Zero also uses BLKZEROOUT, so no range ever reads back old data.
// Thin LVs read unprovisioned blocks as zeros; the pool should zero new
// blocks (-Z y, lvm's default) so partial writes cannot expose old data.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/forknode/forknode/internal/lvm"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// ErrSnapshotOverflow: a classic snapshot ran (nearly) out of copy-on-write
// space while a copy read from it. The same value as lvm.ErrSnapshotOverflow.
var ErrSnapshotOverflow = lvm.ErrSnapshotOverflow

// LVMOptions configure NewLVMBackend. Zero values pick the defaults.
type LVMOptions struct {
	// ThinPool names the thin pool LV to use. Empty: use the VG's only thin
	// pool if it has exactly one, else run thick.
	ThinPool string
	// Overprovision: thin budget = pool size × this ratio (default 1).
	Overprovision float64
	// PoolFullPercent: once a thin pool's data or metadata use reaches it,
	// the host advertises a budget of 0 (no new volumes or forks placed
	// there) and takes no new snapshot (a stream from it fails at once,
	// with the reason) until both are below PoolResumePercent (defaults 90
	// and 80). Writes to existing thin LVs, and a stream's snapshot
	// holding blocks its origin rewrites, can fill a pool whatever the
	// budget says; a full pool stops every LV in it.
	PoolFullPercent, PoolResumePercent float64
	// LVMPath of the lvm binary (default "lvm" on PATH).
	LVMPath string
	Logger  hclog.Logger

	// SnapshotRatio and SnapshotMinSize size classic snapshots (see
	// lvm.SnapshotSize; defaults 0.2 and 64 MiB).
	SnapshotRatio   float64
	SnapshotMinSize int64
	// OverflowLimit: data_percent of a classic snapshot at which reads stop
	// with ErrSnapshotOverflow (default lvm.DefaultOverflowLimit).
	OverflowLimit float64
	// WatchInterval between data_percent polls while a snapshot is open
	// (default 250ms).
	WatchInterval time.Duration
	// DirectIO opens devices with O_DIRECT (bypassing the page cache of a
	// production host). Every buffer must then be 4096-aligned: leave it
	// off for cow.Copy, whose buffers are not.
	DirectIO bool
	// Runner replaces the lvm runner (tests record argument lists with it).
	Runner lvm.Runner
	// StateDir keeps a marker while a thin pool's metadata snapshot is held
	// (see Extents), so that a restart releases one a crash left behind.
	// The agent passes its data dir; empty keeps none.
	StateDir string
}

// LVMBackend implements Backend on one LVM volume group.
type LVMBackend struct {
	vg       string
	pool     string // thin pool, "" in thick mode
	opts     LVMOptions
	c        *lvm.Client
	log      hclog.Logger
	features Features
	// mu serialises creates so two cannot both pass the budget check.
	mu sync.Mutex
	// metaMu serialises thin maps: a pool holds one metadata snapshot.
	metaMu sync.Mutex
	// poolMu guards what the last look at the thin pool found.
	poolMu             sync.Mutex
	poolFull           bool
	poolData, poolMeta float64
}

var _ Backend = (*LVMBackend)(nil)

// NewLVMBackend opens volume group vg and detects thin or thick mode.
func NewLVMBackend(vg string, opts LVMOptions) (*LVMBackend, error) {
	if err := lvm.ValidateName("vg", vg); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.Overprovision <= 0 {
		opts.Overprovision = 1
	}
	if opts.PoolFullPercent <= 0 {
		opts.PoolFullPercent = 90
	}
	if opts.PoolResumePercent <= 0 || opts.PoolResumePercent > opts.PoolFullPercent {
		opts.PoolResumePercent = min(80, opts.PoolFullPercent)
	}
	if opts.SnapshotMinSize == 0 {
		opts.SnapshotMinSize = 64 << 20
	}
	if opts.WatchInterval <= 0 {
		opts.WatchInterval = 250 * time.Millisecond
	}
	r := opts.Runner
	if r == nil {
		r = lvm.ExecRunner{Path: opts.LVMPath}
	}
	log := opts.Logger.With("vg", vg)
	b := &LVMBackend{vg: vg, opts: opts, c: lvm.New(r, log), log: log}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	vgInfo, err := b.c.VG(ctx, vg)
	if err != nil {
		return nil, fmt.Errorf("open volume group %s: %w", vg, mapLVMErr(err))
	}
	pools, err := b.c.ThinPools(ctx, vg)
	if err != nil {
		return nil, fmt.Errorf("list thin pools of %s: %w", vg, mapLVMErr(err))
	}
	zeroes := false
	switch {
	case opts.ThinPool != "":
		for _, p := range pools {
			if p.Name == opts.ThinPool {
				b.pool = p.Name
				zeroes = p.ZeroesNewBlocks()
			}
		}
		if b.pool == "" {
			return nil, fmt.Errorf("%w: %s/%s is not a thin pool", ErrNotFound, vg, opts.ThinPool)
		}
	case len(pools) == 1:
		b.pool = pools[0].Name
		zeroes = pools[0].ZeroesNewBlocks()
	case len(pools) > 1:
		log.Warn("several thin pools and none chosen: running thick", "pools", len(pools))
	}
	if b.pool != "" && !zeroes {
		log.Warn("thin pool does not zero new blocks: a partial write to a fresh block can expose data of a removed volume; enable it with lvchange -Zy",
			"pool", b.pool)
	}
	if b.pool != "" {
		b.features = Features{Backend: "lvm-thin", Clone: true}
	} else {
		// A classic snapshot's COW area, as Snapshot sizes it with
		// lvm.SnapshotSize: the catalog reserves it while a fork reads.
		b.features = Features{Backend: "lvm", SnapshotPermille: SnapshotPermille(opts.SnapshotRatio),
			SnapshotMin: opts.SnapshotMinSize, SnapshotGrain: vgInfo.ExtentSize}
	}
	if b.pool != "" {
		b.recoverMetaSnaps(ctx)
	}
	log.Info("lvm backend ready", "mode", b.features.Backend, "thin_pool", b.pool)
	return b, nil
}

func (b *LVMBackend) Features() Features { return b.features }

// SnapshotPermille is a classic snapshot's COW ratio (lvm.SnapshotSize's;
// 0 means its default 0.2) in thousandths, rounded up, for Features.
func SnapshotPermille(ratio float64) int64 {
	if ratio <= 0 {
		ratio = 0.2
	}
	return int64(math.Ceil(min(ratio, 4) * 1000)) // past 1, lvm.SnapshotSize's cap rules anyway
}

// VG and ThinPool name what the backend runs on.
func (b *LVMBackend) VG() string       { return b.vg }
func (b *LVMBackend) ThinPool() string { return b.pool }

// mapLVMErr adds the cow sentinel matching an lvm one, keeping both
// checkable with errors.Is.
func mapLVMErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, lvm.ErrNotFound):
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	case errors.Is(err, lvm.ErrExists):
		return fmt.Errorf("%w: %w", ErrExists, err)
	case errors.Is(err, lvm.ErrNoSpace):
		return fmt.Errorf("%w: %w", ErrNoSpace, err)
	case errors.Is(err, lvm.ErrInUse):
		return fmt.Errorf("%w: %w", ErrBusy, err)
	case errors.Is(err, lvm.ErrInvalid):
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return err
}

// validLVID checks an id both for cow (path-safe) and for lvm (LV names
// have reserved parts and a shorter limit); the id is the LV name.
func validLVID(id string) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	if err := lvm.ValidateName("lv", id); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

// Capacity. The budget is what forknode may provision here in the long
// run, so space that other LVs hold does not count: a VG or pool shared
// with other users must not be booked twice.
//   - Thick: budget = the VG's free extents + the LVs forknode owns
//     (volumes and its transient snapshots), used = those LVs, free = the
//     VG's free extents.
//   - Thin: budget = pool size × overprovision - the virtual size of other
//     thin LVs in the pool, used = the virtual size of forknode's thin LVs.
func (b *LVMBackend) Capacity(ctx context.Context) (Capacity, error) {
	lvs, err := b.c.LVs(ctx, b.vg)
	if err != nil {
		return Capacity{}, mapLVMErr(err)
	}
	if b.pool == "" {
		vg, err := b.c.VG(ctx, b.vg)
		if err != nil {
			return Capacity{}, mapLVMErr(err)
		}
		var owned int64
		for _, l := range lvs {
			if l.HasTag(lvm.TagOwned) && !l.IsThin() {
				owned += l.Size
			}
		}
		return Capacity{Budget: vg.Free + owned, Used: owned, Free: vg.Free}, nil
	}
	return b.thinCapacity(lvs), nil
}

// thinCapacity computes the thin budget from one LV listing. A pool
// nearly full (poolNearlyFull) leaves no free budget, whatever the sizes.
func (b *LVMBackend) thinCapacity(lvs []lvm.LV) Capacity {
	var poolSize, used, foreign int64
	for _, l := range lvs {
		switch {
		case l.Name == b.pool:
			poolSize = l.Size
		case l.IsThin() && l.Pool == b.pool && l.HasTag(lvm.TagOwned):
			used += l.Size
		case l.IsThin() && l.Pool == b.pool:
			foreign += l.Size
		}
	}
	budget := max(0, int64(float64(poolSize)*b.opts.Overprovision)-foreign)
	if b.poolNearlyFull(lvs) {
		// 0, not the used figure: the catalog counts its own used (no
		// stream snapshots, deletions at once) against what is
		// advertised, and a change to 0 is always re-advertised.
		budget = 0
	}
	return Capacity{Budget: budget, Used: used, Free: max(0, budget-used)}
}

// poolNearlyFull records the pool's data and metadata use from one LV
// listing and says whether the host must take no new work, with
// hysteresis so a pool hovering at the mark does not flap the catalog.
func (b *LVMBackend) poolNearlyFull(lvs []lvm.LV) bool {
	var p lvm.LV
	for _, l := range lvs {
		if l.Name == b.pool {
			p = l
		}
	}
	b.poolMu.Lock()
	defer b.poolMu.Unlock()
	if p.Name == "" || !p.HasDataPct {
		return b.poolFull // no figures (the pool missing, inactive): no news
	}
	use := max(p.DataPct, p.MetaPct)
	b.poolData, b.poolMeta = p.DataPct, p.MetaPct
	switch {
	case !b.poolFull && use >= b.opts.PoolFullPercent:
		b.poolFull = true
		b.log.Warn("thin pool nearly full: this host takes no new volumes or forks until it is below the resume mark; extend the pool or free space",
			"pool", b.pool, "data_percent", p.DataPct, "metadata_percent", p.MetaPct,
			"full_mark", b.opts.PoolFullPercent, "resume_mark", b.opts.PoolResumePercent)
	case b.poolFull && use < b.opts.PoolResumePercent:
		b.poolFull = false
		b.log.Info("thin pool has room again", "pool", b.pool, "data_percent", p.DataPct, "metadata_percent", p.MetaPct)
	}
	return b.poolFull
}

// poolNote explains a refusal caused by a nearly full pool ("" otherwise).
func (b *LVMBackend) poolNote() string {
	b.poolMu.Lock()
	defer b.poolMu.Unlock()
	if !b.poolFull {
		return ""
	}
	return fmt.Sprintf("; thin pool %s/%s is nearly full (data %.1f%%, metadata %.1f%%; no new volumes until both are under %.0f%%)",
		b.vg, b.pool, b.poolData, b.poolMeta, b.opts.PoolResumePercent)
}

// toVolume maps an LV carrying forknode tags to a Volume.
func (b *LVMBackend) toVolume(l lvm.LV) Volume {
	t := lvm.ParseTags(l.Tags)
	v := Volume{ID: t.ID, Name: t.Name, Size: l.Size, Kind: KindVolume, Owner: t.Fork, Origin: t.Origin,
		Path: l.DevicePath(), Created: l.Created}
	if v.ID == "" {
		v.ID = l.Name
	}
	if t.Kind == lvm.KindSnapshot {
		v.Kind = KindSnapshot
	}
	if l.IsClassicSnapshot() {
		v.Size = l.OriginSize // lv_size of a classic snapshot is its COW area
	}
	return v
}

// lv returns our LV with that id; an LV forknode does not own is reported
// as not found, so foreign LVs are never touched.
func (b *LVMBackend) lv(ctx context.Context, id string) (lvm.LV, error) {
	if err := validLVID(id); err != nil {
		return lvm.LV{}, err
	}
	l, err := b.c.LV(ctx, b.vg, id)
	if err != nil {
		return lvm.LV{}, mapLVMErr(err)
	}
	if !l.HasTag(lvm.TagOwned) {
		return lvm.LV{}, fmt.Errorf("%w: %s/%s exists but is not a forknode volume", ErrNotFound, b.vg, id)
	}
	return l, nil
}

func (b *LVMBackend) Get(ctx context.Context, id string) (Volume, error) {
	l, err := b.lv(ctx, id)
	if err != nil {
		return Volume{}, err
	}
	return b.toVolume(l), nil
}

func (b *LVMBackend) List(ctx context.Context) ([]Volume, error) {
	lvs, err := b.c.ListTagged(ctx, b.vg, lvm.TagOwned)
	if err != nil {
		return nil, mapLVMErr(err)
	}
	out := make([]Volume, 0, len(lvs))
	for _, l := range lvs {
		out = append(out, b.toVolume(l))
	}
	return out, nil
}

// Create makes a zeroed volume. A retry with the same spec returns the
// volume already made (and finishes its zeroing if a crash cut it short).
func (b *LVMBackend) Create(ctx context.Context, spec CreateSpec) (Volume, error) {
	if err := ValidateSpec(spec); err != nil {
		return Volume{}, err
	}
	if err := validLVID(spec.ID); err != nil {
		return Volume{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if l, err := b.c.LV(ctx, b.vg, spec.ID); err == nil {
		t := lvm.ParseTags(l.Tags)
		if !t.Owned || t.Name != spec.Name || t.Fork != spec.Owner || t.Kind != "" || t.Origin != "" || l.Size < spec.Size {
			return Volume{}, fmt.Errorf("%w: %s/%s", ErrExists, b.vg, spec.ID)
		}
		if t.Pending {
			if err := b.finishCreate(ctx, l); err != nil {
				return Volume{}, err
			}
		}
		return b.Get(ctx, spec.ID)
	} else if !errors.Is(err, lvm.ErrNotFound) {
		return Volume{}, mapLVMErr(err)
	}

	tags := lvm.Tags{Owned: true, ID: spec.ID, Name: spec.Name, Fork: spec.Owner}
	if b.pool != "" {
		c, err := b.Capacity(ctx)
		if err != nil {
			return Volume{}, err
		}
		if spec.Size > c.Free {
			return Volume{}, fmt.Errorf("%w: %d bytes asked, %d free of the thin budget %d (pool %s/%s × %.2f)%s",
				ErrNoSpace, spec.Size, c.Free, c.Budget, b.vg, b.pool, b.opts.Overprovision, b.poolNote())
		}
		list, err := tags.List()
		if err != nil {
			return Volume{}, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		if err := b.c.CreateThin(ctx, b.vg, b.pool, spec.ID, spec.Size, list); err != nil {
			return Volume{}, fmt.Errorf("create %s: %w", spec.ID, mapLVMErr(err))
		}
	} else {
		tags.Pending = true
		list, err := tags.List()
		if err != nil {
			return Volume{}, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		if err := b.c.CreateLinear(ctx, b.vg, spec.ID, spec.Size, list); err != nil {
			return Volume{}, fmt.Errorf("create %s: %w", spec.ID, mapLVMErr(err))
		}
		l, err := b.c.LV(ctx, b.vg, spec.ID)
		if err == nil {
			err = b.finishCreate(ctx, l)
		}
		if err != nil {
			if rerr := b.c.Remove(context.WithoutCancel(ctx), b.vg, spec.ID); rerr != nil {
				b.log.Error("remove half-made volume", "id", spec.ID, "error", rerr)
			}
			return Volume{}, fmt.Errorf("create %s: %w", spec.ID, err)
		}
	}
	b.log.Info("created", "id", spec.ID, "size", spec.Size, "mode", b.features.Backend)
	return b.Get(ctx, spec.ID)
}

// finishCreate zeroes a new thick LV end to end, then drops TagPending.
func (b *LVMBackend) finishCreate(ctx context.Context, l lvm.LV) error {
	start := time.Now()
	if err := b.c.Activate(ctx, b.vg, l.Name); err != nil {
		return mapLVMErr(err)
	}
	d, err := openBlockDevice(l.DevicePath(), true, false, nil)
	if err != nil {
		return err
	}
	zerr := d.Zero(0, d.Size())
	if zerr == nil {
		zerr = d.Sync()
	}
	if cerr := d.Close(); zerr == nil {
		zerr = cerr
	}
	if zerr != nil {
		return fmt.Errorf("zero new volume %s: %w", l.Name, zerr)
	}
	if err := b.c.DelTag(ctx, b.vg, l.Name, lvm.TagPending); err != nil {
		return mapLVMErr(err)
	}
	b.log.Debug("zeroed new volume", "id", l.Name, "bytes", l.Size, "took", time.Since(start))
	return nil
}

// Remove deletes a volume or snapshot. A volume that still has classic
// snapshots is ErrBusy: lvremove would silently drop them with it.
func (b *LVMBackend) Remove(ctx context.Context, id string) error {
	l, err := b.lv(ctx, id)
	if err != nil {
		return err
	}
	if !l.IsClassicSnapshot() {
		all, err := b.c.LVs(ctx, b.vg)
		if err != nil {
			return mapLVMErr(err)
		}
		for _, o := range all {
			if o.Origin == id && o.IsClassicSnapshot() {
				return fmt.Errorf("%w: %s has snapshot %s; release it first", ErrBusy, id, o.Name)
			}
		}
	}
	if err := b.c.Remove(ctx, b.vg, id); err != nil {
		return fmt.Errorf("remove %s: %w", id, mapLVMErr(err))
	}
	b.log.Info("removed", "id", id)
	return nil
}

// Snapshot takes a crash-consistent snapshot of srcID (see the file
// comment for how a mounted filesystem is quiesced). Thin: a thin
// snapshot. Thick: a classic snapshot sized by lvm.SnapshotSize. A retry
// with the same ids returns the existing snapshot.
func (b *LVMBackend) Snapshot(ctx context.Context, srcID, snapID string) (Volume, error) {
	if err := validLVID(snapID); err != nil {
		return Volume{}, err
	}
	src, err := b.lv(ctx, srcID)
	if err != nil {
		return Volume{}, fmt.Errorf("snapshot source: %w", err)
	}
	if t := lvm.ParseTags(src.Tags); t.Kind == lvm.KindSnapshot || t.Pending {
		return Volume{}, fmt.Errorf("%w: %s is a snapshot or unfinished volume", ErrInvalid, srcID)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if l, err := b.c.LV(ctx, b.vg, snapID); err == nil {
		t := lvm.ParseTags(l.Tags)
		if t.Owned && t.Kind == lvm.KindSnapshot && t.Origin == srcID {
			return b.toVolume(l), nil
		}
		return Volume{}, fmt.Errorf("%w: %s/%s", ErrExists, b.vg, snapID)
	}
	list, err := lvm.Tags{Owned: true, ID: snapID, Name: snapID, Origin: srcID, Kind: lvm.KindSnapshot}.List()
	if err != nil {
		return Volume{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	start := time.Now()
	if src.IsThin() && b.pool != "" {
		// A snapshot pins the blocks its origin rewrites: none while the
		// pool is nearly full.
		lvs, lerr := b.c.LVs(ctx, b.vg)
		if lerr != nil {
			return Volume{}, mapLVMErr(lerr)
		}
		if b.poolNearlyFull(lvs) {
			return Volume{}, fmt.Errorf("%w: no snapshot of %s%s", ErrNoSpace, srcID, b.poolNote())
		}
		err = b.c.CreateThinSnapshot(ctx, b.vg, srcID, snapID, list)
	} else {
		vg, verr := b.c.VG(ctx, b.vg)
		if verr != nil {
			return Volume{}, mapLVMErr(verr)
		}
		cowSize := lvm.SnapshotSize(src.Size, vg.ExtentSize, b.opts.SnapshotRatio, b.opts.SnapshotMinSize)
		if cowSize > vg.Free {
			return Volume{}, fmt.Errorf("%w: snapshot of %s needs %d bytes of copy-on-write space, volume group %s has %d free",
				ErrNoSpace, srcID, cowSize, b.vg, vg.Free)
		}
		err = b.c.CreateSnapshot(ctx, b.vg, srcID, snapID, cowSize, list)
	}
	if err != nil {
		return Volume{}, fmt.Errorf("snapshot %s of %s: %w", snapID, srcID, mapLVMErr(err))
	}
	b.log.Info("snapshot taken", "id", snapID, "origin", srcID, "took", time.Since(start))
	return b.Get(ctx, snapID)
}

// Release drops a snapshot.
func (b *LVMBackend) Release(ctx context.Context, snapID string) error {
	return releaseSnapshot(ctx, b, snapID)
}

// Clone makes an O(1) thin snapshot of srcID as a new, independent
// volume. Thick mode, or a source that is not a thin LV, is
// ErrNotSupported. The clone has the source's size (spec.Size 0 or equal).
func (b *LVMBackend) Clone(ctx context.Context, srcID string, spec CreateSpec) (Volume, error) {
	if b.pool == "" {
		return Volume{}, fmt.Errorf("%w: volume group %s has no thin pool", ErrNotSupported, b.vg)
	}
	if err := validLVID(spec.ID); err != nil {
		return Volume{}, err
	}
	if err := ValidateName(spec.Name); err != nil {
		return Volume{}, err
	}
	if err := validLVID(srcID); err != nil {
		return Volume{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	// One listing answers the source, an existing target and the budget:
	// each lvm run is a process start and a device scan.
	lvs, err := b.c.LVs(ctx, b.vg)
	if err != nil {
		return Volume{}, mapLVMErr(err)
	}
	var src, dst *lvm.LV
	for i := range lvs {
		switch lvs[i].Name {
		case srcID:
			src = &lvs[i]
		case spec.ID:
			dst = &lvs[i]
		}
	}
	if src == nil || !src.HasTag(lvm.TagOwned) {
		return Volume{}, fmt.Errorf("clone source: %w: %s/%s", ErrNotFound, b.vg, srcID)
	}
	if !src.IsThin() || src.Pool != b.pool {
		return Volume{}, fmt.Errorf("%w: %s is not a thin volume of pool %s", ErrNotSupported, srcID, b.pool)
	}
	if spec.Size != 0 && spec.Size != src.Size {
		return Volume{}, fmt.Errorf("%w: a thin clone has its source's size %d, not %d", ErrInvalid, src.Size, spec.Size)
	}
	if dst != nil {
		t := lvm.ParseTags(dst.Tags)
		if t.Owned && t.Kind == "" && t.Origin == srcID && t.Name == spec.Name && t.Fork == spec.Owner {
			return b.toVolume(*dst), nil
		}
		return Volume{}, fmt.Errorf("%w: %s/%s", ErrExists, b.vg, spec.ID)
	}
	if c := b.thinCapacity(lvs); src.Size > c.Free {
		return Volume{}, fmt.Errorf("%w: clone of %d bytes, %d free of the thin budget %d%s", ErrNoSpace, src.Size, c.Free, c.Budget, b.poolNote())
	}
	list, err := lvm.Tags{Owned: true, ID: spec.ID, Name: spec.Name, Fork: spec.Owner, Origin: srcID}.List()
	if err != nil {
		return Volume{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	start := time.Now()
	if err := b.c.CreateThinSnapshot(ctx, b.vg, srcID, spec.ID, list); err != nil {
		return Volume{}, fmt.Errorf("clone %s of %s: %w", spec.ID, srcID, mapLVMErr(err))
	}
	b.log.Info("cloned", "id", spec.ID, "origin", srcID, "took", time.Since(start))
	return b.Get(ctx, spec.ID)
}

// Open opens the LV's block device (activating it first). A classic
// snapshot opened for reading is watched: once its COW area passes the
// overflow limit, reads fail with ErrSnapshotOverflow.
func (b *LVMBackend) Open(ctx context.Context, id string, writable bool) (Device, error) {
	l, err := b.lv(ctx, id)
	if err != nil {
		return nil, err
	}
	v := b.toVolume(l)
	if writable && v.Kind == KindSnapshot {
		return nil, fmt.Errorf("%w: snapshot %s is read-only", ErrInvalid, id)
	}
	if !l.Active() {
		if err := b.c.Activate(ctx, b.vg, id); err != nil {
			return nil, fmt.Errorf("open %s: %w", id, mapLVMErr(err))
		}
	}
	var w *lvm.SnapshotWatch
	if l.IsClassicSnapshot() {
		w = b.c.WatchSnapshot(b.vg, id, b.opts.OverflowLimit, b.opts.WatchInterval)
		if err := w.Poll(ctx); err != nil {
			return nil, fmt.Errorf("open %s: %w", id, err)
		}
	}
	d, err := openBlockDevice(l.DevicePath(), writable, b.opts.DirectIO, w)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", id, err)
	}
	if w != nil {
		d.startWatch(b.opts.WatchInterval, b.log)
		// No Fd(): every read of a classic snapshot must pass ReadAt's
		// overflow checks, so nothing may read the descriptor directly.
		return d, nil
	}
	return fdBlockDevice{d}, nil
}

// fdBlockDevice exposes the descriptor of an LV whose reads need no
// checks, so internal/transfer can read and write it with O_DIRECT: a
// buffered read of a cold block device is several times slower here.
type fdBlockDevice struct{ *blockDevice }

// Fd is the open device's descriptor.
func (d fdBlockDevice) Fd() uintptr { return d.f.Fd() }

// Name is the LV's device path, for error messages.
func (d fdBlockDevice) Name() string { return d.f.Name() }

// Attach activates the LV and returns its block device: an LV already is
// one, no loop device is needed.
func (b *LVMBackend) Attach(ctx context.Context, id string) (string, error) {
	l, err := b.lv(ctx, id)
	if err != nil {
		return "", err
	}
	if err := b.c.Activate(ctx, b.vg, id); err != nil {
		return "", fmt.Errorf("attach %s: %w", id, mapLVMErr(err))
	}
	return l.DevicePath(), nil
}

// Detach only checks that the volume exists. It deliberately leaves the LV
// active: deactivating would pull the device from under whatever still has
// it open (a mounted filesystem, PostgreSQL), and an active LV that nobody
// uses costs nothing. Remove deactivates as part of lvremove.
func (b *LVMBackend) Detach(ctx context.Context, id string) error {
	_, err := b.lv(ctx, id)
	return err
}

// blockDevice is a Device over an LV's block device node.
type blockDevice struct {
	f    *os.File
	size int64
	// watch, for a classic snapshot: verdict holds the first overflow error.
	watch   *lvm.SnapshotWatch
	verdict atomic.Pointer[error]
	stop    chan struct{}
	done    chan struct{}
}

func openBlockDevice(path string, writable, direct bool, w *lvm.SnapshotWatch) (*blockDevice, error) {
	flag := os.O_RDONLY
	if writable {
		flag = os.O_RDWR
	}
	if direct {
		flag |= unix.O_DIRECT
	}
	f, err := os.OpenFile(path, flag|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	// Seeking to the end gives the size of a block device and of a regular
	// file alike (tests use files).
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("size of %s: %w", path, err)
	}
	return &blockDevice{f: f, size: size, watch: w}, nil
}

// startWatch polls the snapshot in the background, so reads never wait
// for lvm.
func (d *blockDevice) startWatch(every time.Duration, log hclog.Logger) {
	d.stop, d.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(d.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-d.stop:
				return
			case <-t.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err := d.watch.Poll(ctx)
			cancel()
			if errors.Is(err, ErrSnapshotOverflow) {
				d.verdict.Store(&err)
				log.Error("snapshot overflow", "error", err)
				return
			}
			if err != nil {
				log.Warn("snapshot watch poll failed", "error", err)
			}
		}
	}()
}

func (d *blockDevice) overflow() error {
	if p := d.verdict.Load(); p != nil {
		return *p
	}
	return nil
}

func (d *blockDevice) ReadAt(p []byte, off int64) (int, error) {
	if err := d.overflow(); err != nil {
		return 0, err
	}
	n, err := d.f.ReadAt(p, off)
	if err != nil && d.watch != nil && !errors.Is(err, io.EOF) {
		// dm-snapshot fails every read (EIO) once it invalidated the
		// snapshot: say why rather than a bare I/O error.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		perr := d.watch.Poll(ctx)
		cancel()
		if errors.Is(perr, ErrSnapshotOverflow) {
			return n, fmt.Errorf("%w (read at %d: %v)", perr, off, err)
		}
	}
	if err == nil {
		// Data read after the COW area filled may already be wrong: the
		// verdict is checked again after the read.
		if oerr := d.overflow(); oerr != nil {
			return 0, oerr
		}
	}
	return n, err
}

func (d *blockDevice) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > d.size {
		return 0, fmt.Errorf("%w: write [%d,%d) past device size %d", ErrInvalid, off, off+int64(len(p)), d.size)
	}
	return d.f.WriteAt(p, off)
}

func (d *blockDevice) Size() int64 { return d.size }
func (d *blockDevice) Sync() error { return d.f.Sync() }

func (d *blockDevice) Close() error {
	if d.stop != nil {
		close(d.stop)
		<-d.done
		d.stop = nil
	}
	return d.f.Close()
}

// StartWriteback hints the kernel to start flushing a written range.
func (d *blockDevice) StartWriteback(off, n int64) error {
	err := unix.SyncFileRange(int(d.f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ESPIPE) {
		return nil // only a hint
	}
	return err
}

// Zero makes [off, off+n) read back as zeros with BLKZEROOUT (the device
// zeroes it, by WRITE ZEROES where it can, and the kernel drops the cached
// pages of the range). Parts not aligned to 512 bytes, and files or
// devices without BLKZEROOUT, get written zeros.
func (d *blockDevice) Zero(off, n int64) error {
	if off < 0 || n < 0 || off+n > d.size {
		return fmt.Errorf("%w: zero [%d,%d) past device size %d", ErrInvalid, off, off+n, d.size)
	}
	if n == 0 {
		return nil
	}
	const sector = 512
	start := (off + sector - 1) / sector * sector
	end := (off + n) / sector * sector
	if end <= start {
		return writeZeros(d.f, off, n)
	}
	if start > off {
		if err := writeZeros(d.f, off, start-off); err != nil {
			return err
		}
	}
	if end < off+n {
		if err := writeZeros(d.f, end, off+n-end); err != nil {
			return err
		}
	}
	rng := [2]uint64{uint64(start), uint64(end - start)}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, d.f.Fd(), unix.BLKZEROOUT, uintptr(unsafe.Pointer(&rng)))
	switch errno {
	case 0:
		return nil
	case unix.ENOTTY, unix.EOPNOTSUPP, unix.EINVAL:
		return writeZeros(d.f, start, end-start)
	}
	return fmt.Errorf("BLKZEROOUT [%d,%d): %w", start, end, errno)
}

// ProbeLVName is the LV the agent's pacing probe writes to on an LVM host:
// a file on DATA_DIR may sit on another disk than the VG's PVs, which carry
// no file system at all.
const ProbeLVName = "forknode-ioprobe"

// probeLVSize is enough for the probe's small synchronous writes.
const probeLVSize = 4 << 20

// EnsureProbeLV returns the path of the VG's probe LV, creating it (thick,
// 4 MiB, untagged so it is never taken for a volume) when it is missing.
// An LV of that name made by hand is reused as it is: the probe itself
// refuses a device that holds anything but zeros or its own writes.
func (b *LVMBackend) EnsureProbeLV(ctx context.Context) (string, error) {
	l, err := b.c.LV(ctx, b.vg, ProbeLVName)
	if err == nil {
		if l.HasTag(lvm.TagOwned) {
			return "", fmt.Errorf("%w: %s/%s carries forknode's volume tag", ErrInvalid, b.vg, ProbeLVName)
		}
		return probePath(b.vg, l), nil
	}
	if !errors.Is(err, lvm.ErrNotFound) {
		return "", fmt.Errorf("look for the probe LV %s/%s: %w", b.vg, ProbeLVName, mapLVMErr(err))
	}
	if err := b.c.CreateLinear(ctx, b.vg, ProbeLVName, probeLVSize, nil); err != nil {
		return "", fmt.Errorf("create the probe LV %s/%s: %w", b.vg, ProbeLVName, mapLVMErr(err))
	}
	b.log.Info("created the pacing probe LV", "lv", ProbeLVName, "size", probeLVSize)
	if l, err = b.c.LV(ctx, b.vg, ProbeLVName); err != nil {
		return "", fmt.Errorf("probe LV %s/%s after creating it: %w", b.vg, ProbeLVName, mapLVMErr(err))
	}
	// lvcreate zeroes only the first 4 KiB; the probe accepts a device
	// whose first MiB is zeros or its own, and extents reused from a
	// removed LV hold old data. The LV was made just now: it is ours.
	path := probePath(b.vg, l)
	dev, err := openBlockDevice(path, true, false, nil)
	if err == nil {
		err = dev.Zero(0, dev.Size())
		if serr := dev.Sync(); err == nil {
			err = serr
		}
		dev.Close()
	}
	if err != nil {
		return "", fmt.Errorf("zero the new probe LV %s: %w", path, err)
	}
	return path, nil
}

func probePath(vg string, l lvm.LV) string {
	if l.Path != "" {
		return l.Path
	}
	return "/dev/" + vg + "/" + l.Name
}
