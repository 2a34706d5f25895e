package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrDataDirInUse: another process runs a node on the same data dir.
var ErrDataDirInUse = errors.New("data dir in use")

// DataDirLock is an exclusive flock on DATA_DIR/LOCK, held for the node's
// life. Without it a second process on the same dir blocks for ever inside
// bolt's own lock on the raft log, with no word of why. The kernel drops
// the lock when the process dies, so a crash leaves nothing to clean.
//
// New takes it itself unless Config.DataDirLock hands one over: the agent
// locks before it opens its backend, since the LVM backend's start-up
// recovery acts on markers in the data dir that a running agent owns.
type DataDirLock struct{ f *os.File }

// LockDataDir creates dir if needed and locks it, or fails at once with
// ErrDataDirInUse.
func LockDataDir(dir string) (*DataDirLock, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	path := filepath.Join(dir, "LOCK")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o640)
	if err != nil {
		return nil, fmt.Errorf("data dir lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder := ""
		if b, rerr := os.ReadFile(path); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil && pid > 0 {
				holder = fmt.Sprintf(" by pid %d", pid)
			}
		}
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is locked%s; is another forknode running on it? Stop it or choose another data dir", ErrDataDirInUse, dir, holder)
		}
		return nil, fmt.Errorf("data dir lock %s: %w", path, err)
	}
	// The pid is only for the message above; the flock is the lock.
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &DataDirLock{f: f}, nil
}

// Release drops the lock; New's node does so when it shuts down.
func (l *DataDirLock) Release() {
	if l != nil && l.f != nil {
		l.f.Close() // closing the last descriptor drops the flock
		l.f = nil
	}
}

// HasRaftLog reports whether dir holds a node's raft log, i.e. the node
// has been a member before and finds its peers there on restart.
func HasRaftLog(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "raft.db"))
	return err == nil
}
