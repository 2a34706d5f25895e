// Command imgstat prints what the benchmarks need to know about a volume
// image: its size, the bytes allocated on disk, and how many of its 1 MiB
// blocks are all zero (holes count as zero; written zeros too).
//
//	imgstat [-block 1048576] IMAGE
//
// It prints one line: `IMGSTAT size=… allocated=… blocks=… zero_blocks=…
// hole_blocks=… zero_blocks_pct=…`.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Stats describe one image.
type Stats struct {
	Size, Allocated         int64
	Blocks, Zero, HoleBlock int64
}

func main() {
	block := flag.Int64("block", 1<<20, "block size in bytes")
	flag.Parse()
	if flag.NArg() != 1 || *block <= 0 {
		fmt.Fprintln(os.Stderr, "usage: imgstat [-block N] IMAGE")
		os.Exit(2)
	}
	st, err := scan(flag.Arg(0), *block)
	if err != nil {
		fmt.Fprintln(os.Stderr, "imgstat:", err)
		os.Exit(1)
	}
	pct := 0.0
	if st.Blocks > 0 {
		pct = 100 * float64(st.Zero) / float64(st.Blocks)
	}
	fmt.Printf("IMGSTAT size=%d allocated=%d blocks=%d zero_blocks=%d hole_blocks=%d zero_blocks_pct=%.1f\n",
		st.Size, st.Allocated, st.Blocks, st.Zero, st.HoleBlock, pct)
}

// scan reads every block that holds data (SEEK_DATA skips whole holes) and
// counts the all-zero ones.
func scan(path string, block int64) (Stats, error) {
	f, err := os.Open(path)
	if err != nil {
		return Stats{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Stats{}, err
	}
	st := Stats{Size: fi.Size()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.Allocated = sys.Blocks * 512
	}
	if fi.Mode()&os.ModeDevice != 0 {
		// A block device: size from its end, every byte "allocated".
		end, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			return Stats{}, fmt.Errorf("size of %s: %w", path, err)
		}
		st.Size, st.Allocated = end, end
	}
	buf := make([]byte, block)
	fd := int(f.Fd())
	for off := int64(0); off < st.Size; off += block {
		st.Blocks++
		n := min(block, st.Size-off)
		// A block with no data at all is a hole: skip the read.
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		switch {
		case errors.Is(err, unix.ENXIO):
			data = st.Size
		case err != nil:
			data = off // SEEK_DATA unsupported: read it
		}
		if data >= off+n {
			st.Zero++
			st.HoleBlock++
			continue
		}
		if _, err := f.ReadAt(buf[:n], off); err != nil && !errors.Is(err, io.EOF) {
			return Stats{}, fmt.Errorf("read %s at %d: %w", path, off, err)
		}
		if allZero(buf[:n]) {
			st.Zero++
		}
	}
	return st, nil
}

var zeros = make([]byte, 1<<20)

// allZero compares against a zero buffer (memequal is vectorised).
func allZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeros))
		if !bytes.Equal(p[:n], zeros[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}
