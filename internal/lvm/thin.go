package lvm

import (
	"bytes"
	"cmp"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// Range is a byte range of an LV.
type Range struct{ Offset, Length int64 }

// ThinDev says where a thin LV's block mappings live.
type ThinDev struct {
	DevID    int64  // the thin device's id in the pool's metadata
	Pool     string // device-mapper name of the pool target (VG-POOL-tpool)
	MetaPath string // the pool's metadata device (/dev/mapper/VG-POOL_tmeta)
}

// maxThinRanges bounds a parsed thin map. Mappings come in origin order and
// merge on the caller's grid, so a real map stays far below it; only a
// hostile or broken dump reaches it.
const maxThinRanges = 1 << 20

// DMName is the device-mapper name LVM gives vg/lv: each '-' doubled, the
// two joined by '-'.
func DMName(vg, lv string) string {
	return strings.ReplaceAll(vg, "-", "--") + "-" + strings.ReplaceAll(lv, "-", "--")
}

func (c *Client) tool(ctx context.Context, stdout io.Writer, tool string, args ...string) error {
	tr, ok := c.r.(ToolRunner)
	if !ok {
		return fmt.Errorf("%w: the lvm runner cannot run %s", ErrUnsupported, tool)
	}
	c.log.Debug(tool, "args", args)
	err := tr.RunTool(ctx, stdout, tool, args...)
	if err != nil {
		c.log.Debug(tool+" failed", "args", args, "error", err)
	}
	return err
}

func (c *Client) dmsetup(ctx context.Context, args ...string) (string, error) {
	var b bytes.Buffer
	err := c.tool(ctx, &b, "dmsetup", args...)
	return strings.TrimSpace(b.String()), err
}

// dmDevNum is NAME's "major:minor".
func (c *Client) dmDevNum(ctx context.Context, name string) (string, error) {
	return c.dmsetup(ctx, "info", "-c", "--noheadings", "-o", "major,minor", "--separator", ":", name)
}

// ThinDevice finds the pool, metadata device and device id of the active
// thin LV vg/lv. Each name LVM's conventions give is checked against the
// device numbers in the kernel's own tables, so a map is never read for a
// device other than this LV's. An LV whose unmapped blocks come from an
// external origin has no useful map: ErrUnsupported.
func (c *Client) ThinDevice(ctx context.Context, vg, lv string) (ThinDev, error) {
	l, err := c.LV(ctx, vg, lv)
	if err != nil {
		return ThinDev{}, err
	}
	if !l.IsThin() || l.Pool == "" {
		return ThinDev{}, fmt.Errorf("%w: %s/%s is not a thin LV", ErrUnsupported, vg, lv)
	}
	table, err := c.dmsetup(ctx, "table", DMName(vg, lv))
	if err != nil {
		return ThinDev{}, err
	}
	// "0 <sectors> thin <pool major:minor> <dev id> [<external origin>]"
	f := strings.Fields(table)
	if strings.Contains(table, "\n") || len(f) < 5 || f[2] != "thin" {
		return ThinDev{}, fmt.Errorf("%w: %s/%s table %q", ErrUnsupported, vg, lv, table)
	}
	if len(f) > 5 {
		return ThinDev{}, fmt.Errorf("%w: %s/%s has an external origin", ErrUnsupported, vg, lv)
	}
	id, err := strconv.ParseInt(f[4], 10, 64)
	if err != nil || id < 0 {
		return ThinDev{}, fmt.Errorf("%w: %s/%s table %q: bad device id", ErrUnsupported, vg, lv, table)
	}
	pool := ""
	for _, name := range []string{DMName(vg, l.Pool) + "-tpool", DMName(vg, l.Pool)} {
		if num, err := c.dmDevNum(ctx, name); err == nil && num == f[3] {
			pool = name
			break
		}
	}
	if pool == "" {
		return ThinDev{}, fmt.Errorf("%w: no device-mapper name for pool %s/%s (%s)", ErrUnsupported, vg, l.Pool, f[3])
	}
	ptable, err := c.dmsetup(ctx, "table", pool)
	if err != nil {
		return ThinDev{}, err
	}
	// "0 <sectors> thin-pool <metadata major:minor> <data major:minor> ..."
	pf := strings.Fields(ptable)
	if len(pf) < 5 || pf[2] != "thin-pool" {
		return ThinDev{}, fmt.Errorf("%w: pool %s table %q", ErrUnsupported, pool, ptable)
	}
	meta := DMName(vg, l.Pool+"_tmeta")
	if num, err := c.dmDevNum(ctx, meta); err != nil || num != pf[3] {
		return ThinDev{}, fmt.Errorf("%w: metadata device of pool %s is %s, not %s", ErrUnsupported, pool, pf[3], meta)
	}
	return ThinDev{DevID: id, Pool: pool, MetaPath: "/dev/mapper/" + meta}, nil
}

// MetadataSnapHeld reports whether the pool holds a metadata snapshot (the
// "held metadata root" of its status).
func (c *Client) MetadataSnapHeld(ctx context.Context, pool string) (bool, error) {
	st, err := c.dmsetup(ctx, "status", pool)
	if err != nil {
		return false, err
	}
	return parseHeldRoot(st)
}

// parseHeldRoot reads a thin-pool status line: "0 <sectors> thin-pool
// <transaction> <meta used/total> <data used/total> <held root|-> ...".
func parseHeldRoot(status string) (bool, error) {
	f := strings.Fields(status)
	if len(f) < 7 || f[2] != "thin-pool" {
		return false, fmt.Errorf("%w: thin-pool status %q", ErrUnsupported, status)
	}
	return f[6] != "-", nil
}

// ReserveMetadataSnap takes the pool's metadata snapshot: a frozen, consistent
// copy of its mappings that thin_dump -m reads while the pool stays live. A
// pool holds one at most; a second is ErrMetadataSnapHeld. The caller must
// release it: a held snapshot pins metadata blocks, even across reboots.
func (c *Client) ReserveMetadataSnap(ctx context.Context, pool string) error {
	if held, err := c.MetadataSnapHeld(ctx, pool); err != nil {
		return err
	} else if held {
		return fmt.Errorf("pool %s: %w", pool, ErrMetadataSnapHeld)
	}
	_, err := c.dmsetup(ctx, "message", pool, "0", "reserve_metadata_snap")
	return err
}

// ReleaseMetadataSnap drops the pool's metadata snapshot.
func (c *Client) ReleaseMetadataSnap(ctx context.Context, pool string) error {
	_, err := c.dmsetup(ctx, "message", pool, "0", "release_metadata_snap")
	return err
}

// ThinMap lists where the thin device holds data, from the pool's reserved
// metadata snapshot (see ReserveMetadataSnap), as byte ranges of a size-byte
// LV rounded out to multiples of grid and merged. Blocks outside them are
// unmapped and read as zeros.
//
// The dump is parsed as it streams: a fragmented volume's XML runs to
// hundreds of megabytes, the merged map to a few.
func (c *Client) ThinMap(ctx context.Context, d ThinDev, size, grid int64) ([]Range, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := c.tool(ctx, pw, "thin_dump", "-f", "xml", "-m", "--dev-id", strconv.FormatInt(d.DevID, 10), d.MetaPath)
		pw.CloseWithError(err)
		done <- err
	}()
	out, perr := ParseThinDump(pr, d.DevID, size, grid)
	if perr != nil {
		cancel() // stop thin_dump, which may be blocked writing to us
		pr.CloseWithError(perr)
	}
	terr := <-done
	switch {
	case terr != nil && !errors.Is(terr, context.Canceled):
		return nil, terr // thin_dump's own error carries its stderr
	case perr != nil:
		return nil, perr
	case terr != nil:
		return nil, terr
	}
	return out, nil
}

