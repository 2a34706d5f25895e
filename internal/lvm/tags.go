package lvm

import (
	"fmt"
	"strconv"
	"strings"
)

// Tag names. Every LV forknode creates carries TagOwned; the rest carry
// key:value pairs whose values are escaped with EscapeTagValue.
const (
	TagOwned = "forknode"
	// TagPending marks an LV whose creation is not finished (a thick LV not
	// yet zeroed); it is removed as the last step of a create.
	TagPending   = "forknode-pending"
	tagIDKey     = "forknode-id"
	tagNameKey   = "forknode-name"
	tagForkKey   = "forknode-fork"
	tagOriginKey = "forknode-origin"
	tagKindKey   = "forknode-kind"
	// KindSnapshot is the forknode-kind value of a snapshot LV.
	KindSnapshot = "snapshot"
	// maxTagLen is lvm's limit on one tag.
	maxTagLen = 1024
)

// tagSafe reports whether lvm accepts c in a tag: [A-Za-z0-9_+.-/=!:&#].
// '&' is taken out because it starts an escape.
func tagSafe(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("_+.-/=!:#", c) >= 0
}

// EscapeTagValue maps any string into lvm's tag charset: safe bytes stay,
// every other byte (including '&') becomes "&" and two lowercase hex digits.
func EscapeTagValue(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if tagSafe(c) {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "&%02x", c)
	}
	return b.String()
}

// UnescapeTagValue reverses EscapeTagValue.
func UnescapeTagValue(s string) (string, error) {
	if !strings.Contains(s, "&") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '&' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", fmt.Errorf("%w: truncated escape in tag value %q", ErrInvalid, s)
		}
		v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil {
			return "", fmt.Errorf("%w: bad escape in tag value %q", ErrInvalid, s)
		}
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), nil
}

// Tags is what forknode records on an LV.
type Tags struct {
	Owned  bool   // carries TagOwned
	ID     string // forknode-id
	Name   string // forknode-name
	Fork   string // forknode-fork: the fork (owner) that made it
	Origin string // forknode-origin: source volume id of a snapshot or clone
	Kind   string // forknode-kind: KindSnapshot, or "" for a volume
	// Pending: carries TagPending (creation unfinished).
	Pending bool
}

// List renders t as lvm tags, TagOwned first. It fails with ErrInvalid when
// a tag would exceed lvm's length limit.
func (t Tags) List() ([]string, error) {
	out := []string{TagOwned}
	add := func(key, val string) {
		if val != "" {
			out = append(out, key+":"+EscapeTagValue(val))
		}
	}
	add(tagIDKey, t.ID)
	add(tagNameKey, t.Name)
	add(tagForkKey, t.Fork)
	add(tagOriginKey, t.Origin)
	add(tagKindKey, t.Kind)
	if t.Pending {
		out = append(out, TagPending)
	}
	for _, tag := range out {
		if len(tag) > maxTagLen {
			return nil, fmt.Errorf("%w: tag %.40q... is %d bytes, lvm allows %d", ErrInvalid, tag, len(tag), maxTagLen)
		}
	}
	return out, nil
}

// ParseTags reads forknode's tags out of an LV's tag list, ignoring tags it
// does not know (an operator's own tags stay untouched).
func ParseTags(list []string) Tags {
	var t Tags
	for _, tag := range list {
		switch tag {
		case TagOwned:
			t.Owned = true
			continue
		case TagPending:
			t.Pending = true
			continue
		}
		key, val, ok := strings.Cut(tag, ":")
		if !ok {
			continue
		}
		v, err := UnescapeTagValue(val)
		if err != nil {
			v = val // keep what is there rather than drop it
		}
		switch key {
		case tagIDKey:
			t.ID = v
		case tagNameKey:
			t.Name = v
		case tagForkKey:
			t.Fork = v
		case tagOriginKey:
			t.Origin = v
		case tagKindKey:
			t.Kind = v
		}
	}
	return t
}
