package cow

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/forknode/forknode/internal/lvm"
)

// thinMapGrid is the granularity the thin map is rounded out to: the
// stream's chunk. A finer map saves nothing, since the sender reads whole
// chunks and skips the all-zero ones itself.
const thinMapGrid = 1 << 20

// metaSnapPrefix names the marker file kept in StateDir while a pool's
// metadata snapshot is held. A held snapshot survives a crash and even a
// reboot and pins metadata blocks, so the marker tells the next start to
// release it.
const metaSnapPrefix = "lvm-metadata-snap-"

// Extents of a thin LV are the chunks its pool has mapped, read from a
// metadata snapshot with thin_dump: unmapped blocks read as zeros, so a
// stream need not read them. Anything else (a thick LV, a classic snapshot,
// no thin tools, the pool's one metadata snapshot held by someone else) is
// the whole device, and Copy or the stream skip zero chunks after reading.
func (b *LVMBackend) Extents(ctx context.Context, id string) ([]Extent, error) {
	l, err := b.lv(ctx, id)
	if err != nil {
		return nil, err
	}
	// toVolume's size: lv_size of a classic snapshot is its COW area.
	size := b.toVolume(l).Size
	whole := []Extent{{Offset: 0, Length: size}}
	if !l.IsThin() {
		return whole, nil
	}
	start := time.Now()
	ext, err := b.thinExtents(ctx, l)
	switch {
	case err == nil:
		var mapped int64
		for _, e := range ext {
			mapped += e.Length
		}
		b.log.Info("thin map read", "lv", id, "size", size, "mapped", mapped, "ranges", len(ext), "took", time.Since(start))
		return ext, nil
	case errors.Is(err, lvm.ErrUnsupported):
		b.log.Debug("no thin map: reading the whole LV", "lv", id, "error", err)
	case ctx.Err() != nil:
		return nil, err
	default:
		b.log.Warn("thin map failed: reading the whole LV", "lv", id, "error", err)
	}
	return whole, nil
}

func (b *LVMBackend) thinExtents(ctx context.Context, l lvm.LV) ([]Extent, error) {
	d, err := b.c.ThinDevice(ctx, b.vg, l.Name)
	if err != nil {
		return nil, err
	}
	// A pool holds one metadata snapshot at a time.
	b.metaMu.Lock()
	defer b.metaMu.Unlock()
	b.releaseLeftover(ctx, d.Pool)
	marker := b.metaSnapMarker(d.Pool)
	if marker != "" {
		if err := os.MkdirAll(b.opts.StateDir, 0o750); err != nil {
			return nil, fmt.Errorf("metadata snapshot marker: %w", err)
		}
		if err := writeFileSync(marker, []byte(d.Pool+"\n")); err != nil {
			return nil, fmt.Errorf("metadata snapshot marker: %w", err)
		}
	}
	if err := b.c.ReserveMetadataSnap(ctx, d.Pool); err != nil {
		if marker != "" {
			os.Remove(marker) // not ours: nothing to release later
		}
		return nil, err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if err := b.c.ReleaseMetadataSnap(rctx, d.Pool); err != nil {
			b.log.Error("release of the thin pool's metadata snapshot failed; retried before the next thin map and at the next start",
				"pool", d.Pool, "error", err)
			return
		}
		if marker != "" {
			os.Remove(marker)
		}
	}()
	ranges, err := b.c.ThinMap(ctx, d, l.Size, thinMapGrid)
	if err != nil {
		return nil, err
	}
	out := make([]Extent, len(ranges))
	for i, r := range ranges {
		out[i] = Extent{Offset: r.Offset, Length: r.Length}
	}
	return out, nil
}

func (b *LVMBackend) metaSnapMarker(pool string) string {
	if b.opts.StateDir == "" {
		return ""
	}
	return filepath.Join(b.opts.StateDir, metaSnapPrefix+pool)
}

// releaseLeftover releases a metadata snapshot that a marker says this
// agent took and did not release (a crash, a failed release). Called with
// metaMu held, or before the backend is shared.
func (b *LVMBackend) releaseLeftover(ctx context.Context, pool string) {
	marker := b.metaSnapMarker(pool)
	if marker == "" {
		return
	}
	if _, err := os.Stat(marker); err != nil {
		return
	}
	held, err := b.c.MetadataSnapHeld(ctx, pool)
	if err != nil {
		b.log.Warn("cannot check a leftover thin metadata snapshot", "pool", pool, "error", err)
		return
	}
	if held {
		if err := b.c.ReleaseMetadataSnap(ctx, pool); err != nil {
			b.log.Error("cannot release a leftover thin metadata snapshot", "pool", pool, "error", err)
			return
		}
		b.log.Warn("released a thin metadata snapshot left by an earlier run", "pool", pool)
	}
	os.Remove(marker)
}

// recoverMetaSnaps runs releaseLeftover for every marker in StateDir.
func (b *LVMBackend) recoverMetaSnaps(ctx context.Context) {
	if b.opts.StateDir == "" {
		return
	}
	m, _ := filepath.Glob(filepath.Join(b.opts.StateDir, metaSnapPrefix+"*"))
	for _, p := range m {
		b.releaseLeftover(ctx, strings.TrimPrefix(filepath.Base(p), metaSnapPrefix))
	}
}

// writeFileSync writes a small file and makes it and its name durable.
func writeFileSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(path))
}
