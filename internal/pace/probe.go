package pace

import (
	"errors"
	"fmt"
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

// OpenFileProbe creates (or reuses) the probe file at path. The blocks are
// written and synced once here, so a probe never allocates and never
// changes metadata: its cost is the write and the flush alone.
func OpenFileProbe(path string) (*FileProbe, error) {
	size := int64(probeBlock * probeSlots)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("pace: probe file: %w", err)
	}
	if st, err := f.Stat(); err != nil || st.Size() != size {
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

	p := &FileProbe{buf: alignedBlock()}
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
	p.buf[0] = byte(p.next) // not all zeros: nothing may elide the write
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
