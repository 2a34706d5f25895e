package cow

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Prefetcher is an optional Device extension: start reading a range ahead
// of need (readahead), without waiting.
type Prefetcher interface {
	Prefetch(off, n int64)
}

// WriteBacker is an optional Device extension: start writeback of a range
// without waiting for it, so the final Sync has little left to do.
type WriteBacker interface {
	StartWriteback(off, n int64) error
}

// fileDevice is a Device over a regular (sparse) file.
type fileDevice struct {
	f    *os.File
	size int64
}

// OpenFileDevice wraps an image file as a Device. The size is the file's
// current size. Exported so tests and benchmarks outside a backend can copy
// plain files with the same engine.
func OpenFileDevice(path string, writable bool) (Device, error) {
	flag := os.O_RDONLY
	if writable {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !writable {
		// Copies read a snapshot front to back: let readahead grow.
		_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_SEQUENTIAL)
	}
	return &fileDevice{f: f, size: st.Size()}, nil
}

func (d *fileDevice) ReadAt(p []byte, off int64) (int, error) { return d.f.ReadAt(p, off) }

// Prefetch asks the kernel to start reading [off, off+n) into the page
// cache without waiting, so the copy keeps a deep read queue.
func (d *fileDevice) Prefetch(off, n int64) {
	_ = unix.Fadvise(int(d.f.Fd()), off, n, unix.FADV_WILLNEED)
}

func (d *fileDevice) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > d.size {
		return 0, fmt.Errorf("%w: write [%d,%d) past device size %d", ErrInvalid, off, off+int64(len(p)), d.size)
	}
	return d.f.WriteAt(p, off)
}

// Fd exposes the descriptor to the block stream: its receiver reopens the
// image with O_DIRECT for large aligned writes (bypassing the page cache
// that a streamed fork would otherwise flood), and its sender finds holes
// with SEEK_DATA.
func (d *fileDevice) Fd() uintptr { return d.f.Fd() }

// Name is the image's (or device's) path, for error messages.
func (d *fileDevice) Name() string { return d.f.Name() }

func (d *fileDevice) Close() error { return d.f.Close() }
func (d *fileDevice) Size() int64  { return d.size }
func (d *fileDevice) Sync() error  { return d.f.Sync() }

// Zero punches a hole, keeping the size; where the filesystem cannot punch
// holes it writes zeros, so old data never stays visible.
func (d *fileDevice) Zero(off, n int64) error {
	if off < 0 || n < 0 || off+n > d.size {
		return fmt.Errorf("%w: zero [%d,%d) past device size %d", ErrInvalid, off, off+n, d.size)
	}
	if n == 0 {
		return nil
	}
	// Already a hole (the common case for a freshly created target):
	// one lseek instead of a journalled punch.
	next, err := unix.Seek(int(d.f.Fd()), off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) || (err == nil && next >= off+n) {
		return nil
	}
	err = unix.Fallocate(int(d.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("punch hole [%d,%d): %w", off, off+n, err)
	}
	return writeZeros(d.f, off, n)
}

func (d *fileDevice) StartWriteback(off, n int64) error {
	err := unix.SyncFileRange(int(d.f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ESPIPE) {
		return nil // only a hint
	}
	return err
}

var zeroBlock = make([]byte, 1<<20)

func writeZeros(w io.WriterAt, off, n int64) error {
	for n > 0 {
		c := min(n, int64(len(zeroBlock)))
		if _, err := w.WriteAt(zeroBlock[:c], off); err != nil {
			return fmt.Errorf("write zeros at %d: %w", off, err)
		}
		off += c
		n -= c
	}
	return nil
}

// fileExtents lists the data extents of an open file with SEEK_DATA and
// SEEK_HOLE. Where the filesystem does not support them, the whole file is
// one extent (correct, only slower to copy).
func fileExtents(f *os.File, size int64) ([]Extent, error) {
	fd := int(f.Fd())
	var out []Extent
	off := int64(0)
	for off < size {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // no data past off
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			return []Extent{{Offset: 0, Length: size}}, nil
		}
		if err != nil {
			return nil, fmt.Errorf("seek data at %d: %w", off, err)
		}
		if data >= size {
			break
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("seek hole at %d: %w", data, err)
		}
		hole = min(hole, size)
		// Merge with the previous extent when they touch.
		if n := len(out); n > 0 && out[n-1].Offset+out[n-1].Length == data {
			out[n-1].Length += hole - data
		} else {
			out = append(out, Extent{Offset: data, Length: hole - data})
		}
		off = hole
	}
	return out, nil
}

// FileExtents lists the data extents of the file at path.
func FileExtents(path string) ([]Extent, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return fileExtents(f, st.Size())
}
