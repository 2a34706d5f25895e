package lvm

import (
	"cmp"
	"errors"
	"fmt"
	"strings"
)

// Sentinels recognised from lvm's stderr. Check them with errors.Is on any
// error this package returns.
var (
	ErrNotFound = errors.New("lvm: not found")
	ErrExists   = errors.New("lvm: already exists")
	ErrNoSpace  = errors.New("lvm: insufficient free space")
	ErrInUse    = errors.New("lvm: in use")
	// ErrInvalid: a bad name, size or tag, refused before lvm runs.
	ErrInvalid = errors.New("lvm: invalid argument")
	// ErrSnapshotOverflow: a classic snapshot's copy-on-write area is (nearly)
	// full, so reading through it can no longer be trusted.
	ErrSnapshotOverflow = errors.New("lvm: snapshot copy-on-write space nearly exhausted")
	// ErrUnsupported: the thin map of an LV cannot be read here (not a thin
	// LV, an external origin, no dmsetup or thin_dump); read the whole LV.
	ErrUnsupported = errors.New("lvm: not supported")
	// ErrMetadataSnapHeld: the pool already holds a metadata snapshot, and
	// a pool has room for one only.
	ErrMetadataSnapHeld = errors.New("lvm: thin pool already holds a metadata snapshot")
)

// LVMError is a failed lvm command. Code is its exit status (ExitCode()),
// Stderr its trimmed error output, kept in the message.
type LVMError struct {
	Tool   string   // "" for lvm, else the tool that failed: "dmsetup", "thin_dump"
	Op     string   // the subcommand, e.g. "lvcreate"
	Args   []string // the full argument list after the tool's name
	Code   int
	Stderr string
}

// ExitCode is lvm's exit status.
func (e *LVMError) ExitCode() int { return e.Code }

func (e *LVMError) Error() string {
	return fmt.Sprintf("%s %s: exit status %d: %s", cmp.Or(e.Tool, "lvm"), e.Op, e.Code, e.Stderr)
}

// stderr fragments per sentinel. lvm exits 5 (ECMD_FAILED) for all of these,
// so the text is what tells them apart.
var stderrClasses = []struct {
	sentinel error
	texts    []string
}{
	{ErrNotFound, []string{"not found", "Failed to find"}},
	{ErrExists, []string{"already exists"}},
	{ErrNoSpace, []string{"Insufficient free space", "Insufficient suitable allocatable extents", "insufficient free space"}},
	{ErrInUse, []string{"in use", "Can't remove open logical volume", "is used by another device"}},
}

// Is lets errors.Is match the sentinels against a failed command: a non-zero
// exit whose stderr carries the sentinel's text.
func (e *LVMError) Is(target error) bool {
	if e.Code == 0 {
		return false
	}
	for _, c := range stderrClasses {
		if c.sentinel != target {
			continue
		}
		for _, t := range c.texts {
			if strings.Contains(e.Stderr, t) {
				return true
			}
		}
	}
	return false
}
