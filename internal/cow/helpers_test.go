package cow

import (
	"bytes"
	"context"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/hashicorp/go-hclog"
)

func testLogger(t testing.TB) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Warn, Output: os.Stderr})
}

func newTestBackend(t testing.TB, dir string, budget int64) *FileBackend {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	b, err := NewFileBackend(dir, budget, testLogger(t))
	if err != nil {
		t.Fatalf("NewFileBackend: %v", err)
	}
	return b
}

// dirFiles lists the file names in dir, sorted, leaving out the
// directory's marker.
func dirFiles(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if e.Name() != markerName {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

func listIDs(t testing.TB, b Backend) []string {
	t.Helper()
	vs, err := b.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, v := range vs {
		out = append(out, v.ID+"/"+string(v.Kind))
	}
	return out
}

// layout describes test content per 1 MiB block: 'd' random data, 'z'
// written zeros, 'h' hole, 'p' a partial block (4 KiB data in a hole).
func writeLayout(t testing.TB, path string, layout string, seed int64) []byte {
	t.Helper()
	const blk = 1 << 20
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size := int64(len(layout)) * blk
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, size)
	rng := rand.New(rand.NewSource(seed))
	for i, c := range layout {
		off := int64(i) * blk
		switch c {
		case 'd':
			rng.Read(want[off : off+blk])
			if _, err := f.WriteAt(want[off:off+blk], off); err != nil {
				t.Fatal(err)
			}
		case 'z':
			if _, err := f.WriteAt(make([]byte, blk), off); err != nil {
				t.Fatal(err)
			}
		case 'p':
			o := off + 12288
			rng.Read(want[o : o+4096])
			if _, err := f.WriteAt(want[o:o+4096], o); err != nil {
				t.Fatal(err)
			}
		}
	}
	return want
}

func readAll(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func imgPath(b *FileBackend, id string) string { return filepath.Join(b.Dir(), id+".img") }

// sameContent compares two files of equal size, reading only where either
// has data (holes read as zeros, so comparing elsewhere is pointless).
func sameContent(t testing.TB, a, b string) bool {
	t.Helper()
	ea, err := FileExtents(a)
	if err != nil {
		t.Fatal(err)
	}
	eb, err := FileExtents(b)
	if err != nil {
		t.Fatal(err)
	}
	fa, _ := os.Open(a)
	defer fa.Close()
	fb, _ := os.Open(b)
	defer fb.Close()
	sa, _ := fa.Stat()
	sb, _ := fb.Stat()
	if sa.Size() != sb.Size() {
		return false
	}
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for _, e := range append(ea, eb...) {
		for off := e.Offset; off < e.Offset+e.Length; off += int64(len(ba)) {
			n := min(int64(len(ba)), e.Offset+e.Length-off)
			na, _ := fa.ReadAt(ba[:n], off)
			nb, _ := fb.ReadAt(bb[:n], off)
			if na != int(n) || nb != int(n) || !bytes.Equal(ba[:n], bb[:n]) {
				return false
			}
		}
	}
	return true
}