// ParseThinDump reads thin_dump's XML for device devID into byte ranges of
// a size-byte LV, rounded out to multiples of grid, merged and sorted. A
// dump without that device is an error, never an empty map: reading it as
// "all unmapped" would turn data into zeros.
func ParseThinDump(r io.Reader, devID, size, grid int64) ([]Range, error) {
	if grid <= 0 || size < 0 {
		return nil, fmt.Errorf("%w: grid %d, size %d", ErrInvalid, grid, size)
	}
	dec := xml.NewDecoder(r)
	var (
		block int64 // data block size in bytes
		inDev bool
		found bool
		out   []Range
	)
	add := func(begin, n int64) error {
		if n <= 0 || begin < 0 || block == 0 {
			return fmt.Errorf("thin_dump: bad mapping (begin %d, length %d, block %d)", begin, n, block)
		}
		last := size/block + 1 // blocks that can hold any of the LV
		if begin >= last {
			return nil // past the end of the LV
		}
		n = min(n, last-begin) // clipped, never dropped: it starts inside
		s := begin * block / grid * grid
		e := min((begin+n)*block, size)
		if e <= s {
			return nil
		}
		e = min((e+grid-1)/grid*grid, size)
		// In origin order (thin_dump's) a mapping extends the last range;
		// anything else is appended, and mergeRanges sorts it out.
		if n := len(out); n > 0 && s >= out[n-1].Offset && s <= out[n-1].Offset+out[n-1].Length {
			out[n-1].Length = max(out[n-1].Length, e-out[n-1].Offset)
			return nil
		}
		if len(out) >= maxThinRanges {
			return fmt.Errorf("thin_dump: more than %d ranges", maxThinRanges)
		}
		out = append(out, Range{Offset: s, Length: e - s})
		return nil
	}
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("thin_dump: %w", err)
		}
		switch el := tok.(type) {
		case xml.StartElement:
			attrs := func(names ...string) ([]int64, error) {
				v := make([]int64, len(names))
				for i, n := range names {
					s, ok := attr(el, n)
					if !ok {
						return nil, fmt.Errorf("thin_dump: <%s> without %s", el.Name.Local, n)
					}
					x, err := strconv.ParseInt(s, 10, 64)
					if err != nil || x < 0 {
						return nil, fmt.Errorf("thin_dump: <%s %s=%q>", el.Name.Local, n, s)
					}
					v[i] = x
				}
				return v, nil
			}
			switch el.Name.Local {
			case "superblock":
				v, err := attrs("data_block_size")
				if err != nil {
					return nil, err
				}
				// dm-thin's block sizes: 64 KiB to 1 GiB, in 512-byte sectors.
				if v[0] < 128 || v[0] > 2097152 {
					return nil, fmt.Errorf("thin_dump: data_block_size %d sectors", v[0])
				}
				block = v[0] * 512
			case "device":
				v, err := attrs("dev_id")
				if err != nil {
					return nil, err
				}
				inDev = v[0] == devID
				found = found || inDev
			case "range_mapping":
				if !inDev {
					continue
				}
				v, err := attrs("origin_begin", "length")
				if err != nil {
					return nil, err
				}
				if err := add(v[0], v[1]); err != nil {
					return nil, err
				}
			case "single_mapping":
				if !inDev {
					continue
				}
				v, err := attrs("origin_block")
				if err != nil {
					return nil, err
				}
				if err := add(v[0], 1); err != nil {
					return nil, err
				}
			}
		case xml.EndElement:
			if el.Name.Local == "device" {
				inDev = false
			}
		}
	}
	if !found {
		return nil, fmt.Errorf("thin_dump: device %d: %w", devID, ErrNotFound)
	}
	return mergeRanges(out), nil
}

func attr(el xml.StartElement, name string) (string, bool) {
	for _, a := range el.Attr {
		if a.Name.Local == name {
			return a.Value, true
		}
	}
	return "", false
}

// mergeRanges sorts and merges overlapping or touching ranges; thin_dump
// lists mappings in origin order, so this is only a guard.
func mergeRanges(in []Range) []Range {
	if in == nil {
		return []Range{}
	}
	slices.SortFunc(in, func(a, b Range) int { return cmp.Compare(a.Offset, b.Offset) })
	out := in[:0]
	for _, r := range in {
		if n := len(out); n > 0 && r.Offset <= out[n-1].Offset+out[n-1].Length {
			out[n-1].Length = max(out[n-1].Length, r.Offset+r.Length-out[n-1].Offset)
			continue
		}
		out = append(out, r)
	}
	return out
}
