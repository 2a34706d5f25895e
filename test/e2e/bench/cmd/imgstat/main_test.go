package main

import (
	"os"
	"path/filepath"
	"testing"
)

// writeImage makes a sparse file of len(kinds) blocks: 'h' hole, 'z'
// written zeros, 'd' data.
func writeImage(t *testing.T, kinds string, block int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(int64(len(kinds)) * block); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, block)
	for i, k := range kinds {
		switch k {
		case 'z':
			clear(buf)
		case 'd':
			for j := range buf {
				buf[j] = byte(j*7 + i + 1)
			}
			buf[len(buf)-1] = 1 // nonzero even where the pattern wraps
		default:
			continue
		}
		if _, err := f.WriteAt(buf, int64(i)*block); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func TestScan(t *testing.T) {
	const block = 64 << 10
	for _, tc := range []struct {
		kinds           string
		zero, minHoles  int64
		blocks          int64
		allocAtLeastBlk int64
	}{
		{kinds: "hhhh", zero: 4, minHoles: 4, blocks: 4},
		{kinds: "dddd", zero: 0, blocks: 4, allocAtLeastBlk: 4},
		{kinds: "hzdh", zero: 3, minHoles: 2, blocks: 4, allocAtLeastBlk: 1},
		{kinds: "zzzd", zero: 3, blocks: 4, allocAtLeastBlk: 1},
		{kinds: "", zero: 0, blocks: 0},
	} {
		t.Run(tc.kinds, func(t *testing.T) {
			st, err := scan(writeImage(t, tc.kinds, block), block)
			if err != nil {
				t.Fatal(err)
			}
			if st.Size != int64(len(tc.kinds))*block || st.Blocks != tc.blocks {
				t.Fatalf("size %d blocks %d, want %d, %d", st.Size, st.Blocks, int64(len(tc.kinds))*block, tc.blocks)
			}
			if st.Zero != tc.zero {
				t.Fatalf("zero blocks %d, want %d", st.Zero, tc.zero)
			}
			// Filesystems may allocate a little more, never less.
			if st.HoleBlock < tc.minHoles || st.HoleBlock > st.Zero {
				t.Fatalf("hole blocks %d, want in [%d, %d]", st.HoleBlock, tc.minHoles, st.Zero)
			}
			if st.Allocated < tc.allocAtLeastBlk*block {
				t.Fatalf("allocated %d < %d", st.Allocated, tc.allocAtLeastBlk*block)
			}
		})
	}
}

func TestScanMissing(t *testing.T) {
	if _, err := scan(filepath.Join(t.TempDir(), "nope"), 1<<20); err == nil {
		t.Fatal("no error for a missing file")
	}
}
