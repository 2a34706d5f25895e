package cow

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// deviceWriters names the processes other than this one that hold block
// device dev open for writing ("pid 123 (qemu)"), from /proc/PID/fd and
// the flags in /proc/PID/fdinfo. A copy snapshot of an attached volume
// that nobody has mounted cannot freeze anything; a writer that bypasses
// the filesystem layer (a VM, a database on the raw device, dd) would
// make the copy torn, so such a copy is refused instead. Processes that
// cannot be read (gone, or another user's without privilege) are skipped:
// this is a guard, not a lock.
func deviceWriters(dev string) ([]string, error) {
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", dev, err)
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	self := os.Getpid()
	var out []string
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		fdDir := filepath.Join("/proc", p.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			// Only device nodes are stat'ed: following every link would
			// stat every open file on the host, and a file on a hung NFS or
			// FUSE mount would block the snapshot for good.
			link := filepath.Join(fdDir, fd.Name())
			if target, err := os.Readlink(link); err != nil || !strings.HasPrefix(target, "/dev/") {
				continue
			}
			var fst unix.Stat_t
			if unix.Stat(link, &fst) != nil ||
				fst.Mode&unix.S_IFMT != unix.S_IFBLK || fst.Rdev != st.Rdev {
				continue
			}
			if !fdWritable(filepath.Join("/proc", p.Name(), "fdinfo", fd.Name())) {
				continue
			}
			comm, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "comm"))
			out = append(out, fmt.Sprintf("pid %d (%s)", pid, strings.TrimSpace(string(comm))))
			break
		}
	}
	return out, nil
}

// fdWritable reads the "flags:" line of an fdinfo file (octal open flags)
// and reports whether the descriptor was opened for writing.
func fdWritable(fdinfo string) bool {
	raw, err := os.ReadFile(fdinfo)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			fl, err := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
			return err == nil && fl&unix.O_ACCMODE != unix.O_RDONLY
		}
	}
	return false
}
