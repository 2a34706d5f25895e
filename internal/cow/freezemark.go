package cow

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// A freeze outlives the process that made it: the kernel keeps a frozen
// filesystem frozen after its freezer is killed, and the database on it
// hangs in D state until someone thaws it. So before FIFREEZE the backend
// writes a freeze mark naming the filesystem, removes it after the thaw,
// and at start thaws whatever a mark names: an agent killed mid-snapshot
// (kill -9, OOM) releases the database as soon as it is restarted.

// freezeMarkSuffix ends a freeze mark's name: ".SNAPID.freeze".
const freezeMarkSuffix = ".freeze"

type freezeMark struct {
	Mountpoint string `json:"mountpoint"`
	Dev        uint64 `json:"dev"` // st_dev of the mountpoint when frozen
}

func (b *FileBackend) freezeMarkPath(id string) string {
	return filepath.Join(b.dir, "."+id+freezeMarkSuffix)
}

// isFreezeMark reports whether name is a freeze mark's.
func isFreezeMark(name string) bool {
	id, ok := strings.CutSuffix(strings.TrimPrefix(name, "."), freezeMarkSuffix)
	return ok && strings.HasPrefix(name, ".") && (strings.HasPrefix(id, "snap_") || strings.HasPrefix(id, "vol_")) && ValidateID(id) == nil
}

// markFreeze records that mountpoint is about to be frozen for snapshot id.
// It needs no fsync: it guards against this process dying, and a machine
// that crashes comes back with nothing frozen.
func (b *FileBackend) markFreeze(id, mountpoint string) error {
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		return fmt.Errorf("stat mountpoint %s: %w", mountpoint, err)
	}
	raw, err := json.Marshal(freezeMark{Mountpoint: mountpoint, Dev: st.Dev})
	if err != nil {
		return err
	}
	if err := os.WriteFile(b.freezeMarkPath(id), raw, 0o600); err != nil {
		return fmt.Errorf("write freeze mark: %w", err)
	}
	return nil
}

// thawMarked thaws the filesystems that freeze marks in the directory name
// and removes the marks. A mark whose mountpoint now holds another
// filesystem (remounted since) is dropped without touching it; a
// filesystem that is not frozen answers EINVAL, which is success here.
func (b *FileBackend) thawMarked() error {
	entries, err := os.ReadDir(b.dir)
	if err != nil {
		return fmt.Errorf("read backend dir: %w", err)
	}
	for _, e := range entries {
		if !isFreezeMark(e.Name()) {
			continue
		}
		path := filepath.Join(b.dir, e.Name())
		raw, err := os.ReadFile(path)
		if err != nil {
			b.log.Error("could not read a freeze mark", "mark", e.Name(), "error", err)
			continue
		}
		var m freezeMark
		if err := json.Unmarshal(raw, &m); err != nil || m.Mountpoint == "" {
			// Written before FIFREEZE, so a torn mark means no freeze.
			b.log.Warn("dropping an unreadable freeze mark", "file", e.Name(), "error", err)
			_ = os.Remove(path)
			continue
		}
		switch thawed, err := thawIfSame(m); {
		case err != nil:
			// Staying down would not thaw it either: say so loudly, keep
			// the mark for the next start, and go on with the others.
			b.log.Error("could not thaw a filesystem an interrupted snapshot may have left frozen; thaw it by hand (fsfreeze -u)",
				"mountpoint", m.Mountpoint, "mark", e.Name(), "error", err)
			continue
		case thawed:
			b.log.Warn("thawed a filesystem an interrupted snapshot left frozen", "mountpoint", m.Mountpoint)
		}
		_ = os.Remove(path)
	}
	return nil
}

// thawIfSame thaws m.Mountpoint if it still holds the filesystem the mark
// names, reporting whether it was frozen.
func thawIfSame(m freezeMark) (bool, error) {
	f, err := os.Open(m.Mountpoint)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return false, err
	}
	if st.Dev != m.Dev {
		return false, nil
	}
	switch err := unix.IoctlSetInt(int(f.Fd()), ioctlFITHAW, 0); {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.EINVAL):
		return false, nil
	default:
		return false, fmt.Errorf("FITHAW: %w", err)
	}
}
