package fsm

import (
	"fmt"
	"slices"
	"strings"
)

const (
	maxNameLen = 63
	// blockSize: volume sizes are whole 4 KiB blocks, what every backend
	// (loop devices, LVM extents after rounding) can honour exactly.
	blockSize = 4096
	// VolumeIDPrefix and ForkIDPrefix are stamped by the leader.
	VolumeIDPrefix = "vol_"
	ForkIDPrefix   = "fork_"
)

// ValidateName checks a volume or app name: 1-63 chars of [a-z0-9_.-],
// starting with [a-z0-9]. Names starting with "vol_" are refused so that a
// name can never be mistaken for a volume id when resolving a fork source.
func ValidateName(what, name string) error {
	if name == "" {
		return fmt.Errorf("%w: %s is empty", ErrInvalid, what)
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("%w: %s %q is %d chars, at most %d", ErrInvalid, what, name, len(name), maxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if i > 0 {
			ok = ok || c == '_' || c == '.' || c == '-'
		}
		if !ok {
			return fmt.Errorf("%w: %s %q: character %q at %d not allowed (want [a-z0-9][a-z0-9_.-]*)", ErrInvalid, what, name, c, i)
		}
	}
	if strings.HasPrefix(name, VolumeIDPrefix) {
		return fmt.Errorf("%w: %s %q: the prefix %q is reserved for volume ids", ErrInvalid, what, name, VolumeIDPrefix)
	}
	return nil
}

// ValidateNodeName checks host ids and regions (the agent checks its --name
// and --region with it at start): node names may carry
// upper-case letters, so they get a slightly looser rule than volume names.
func ValidateNodeName(what, name string) error {
	if name == "" {
		return fmt.Errorf("%w: %s is empty", ErrInvalid, what)
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("%w: %s %q is %d chars, at most %d", ErrInvalid, what, name, len(name), maxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if i > 0 {
			ok = ok || c == '_' || c == '.' || c == '-'
		}
		if !ok {
			return fmt.Errorf("%w: %s %q: character %q at %d not allowed", ErrInvalid, what, name, c, i)
		}
	}
	return nil
}

// validateID checks a leader-stamped id: prefix then 1-64 chars of
// [A-Za-z0-9_-].
func validateID(what, prefix, id string) error {
	rest, ok := strings.CutPrefix(id, prefix)
	if !ok || rest == "" {
		return fmt.Errorf("%w: %s %q must look like %s…", ErrInvalid, what, id, prefix)
	}
	if len(rest) > 64 {
		return fmt.Errorf("%w: %s %q is too long", ErrInvalid, what, id)
	}
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("%w: %s %q: character %q not allowed", ErrInvalid, what, id, c)
		}
	}
	return nil
}

// MaxTTL bounds a volume's time to live: long enough for any real use,
// short enough that Time + TTL cannot overflow.
const MaxTTL = 100 * 365 * 24 * 3600 * int64(1e9)

func validateTTL(ttl int64) error {
	if ttl < 0 {
		return fmt.Errorf("%w: ttl %d is negative", ErrInvalid, ttl)
	}
	if ttl > MaxTTL {
		return fmt.Errorf("%w: ttl %d ns is over 100 years", ErrInvalid, ttl)
	}
	return nil
}

// expiry is the ExpiresAt a TTL gives at the leader-stamped time now.
func expiry(now, ttl int64) int64 {
	if ttl == 0 {
		return 0
	}
	return now + ttl
}

func validateSize(size int64) error {
	if size <= 0 {
		return fmt.Errorf("%w: size %d must be > 0", ErrInvalid, size)
	}
	if size%blockSize != 0 {
		up := (size/blockSize + 1) * blockSize
		return fmt.Errorf("%w: size %d is not a multiple of %d (4 KiB): round it up to %d (%s)", ErrInvalid, size, blockSize, up, FormatBytes(up))
	}
	return nil
}

// FormatBytes renders a byte count for messages: "512 MiB", "1.0 GiB".
func FormatBytes(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return fmt.Sprintf("%d B", n)
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v := float64(n)
	i := -1
	for (v >= unit || v <= -unit) && i < len(units)-1 {
		v /= unit
		i++
	}
	if v < 10 && v > -10 {
		return fmt.Sprintf("%.1f %s", v, units[i])
	}
	return fmt.Sprintf("%.0f %s", v, units[i])
}

// MaxListedNames caps the names FormatNames lists: a message about a typo
// stays one line on a cluster of hundreds of hosts.
const MaxListedNames = 10

// FormatNames renders names for a message, sorted: "h1, h2, h3", the first
// MaxListedNames and "and N more" past them, "none" for none. Errors about
// an unknown host name list the known ones, so the fix of a typo is in the
// message.
func FormatNames(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	sorted := slices.Sorted(slices.Values(names))
	if len(sorted) <= MaxListedNames {
		return strings.Join(sorted, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(sorted[:MaxListedNames], ", "), len(sorted)-MaxListedNames)
}

// knownHosts lists the catalog's host ids for a message about an unknown
// one: "(hosts: h1, h2)" after the name turns a typo into its fix.
func (s *State) knownHosts() string {
	ids := make([]string, 0, len(s.hosts))
	for id := range s.hosts {
		ids = append(ids, id)
	}
	return FormatNames(ids)
}
