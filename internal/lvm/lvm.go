package lvm

import (
	"context"
	"fmt"
	"math"

	"github.com/hashicorp/go-hclog"
)

// Client runs lvm operations through one Runner.
type Client struct {
	r   Runner
	log hclog.Logger
}

// New returns a Client. A nil runner means ExecRunner{} (lvm on PATH); a
// nil logger discards.
func New(r Runner, logger hclog.Logger) *Client {
	if r == nil {
		r = ExecRunner{}
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &Client{r: r, log: logger}
}

func (c *Client) run(ctx context.Context, args []string, err error) ([]byte, error) {
	if err != nil {
		return nil, err
	}
	c.log.Debug("lvm", "args", args)
	out, err := c.r.Run(ctx, args...)
	if err != nil {
		c.log.Debug("lvm failed", "args", args, "error", err)
	}
	return out, err
}

// VG reports one volume group (capacity and extent size).
func (c *Client) VG(ctx context.Context, vg string) (VG, error) {
	args, err := VGReportArgs(vg)
	out, err := c.run(ctx, args, err)
	if err != nil {
		return VG{}, err
	}
	vgs, err := ParseVGReport(out)
	if err != nil {
		return VG{}, err
	}
	for _, v := range vgs {
		if v.Name == vg {
			return v, nil
		}
	}
	return VG{}, fmt.Errorf("volume group %q: %w", vg, ErrNotFound)
}

// LVs lists every (visible) LV of vg.
func (c *Client) LVs(ctx context.Context, vg string) ([]LV, error) {
	args, err := LVReportArgs(vg, "")
	out, err := c.run(ctx, args, err)
	if err != nil {
		return nil, err
	}
	return ParseLVReport(out)
}

// LV reports vg/name; a missing LV is ErrNotFound.
func (c *Client) LV(ctx context.Context, vg, name string) (LV, error) {
	args, err := LVReportArgs(vg, name)
	out, err := c.run(ctx, args, err)
	if err != nil {
		return LV{}, err
	}
	lvs, err := ParseLVReport(out)
	if err != nil {
		return LV{}, err
	}
	for _, l := range lvs {
		if l.Name == name {
			return l, nil
		}
	}
	return LV{}, fmt.Errorf("logical volume %s/%s: %w", vg, name, ErrNotFound)
}

// ListTagged lists the LVs of vg that carry tag. The filter runs here, on
// the parsed tag list, so it is an exact match whatever lvm's selection
// syntax does with lists.
func (c *Client) ListTagged(ctx context.Context, vg, tag string) ([]LV, error) {
	all, err := c.LVs(ctx, vg)
	if err != nil {
		return nil, err
	}
	var out []LV
	for _, l := range all {
		if l.HasTag(tag) {
			out = append(out, l)
		}
	}
	return out, nil
}

// ThinPools lists the thin pools of vg.
func (c *Client) ThinPools(ctx context.Context, vg string) ([]LV, error) {
	all, err := c.LVs(ctx, vg)
	if err != nil {
		return nil, err
	}
	var out []LV
	for _, l := range all {
		if l.IsThinPool() {
			out = append(out, l)
		}
	}
	return out, nil
}

// CreateLinear makes a thick LV of size bytes (rounded up to extents).
func (c *Client) CreateLinear(ctx context.Context, vg, name string, size int64, tags []string) error {
	args, err := CreateLinearArgs(vg, name, size, tags)
	_, err = c.run(ctx, args, err)
	return err
}

// CreateSnapshot makes a classic snapshot of vg/origin with cowSize bytes
// of copy-on-write space (see SnapshotSize).
func (c *Client) CreateSnapshot(ctx context.Context, vg, origin, name string, cowSize int64, tags []string) error {
	args, err := CreateSnapshotArgs(vg, origin, name, cowSize, tags)
	_, err = c.run(ctx, args, err)
	return err
}

// CreateThin makes a thin LV of virtual size bytes in vg/pool.
func (c *Client) CreateThin(ctx context.Context, vg, pool, name string, size int64, tags []string) error {
	args, err := CreateThinArgs(vg, pool, name, size, tags)
	_, err = c.run(ctx, args, err)
	return err
}

// CreateThinSnapshot makes an active thin snapshot of the thin LV vg/origin.
func (c *Client) CreateThinSnapshot(ctx context.Context, vg, origin, name string, tags []string) error {
	args, err := CreateThinSnapshotArgs(vg, origin, name, tags)
	_, err = c.run(ctx, args, err)
	return err
}

// Remove removes vg/name.
func (c *Client) Remove(ctx context.Context, vg, name string) error {
	args, err := RemoveArgs(vg, name)
	_, err = c.run(ctx, args, err)
	return err
}

// Activate activates vg/name (idempotent).
func (c *Client) Activate(ctx context.Context, vg, name string) error {
	args, err := ActivateArgs(vg, name)
	_, err = c.run(ctx, args, err)
	return err
}

// Deactivate deactivates vg/name.
func (c *Client) Deactivate(ctx context.Context, vg, name string) error {
	args, err := DeactivateArgs(vg, name)
	_, err = c.run(ctx, args, err)
	return err
}

// SnapshotSize is the sizing rule for the copy-on-write area of a classic
// snapshot taken for a copy. The area must absorb every origin block written
// while the copy runs (each first write to a chunk copies the chunk once),
// so it scales with the origin: ratio × originSize, at least minSize, and
// never more than originSize plus one extent per 64 MiB plus one (a
// snapshot as big as its origin plus dm-snapshot's metadata can never
// overflow). The result is rounded up to whole extents. Defaults:
// ratio 0.2, minSize 64 MiB, extent 4 MiB.
func SnapshotSize(originSize, extentSize int64, ratio float64, minSize int64) int64 {
	if extentSize <= 0 {
		extentSize = 4 << 20
	}
	if ratio <= 0 {
		ratio = 0.2
	}
	if minSize < 0 {
		minSize = 0
	}
	want := int64(math.Ceil(float64(originSize) * ratio))
	want = max(want, minSize)
	full := originSize + (originSize/(64<<20)+1)*extentSize
	want = min(want, full)
	want = max(want, extentSize)
	return (want + extentSize - 1) / extentSize * extentSize
}

// DelTag removes tag from vg/name.
func (c *Client) DelTag(ctx context.Context, vg, name, tag string) error {
	args, err := DelTagArgs(vg, name, tag)
	_, err = c.run(ctx, args, err)
	return err
}
