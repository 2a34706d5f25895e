package pace

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	probeBlock = 4096
	probeSlots = 256 // the file is probeSlots blocks; probes rotate over them
)

// FileProbe times a small synchronous overwrite in a preallocated file.
type FileProbe struct {
	mu     sync.Mutex
	f      *os.File
	buf    []byte
	direct bool
	next   int64
}

// probeMagic starts every block a probe writes. On a block device it is
// how a later start knows the device is the probe's (see openDeviceProbe).
const probeMagic = "forknode-ioprobe\n"

// ErrNotProbeDevice: a block device given as the probe holds data that a
// probe did not write, so it is left alone.
var ErrNotProbeDevice = errors.New("not an I/O probe device")

// OpenFileProbe creates (or reuses) the probe file at path. The blocks are
// written and synced once here, so a probe never allocates and never
// changes metadata: its cost is the write and the flush alone.
//
// path may also be a block device, e.g. a small LV on the disks an LVM
// backend uses (whose PVs carry no file system for a probe file).
//
// Probes overwrite the first probeSlots blocks, so an existing file or
// device is used only when every one of those blocks is all zeros (a new
// LV, a file whose creation was cut short) or was written by a probe.
// Anything else is someone's data and fails with ErrNotProbeDevice: a
// mistyped path must not destroy a file, a file system or a RAID member.
func OpenFileProbe(path string) (*FileProbe, error) {
	if st, err := os.Stat(path); err == nil && st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0 {
		return openDeviceProbe(path)
	} else if err == nil && !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file or a block device", ErrNotProbeDevice, path)
	}
	size := int64(probeBlock * probeSlots)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("pace: probe file: %w", err)
	}
	st, err := f.Stat()
	if err == nil && st.Size() > size {
		err = fmt.Errorf("%w: %s is %d bytes, larger than a probe file's %d: it holds other data", ErrNotProbeDevice, path, st.Size(), size)
	}
	if err == nil {
		err = probeBlocksOnly(f, st.Size(), path)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	if st.Size() != size {
		if _, err := f.WriteAt(make([]byte, size), 0); err != nil {
			f.Close()
			return nil, fmt.Errorf("pace: fill probe file %s: %w", path, err)
		}
		if err := f.Truncate(size); err != nil {
			f.Close()
			return nil, fmt.Errorf("pace: size probe file %s: %w", path, err)
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, fmt.Errorf("pace: sync probe file %s: %w", path, err)
	}
	f.Close()

	p := newProbe()
	// O_DIRECT keeps the page cache out of the measurement; a file system
	// that refuses it (tmpfs) still gets a synchronous write.
	if f, err = os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT|unix.O_DSYNC|unix.O_CLOEXEC, 0); err == nil {
		p.f, p.direct = f, true
	} else if f, err = os.OpenFile(path, os.O_WRONLY|unix.O_DSYNC|unix.O_CLOEXEC, 0); err == nil {
		p.f = f
	} else {
		return nil, fmt.Errorf("pace: open probe file %s: %w", path, err)
	}
	return p, nil
}

func newProbe() *FileProbe {
	p := &FileProbe{buf: alignedBlock()}
	copy(p.buf, probeMagic)
	return p
}

