package lvm

import (
	"fmt"
	"strconv"
	"strings"
)

// Field lists of the reports. Explicit, so a newer lvm with more default
// columns cannot change what is parsed.
const (
	vgFields = "vg_name,vg_size,vg_free,vg_extent_size"
	lvFields = "lv_name,vg_name,lv_size,lv_attr,pool_lv,origin,origin_size,data_percent,metadata_percent,lv_tags,lv_path,segtype,lv_time"
)

// reportFlags make every report JSON with sizes in plain bytes.
var reportFlags = []string{"--reportformat", "json", "--units", "b", "--nosuffix"}

// maxNameLen: lvm's NAME_LEN is 128 including the terminating NUL.
const maxNameLen = 127

// reservedLVParts are substrings lvm reserves for its internal sub-LVs.
var reservedLVParts = []string{"_cdata", "_cmeta", "_corig", "_cpool", "_cvol", "_imeta", "_iorig",
	"_mimage", "_mlog", "_pmspare", "_rimage", "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig"}

// ValidateName checks a VG or LV name against lvm's rules: 1-127 bytes of
// [A-Za-z0-9+_.-], not starting with '-', not "." or "..", and (for LVs)
// none of lvm's reserved prefixes or suffixes.
func ValidateName(kind, name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty %s name", ErrInvalid, kind)
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("%w: %s name is %d bytes, lvm allows %d", ErrInvalid, kind, len(name), maxNameLen)
	}
	if name == "." || name == ".." || name[0] == '-' {
		return fmt.Errorf("%w: %s name %q is not allowed by lvm", ErrInvalid, kind, name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("+_.-", c) >= 0
		if !ok {
			return fmt.Errorf("%w: %s name %q has character %q; lvm allows A-Z a-z 0-9 + _ . -", ErrInvalid, kind, name, c)
		}
	}
	if kind == "lv" {
		if strings.HasPrefix(name, "snapshot") || strings.HasPrefix(name, "pvmove") {
			return fmt.Errorf("%w: lv name %q uses a prefix lvm reserves", ErrInvalid, name)
		}
		for _, r := range reservedLVParts {
			if strings.Contains(name, r) {
				return fmt.Errorf("%w: lv name %q contains %q, which lvm reserves", ErrInvalid, name, r)
			}
		}
	}
	return nil
}

func lvPath(vg, lv string) string { return vg + "/" + lv }

func checkVGLV(vg, lv string) error {
	if err := ValidateName("vg", vg); err != nil {
		return err
	}
	return ValidateName("lv", lv)
}

// sizeArg renders bytes for -L/-V. lvm rounds it up to whole extents.
func sizeArg(size int64) (string, error) {
	if size <= 0 || size%512 != 0 {
		return "", fmt.Errorf("%w: size %d must be a positive multiple of 512", ErrInvalid, size)
	}
	return strconv.FormatInt(size, 10) + "b", nil
}

func tagArgs(tags []string) []string {
	var out []string
	for _, t := range tags {
		out = append(out, "--addtag", t)
	}
	return out
}

func checkTags(tags []string) error {
	for _, t := range tags {
		if t == "" || len(t) > maxTagLen {
			return fmt.Errorf("%w: tag %q: empty or longer than %d", ErrInvalid, t, maxTagLen)
		}
		for i := 0; i < len(t); i++ {
			if !tagSafe(t[i]) && t[i] != '&' {
				return fmt.Errorf("%w: tag %q has character %q outside lvm's tag charset", ErrInvalid, t, t[i])
			}
		}
	}
	return nil
}

// VGReportArgs reports one volume group.
func VGReportArgs(vg string) ([]string, error) {
	if err := ValidateName("vg", vg); err != nil {
		return nil, err
	}
	return concat([]string{"vgs"}, reportFlags, []string{"-o", vgFields, vg}), nil
}

// LVReportArgs reports every LV of vg, or only vg/lv when lv is not empty.
func LVReportArgs(vg, lv string) ([]string, error) {
	if err := ValidateName("vg", vg); err != nil {
		return nil, err
	}
	target := vg
	if lv != "" {
		if err := ValidateName("lv", lv); err != nil {
			return nil, err
		}
		target = lvPath(vg, lv)
	}
	return concat([]string{"lvs"}, reportFlags, []string{"-o", lvFields, target}), nil
}

