package lvm

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// VG is one row of the volume group report. Sizes in bytes.
type VG struct {
	Name       string
	Size       int64
	Free       int64
	ExtentSize int64
}

// LV is one row of the logical volume report. Sizes in bytes.
type LV struct {
	Name       string
	VG         string
	Size       int64  // lv_size: the virtual size of a thin LV, the COW size of a classic snapshot
	Attr       string // lv_attr, e.g. "-wi-a-----", "swi-a-s---", "twi-aotz--", "Vwi-a-tz--"
	Pool       string // pool_lv of a thin LV
	Origin     string
	OriginSize int64   // size of the origin of a snapshot, 0 otherwise
	DataPct    float64 // data_percent; valid only when HasDataPct
	HasDataPct bool
	MetaPct    float64 // metadata_percent of a thin pool; valid only when HasMetaPct
	HasMetaPct bool
	Tags       []string
	Path       string // /dev/VG/LV
	SegType    string // "linear", "thin", "thin-pool", "snapshot"...
	Created    time.Time
}

// attr returns the i-th character of lv_attr, or 0.
func (l LV) attr(i int) byte {
	if i < len(l.Attr) {
		return l.Attr[i]
	}
	return 0
}

// IsThinPool: lv_attr type 't'.
func (l LV) IsThinPool() bool { return l.attr(0) == 't' || l.SegType == "thin-pool" }

// IsThin: a thin volume (lv_attr type 'V'), including thin snapshots.
func (l LV) IsThin() bool { return l.attr(0) == 'V' || l.SegType == "thin" }

// IsClassicSnapshot: a thick snapshot with its own COW area ('s', or 'S'
// when invalid).
func (l LV) IsClassicSnapshot() bool { return l.attr(0) == 's' || l.attr(0) == 'S' }

// Active: lv_attr state 'a'.
func (l LV) Active() bool { return l.attr(4) == 'a' }

// Invalid: a classic snapshot that overflowed (state 'I', or type 'S').
func (l LV) Invalid() bool { return l.attr(4) == 'I' || l.attr(0) == 'S' }

// ZeroesNewBlocks: a thin pool that overwrites newly provisioned blocks
// with zeros (lv_attr 'z' at position 8). Without it a partial write to a
// fresh block can expose what an earlier thin LV left there.
func (l LV) ZeroesNewBlocks() bool { return l.attr(7) == 'z' }

// HasTag reports whether the LV carries tag.
func (l LV) HasTag(tag string) bool {
	for _, t := range l.Tags {
		if t == tag {
			return true
		}
	}
	return false
}

// DevicePath is lv_path, or /dev/VG/LV when lvm left it empty.
func (l LV) DevicePath() string {
	if l.Path != "" {
		return l.Path
	}
	return "/dev/" + l.VG + "/" + l.Name
}

// The JSON report: every value is a string.
type jsonReport struct {
	Report []struct {
		VG []map[string]string `json:"vg"`
		LV []map[string]string `json:"lv"`
	} `json:"report"`
}

func parseInt(field, s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("lvm report: field %s: %q is not a byte count", field, s)
	}
	return v, nil
}

// ParseVGReport parses `vgs --reportformat json --units b --nosuffix`.
func ParseVGReport(data []byte) ([]VG, error) {
	var r jsonReport
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("lvm report: %w", err)
	}
	var out []VG
	for _, sec := range r.Report {
		for _, row := range sec.VG {
			v := VG{Name: row["vg_name"]}
			var err error
			if v.Size, err = parseInt("vg_size", row["vg_size"]); err != nil {
				return nil, err
			}
			if v.Free, err = parseInt("vg_free", row["vg_free"]); err != nil {
				return nil, err
			}
			if v.ExtentSize, err = parseInt("vg_extent_size", row["vg_extent_size"]); err != nil {
				return nil, err
			}
			out = append(out, v)
		}
	}
	return out, nil
}

// lvTimeLayout is how lvm prints lv_time.
const lvTimeLayout = "2006-01-02 15:04:05 -0700"

// ParseLVReport parses `lvs --reportformat json --units b --nosuffix`.
func ParseLVReport(data []byte) ([]LV, error) {
	var r jsonReport
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("lvm report: %w", err)
	}
	var out []LV
	for _, sec := range r.Report {
		for _, row := range sec.LV {
			l := LV{
				Name:    row["lv_name"],
				VG:      row["vg_name"],
				Attr:    row["lv_attr"],
				Pool:    row["pool_lv"],
				Origin:  row["origin"],
				Path:    row["lv_path"],
				SegType: row["segtype"],
			}
			var err error
			if l.Size, err = parseInt("lv_size", row["lv_size"]); err != nil {
				return nil, err
			}
			if l.OriginSize, err = parseInt("origin_size", row["origin_size"]); err != nil {
				return nil, err
			}
			if p := row["data_percent"]; p != "" {
				v, err := strconv.ParseFloat(p, 64)
				if err != nil {
					return nil, fmt.Errorf("lvm report: field data_percent: %q is not a number", p)
				}
				l.DataPct, l.HasDataPct = v, true
			}
			if p := row["metadata_percent"]; p != "" {
				v, err := strconv.ParseFloat(p, 64)
				if err != nil {
					return nil, fmt.Errorf("lvm report: field metadata_percent: %q is not a number", p)
				}
				l.MetaPct, l.HasMetaPct = v, true
			}
			if tags := row["lv_tags"]; tags != "" {
				l.Tags = strings.Split(tags, ",")
			}
			if ts := row["lv_time"]; ts != "" {
				if t, err := time.Parse(lvTimeLayout, ts); err == nil {
					l.Created = t
				}
			}
			out = append(out, l)
		}
	}
	return out, nil
}
