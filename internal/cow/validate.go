package cow

import (
	"fmt"
)

const (
	// MaxNameLen bounds volume names (a DNS label, so names can be used as
	// hostnames or LV names unchanged).
	MaxNameLen = 63
	// MaxIDLen bounds ids; ids become file names, so they are kept short.
	MaxIDLen = 128
	// BlockSize is the granularity of volume sizes.
	BlockSize = 4096
	// MaxSize is a sanity cap on one volume: 64 TiB.
	MaxSize int64 = 64 << 40
)

// ValidateName checks a volume name: 1-63 characters of [a-z0-9_.-],
// starting with a letter or digit. The error wraps ErrInvalid.
func ValidateName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: name is empty", ErrInvalid)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("%w: name %.20q... is %d characters, at most %d allowed", ErrInvalid, name, len(name), MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		lowerOrDigit := (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
		if i == 0 && !lowerOrDigit {
			return fmt.Errorf("%w: name %q must start with a lowercase letter or digit", ErrInvalid, name)
		}
		if !lowerOrDigit && c != '_' && c != '.' && c != '-' {
			return fmt.Errorf("%w: name %q has character %q at %d; allowed are a-z, 0-9, '_', '.', '-'", ErrInvalid, name, c, i)
		}
	}
	return nil
}

// ValidateID checks a volume or snapshot id. Ids are stamped by the catalog
// (vol_…, snap_…) and become file names, so they must be path-safe:
// 1-128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'.
func ValidateID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: id is empty", ErrInvalid)
	}
	if len(id) > MaxIDLen {
		return fmt.Errorf("%w: id is %d characters, at most %d allowed", ErrInvalid, len(id), MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		alnum := (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
		if i == 0 && !alnum {
			return fmt.Errorf("%w: id %q must start with a letter or digit", ErrInvalid, id)
		}
		if !alnum && c != '_' && c != '.' && c != '-' {
			return fmt.Errorf("%w: id %q has character %q at %d; allowed are A-Z, a-z, 0-9, '_', '.', '-'", ErrInvalid, id, c, i)
		}
	}
	return nil
}

// ValidateSize checks a volume size: positive, a multiple of 4096 and at
// most MaxSize. The error wraps ErrInvalid.
func ValidateSize(size int64) error {
	switch {
	case size <= 0:
		return fmt.Errorf("%w: size %d must be positive", ErrInvalid, size)
	case size%BlockSize != 0:
		return fmt.Errorf("%w: size %d is not a multiple of %d", ErrInvalid, size, BlockSize)
	case size > MaxSize:
		return fmt.Errorf("%w: size %d exceeds the maximum %d (64 TiB)", ErrInvalid, size, MaxSize)
	}
	return nil
}

// ValidateSpec checks every field of a CreateSpec.
func ValidateSpec(spec CreateSpec) error {
	if err := ValidateID(spec.ID); err != nil {
		return err
	}
	if err := ValidateName(spec.Name); err != nil {
		return err
	}
	return ValidateSize(spec.Size)
}
