package transfer

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// fdHolder is what *os.File (and any Source or Sink embedding one) has.
type fdHolder interface{ Fd() uintptr }

// writeBacker matches cow.WriteBacker: start writeback of a range without
// waiting, so dirty pages do not pile up and the periodic fsync stays short.
type writeBacker interface {
	StartWriteback(off, n int64) error
}

// prefetcher matches cow.Prefetcher: start reading a range ahead of need.
type prefetcher interface{ Prefetch(off, n int64) }

// fdStat returns the descriptor behind v (a Source or Sink exposing Fd())
// and what fstat says of it; ok is false when there is none or fstat fails.
func fdStat(v any) (fd int, st unix.Stat_t, ok bool) {
	h, isFd := v.(fdHolder)
	if !isFd {
		return 0, st, false
	}
	fd = int(h.Fd())
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, st, false
	}
	return fd, st, true
}

// startWriteback asks the kernel to begin writing [off, off+n) back now
// (sync_file_range WRITE, no wait). Advisory: errors are ignored.
func startWriteback(s Sink, off, n int64) {
	if wb, ok := s.(writeBacker); ok {
		_ = wb.StartWriteback(off, n)
		return
	}
	if f, ok := s.(fdHolder); ok {
		_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
	}
}

// prefetch starts readahead of [off, off+n) on the source, if it can.
func prefetch(s Source, off, n int64) {
	if p, ok := s.(prefetcher); ok {
		p.Prefetch(off, n)
		return
	}
	if f, ok := s.(fdHolder); ok {
		_ = unix.Fadvise(int(f.Fd()), off, n, unix.FADV_WILLNEED)
	}
}

// openDirect reopens the sink's file (regular file or block device) with
// O_DIRECT, so the puller's writes skip the page cache: on these machines a
// buffered pwrite costs more CPU than decompressing the chunk, and the
// dirty pages would all have to be flushed by the fsync anyway. It returns
// nil when the sink has no file descriptor or the file system refuses
// O_DIRECT; the caller then writes through Sink.WriteAt.
//
// A sink that exposes Fd() promises that WriteAt(p, off) writes p at offset
// off of that descriptor (as *os.File and cow's devices do). As a guard, a
// descriptor opened read-only, or a regular file whose size is not the
// sink's, is never written behind the sink's back.
func openDirect(s Sink) *os.File {
	fd, st, ok := fdStat(s)
	if !ok {
		return nil
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil || fl&unix.O_ACCMODE == unix.O_RDONLY {
		return nil
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if st.Size != s.Size() {
			return nil
		}
	case unix.S_IFBLK:
	default:
		return nil
	}
	f, err := reopen(fd, unix.O_WRONLY|unix.O_DIRECT|unix.O_CLOEXEC, s)
	if err != nil {
		return nil
	}
	// /proc/self/fd names the same inode; make sure nothing raced.
	var st2 unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st2); err != nil || st2.Ino != st.Ino || st2.Dev != st.Dev {
		f.Close()
		return nil
	}
	return f
}

// directRefused tells an error that means "O_DIRECT cannot do this write"
// (alignment, file system) from a real I/O failure.
func directRefused(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP)
}

// dataExtents lists a source's data extents with SEEK_DATA/SEEK_HOLE when
// it is backed by a file descriptor, so known holes are skipped without
// reading them. nil means unknown (scan everything).
func dataExtents(s Source, size int64) []Extent {
	fd, st, ok := fdStat(s)
	if !ok || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil // block devices report no holes
	}
	var out []Extent
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			return nil
		}
		if data >= size {
			break
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil
		}
		hole = min(hole, size)
		out = append(out, Extent{Offset: data, Length: hole - data})
		off = hole
	}
	if out == nil {
		out = []Extent{} // all holes: known, not unknown
	}
	return out
}

// reopen opens descriptor fd again (through /proc/self/fd) with flags,
// named after what x calls itself, so that an error of the new file (say
// ENOSPC) names the volume's path, not /proc/self/fd/N.
func reopen(fd int, flags int, x any) (*os.File, error) {
	nfd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", fd), flags, 0)
	if err != nil {
		return nil, err
	}
	name := fmt.Sprintf("fd %d", fd)
	if n, ok := x.(interface{ Name() string }); ok && n.Name() != "" {
		name = n.Name()
	}
	return os.NewFile(uintptr(nfd), name), nil
}