// openDeviceProbe opens a block device as the probe, after checking that it
// is large enough and holds nothing but a probe's own writes.
func openDeviceProbe(path string) (*FileProbe, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT|unix.O_DSYNC|unix.O_CLOEXEC, 0)
	direct := err == nil
	if err != nil {
		f, err = os.OpenFile(path, os.O_RDWR|unix.O_DSYNC|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("pace: open probe device: %w", err)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err == nil && size < probeBlock*probeSlots {
		err = fmt.Errorf("%w: %s is %d bytes, the probe needs %d", ErrNotProbeDevice, path, size, probeBlock*probeSlots)
	}
	if err == nil {
		err = probeBlocksOnly(f, probeBlock*probeSlots, path)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	p := newProbe()
	p.f, p.direct = f, direct
	// Claim the device before the first timed write.
	if _, err := f.WriteAt(p.buf, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("pace: write probe device %s: %w", path, err)
	}
	return p, nil
}

// probeBlocksOnly checks the first n bytes of f (at most the probe's
// blocks): each block must be all zeros or start with probeMagic.
func probeBlocksOnly(f *os.File, n int64, path string) error {
	n = min(n, probeBlock*probeSlots)
	blk := alignedBlock()
	for off := int64(0); off < n; off += probeBlock {
		b := blk[:min(probeBlock, n-off)]
		if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("pace: read probe %s: %w", path, err)
		}
		if !probeOrEmpty(b) {
			return fmt.Errorf("%w: %s holds data a probe did not write at byte %d; give the probe a new file, or an empty device (lvcreate zeroes a new LV)",
				ErrNotProbeDevice, path, off)
		}
	}
	return nil
}

// ReclaimProbeDevice readies a block device that is the agent's own probe
// (the LV it makes for itself) when its first block says it is a probe's
// or empty: the rest of the probe's first MiB is zeroed. An LV made by an
// older release, whose later blocks kept what a removed LV left there, or
// one whose zeroing a crash cut short, then passes OpenFileProbe's check.
// A device whose first block holds anything else is left as it is.
func ReclaimProbeDevice(path string) error {
	if st, err := os.Stat(path); err != nil || st.Mode()&os.ModeDevice == 0 || st.Mode()&os.ModeCharDevice != 0 {
		return fmt.Errorf("%w: %s is not a block device", ErrNotProbeDevice, path)
	}
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("pace: open probe device: %w", err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("pace: probe device %s: %w", path, err)
	}
	if size < probeBlock*probeSlots {
		return fmt.Errorf("%w: %s is %d bytes, the probe needs %d", ErrNotProbeDevice, path, size, probeBlock*probeSlots)
	}
	first := make([]byte, probeBlock)
	if _, err := f.ReadAt(first, 0); err != nil {
		return fmt.Errorf("pace: read probe device %s: %w", path, err)
	}
	if !probeOrEmpty(first) {
		return fmt.Errorf("%w: %s holds data a probe did not write", ErrNotProbeDevice, path)
	}
	if probeBlocksOnly(f, probeBlock*probeSlots, path) == nil {
		return nil // already clean
	}
	if _, err := f.WriteAt(make([]byte, probeBlock*probeSlots), 0); err != nil {
		return fmt.Errorf("pace: clear probe device %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("pace: clear probe device %s: %w", path, err)
	}
	return nil
}

// probeOrEmpty reports a block (or a file's short tail) that is all zeros
// or starts as every block a probe writes does.
func probeOrEmpty(b []byte) bool {
	return allZero(b) || len(b) >= len(probeMagic) && string(b[:len(probeMagic)]) == probeMagic
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// alignedBlock returns a probeBlock buffer aligned for O_DIRECT.
func alignedBlock() []byte {
	raw := make([]byte, 2*probeBlock)
	off := int(uintptr(unsafe.Pointer(&raw[0])) & (probeBlock - 1))
	if off != 0 {
		off = probeBlock - off
	}
	return raw[off : off+probeBlock]
}

// Probe performs one timed write.
func (p *FileProbe) Probe() (time.Duration, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.f == nil {
		return 0, errors.New("pace: probe closed")
	}
	off := (p.next % probeSlots) * probeBlock
	p.next++
	p.buf[len(probeMagic)] = byte(p.next) // each write differs: nothing may elide it
	start := time.Now()
	n, err := p.f.WriteAt(p.buf, off)
	d := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("pace: probe write: %w", err)
	}
	if n != probeBlock {
		return 0, fmt.Errorf("pace: probe write: short write %d", n)
	}
	return d, nil
}

// Direct reports whether probes bypass the page cache.
func (p *FileProbe) Direct() bool { return p.direct }

// Close closes the probe file (it stays on disk for the next start).
func (p *FileProbe) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.f == nil {
		return nil
	}
	err := p.f.Close()
	p.f = nil
	return err
}
