package lvm

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// DefaultOverflowLimit is the data_percent at which a watched classic
// snapshot counts as overflowing. It leaves room for the writes that land
// between two polls; at 100% dm-snapshot invalidates the snapshot and every
// read through it fails.
const DefaultOverflowLimit = 80.0

// SnapshotWatch polls the data_percent of a classic snapshot. A copy loop
// calls Check as often as it likes; lvm runs at most once per Interval.
// Once the limit is reached Check keeps returning ErrSnapshotOverflow.
type SnapshotWatch struct {
	c        *Client
	vg, name string
	limit    float64
	interval time.Duration

	mu   sync.Mutex
	last time.Time
	pct  float64
	err  error
}

// WatchSnapshot watches vg/name. limit <= 0 means DefaultOverflowLimit;
// interval <= 0 means 250ms.
func (c *Client) WatchSnapshot(vg, name string, limit float64, interval time.Duration) *SnapshotWatch {
	if limit <= 0 || limit > 100 {
		limit = DefaultOverflowLimit
	}
	if interval <= 0 {
		interval = 250 * time.Millisecond
	}
	return &SnapshotWatch{c: c, vg: vg, name: name, limit: limit, interval: interval}
}

// Percent is the last data_percent seen.
func (w *SnapshotWatch) Percent() float64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pct
}

// Check returns ErrSnapshotOverflow (wrapped, with the figures) once the
// snapshot's COW area is at or above the limit, or when lvm reports it
// invalid. Between polls it returns the last verdict.
func (w *SnapshotWatch) Check(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil || time.Since(w.last) < w.interval {
		return w.err
	}
	return w.pollLocked(ctx)
}

// Poll queries lvm now, whatever the interval.
func (w *SnapshotWatch) Poll(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	return w.pollLocked(ctx)
}

func (w *SnapshotWatch) pollLocked(ctx context.Context) error {
	w.last = time.Now()
	lv, err := w.c.LV(ctx, w.vg, w.name)
	if err != nil {
		// A failed poll is not an overflow; the caller decides.
		return fmt.Errorf("watch snapshot %s/%s: %w", w.vg, w.name, err)
	}
	w.pct = lv.DataPct
	switch {
	case lv.Invalid():
		w.err = fmt.Errorf("%w: snapshot %s/%s is invalid (overflowed, lv_attr %s); give it more space (larger snapshot ratio) or fork while fewer writes land",
			ErrSnapshotOverflow, w.vg, w.name, lv.Attr)
	case lv.HasDataPct && lv.DataPct >= w.limit:
		w.err = fmt.Errorf("%w: snapshot %s/%s is %.2f%% full (limit %.0f%%, %d bytes of copy-on-write space); give it more space (larger snapshot ratio) or fork while fewer writes land",
			ErrSnapshotOverflow, w.vg, w.name, lv.DataPct, w.limit, lv.Size)
	}
	return w.err
}