// CreateLinearArgs makes a thick (linear) LV. -W y wipes signatures it
// finds and -Z y zeroes the first 4 KiB; the rest of the old data is the
// caller's to clear (see cow's LVM backend, which zeroes the whole LV).
func CreateLinearArgs(vg, name string, size int64, tags []string) ([]string, error) {
	if err := checkVGLV(vg, name); err != nil {
		return nil, err
	}
	sz, err := sizeArg(size)
	if err != nil {
		return nil, err
	}
	if err := checkTags(tags); err != nil {
		return nil, err
	}
	return concat([]string{"lvcreate", "-y", "-W", "y", "-Z", "y", "-L", sz, "-n", name}, tagArgs(tags), []string{vg}), nil
}

// CreateSnapshotArgs makes a classic (thick) snapshot of vg/origin with a
// copy-on-write area of cowSize bytes.
func CreateSnapshotArgs(vg, origin, name string, cowSize int64, tags []string) ([]string, error) {
	if err := checkVGLV(vg, origin); err != nil {
		return nil, err
	}
	if err := ValidateName("lv", name); err != nil {
		return nil, err
	}
	sz, err := sizeArg(cowSize)
	if err != nil {
		return nil, err
	}
	if err := checkTags(tags); err != nil {
		return nil, err
	}
	return concat([]string{"lvcreate", "-y", "-s", "-L", sz, "-n", name}, tagArgs(tags), []string{lvPath(vg, origin)}), nil
}

// CreateThinArgs makes a thin LV of virtual size size in vg/pool.
func CreateThinArgs(vg, pool, name string, size int64, tags []string) ([]string, error) {
	if err := checkVGLV(vg, name); err != nil {
		return nil, err
	}
	if err := ValidateName("lv", pool); err != nil {
		return nil, err
	}
	sz, err := sizeArg(size)
	if err != nil {
		return nil, err
	}
	if err := checkTags(tags); err != nil {
		return nil, err
	}
	return concat([]string{"lvcreate", "-y", "-V", sz, "--thinpool", pool, "-n", name}, tagArgs(tags), []string{vg}), nil
}

// CreateThinSnapshotArgs makes a thin snapshot of the thin LV vg/origin.
// -kn clears the activation-skip flag lvm sets on thin snapshots, so the
// snapshot is activated at once like any volume.
func CreateThinSnapshotArgs(vg, origin, name string, tags []string) ([]string, error) {
	if err := checkVGLV(vg, origin); err != nil {
		return nil, err
	}
	if err := ValidateName("lv", name); err != nil {
		return nil, err
	}
	if err := checkTags(tags); err != nil {
		return nil, err
	}
	return concat([]string{"lvcreate", "-y", "-s", "-kn", "-n", name}, tagArgs(tags), []string{lvPath(vg, origin)}), nil
}

// RemoveArgs removes vg/name without prompting.
func RemoveArgs(vg, name string) ([]string, error) {
	if err := checkVGLV(vg, name); err != nil {
		return nil, err
	}
	return []string{"lvremove", "-y", lvPath(vg, name)}, nil
}

// ActivateArgs activates vg/name; -K also activates an LV flagged to skip
// activation (a thin snapshot made without -kn).
func ActivateArgs(vg, name string) ([]string, error) {
	if err := checkVGLV(vg, name); err != nil {
		return nil, err
	}
	return []string{"lvchange", "-ay", "-K", lvPath(vg, name)}, nil
}

// DeactivateArgs deactivates vg/name.
func DeactivateArgs(vg, name string) ([]string, error) {
	if err := checkVGLV(vg, name); err != nil {
		return nil, err
	}
	return []string{"lvchange", "-an", lvPath(vg, name)}, nil
}

func concat(parts ...[]string) []string {
	var out []string
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// DelTagArgs removes tag from vg/name.
func DelTagArgs(vg, name, tag string) ([]string, error) {
	if err := checkVGLV(vg, name); err != nil {
		return nil, err
	}
	if err := checkTags([]string{tag}); err != nil {
		return nil, err
	}
	return []string{"lvchange", "--deltag", tag, lvPath(vg, name)}, nil
}
