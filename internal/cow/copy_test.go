package cow

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sync/atomic"
	"testing"
)

func TestCopy(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		name      string
		layout    string // see writeLayout
		chunk     int
		dstLayout string // old content of dst that must not survive
		dstExtra  int64  // dst larger than src by this much
		wantData  int64
		wantZero  int64
	}{
		{name: "all hole", layout: "hhhh", wantData: 0},
		{name: "all data", layout: "dddd", wantData: 4 * mib},
		{name: "written zeros become holes", layout: "dzzd", wantData: 2 * mib, wantZero: 2 * mib},
		{name: "mixed", layout: "hdzphdzh", wantData: 2*mib + 4096, wantZero: 2 * mib},
		{name: "small chunks", layout: "dpzh", chunk: 64 << 10, wantData: mib + 4096, wantZero: mib},
		{name: "odd chunk rounds up", layout: "dd", chunk: 5000, wantData: 2 * mib},
		{name: "stale dst data cleared", layout: "hdhz", dstLayout: "dddd", wantData: mib, wantZero: mib},
		{name: "larger dst tail cleared", layout: "dh", dstLayout: "dddd", dstExtra: 2 * mib, wantData: mib},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			srcPath, dstPath := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
			want := writeLayout(t, srcPath, tc.layout, 7)
			if tc.dstLayout != "" {
				writeLayout(t, dstPath, tc.dstLayout, 8)
			}
			size := int64(len(tc.layout))*mib + tc.dstExtra
			if err := os.Truncate(dstPath, size); err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			} else if os.IsNotExist(err) {
				if err := makeSparse(dstPath, size); err != nil {
					t.Fatal(err)
				}
			}
			ext, err := FileExtents(srcPath)
			if err != nil {
				t.Fatal(err)
			}
			src, _ := OpenFileDevice(srcPath, false)
			defer src.Close()
			dst, _ := OpenFileDevice(dstPath, true)
			defer dst.Close()
			st, err := Copy(context.Background(), src, ext, dst, CopyOptions{ChunkSize: tc.chunk, Workers: 3})
			if err != nil {
				t.Fatal(err)
			}
			got := readAll(t, dstPath)
			want = append(want, make([]byte, tc.dstExtra)...)
			if !bytes.Equal(got, want) {
				t.Fatal("dst content differs from src")
			}
			if st.Bytes != int64(len(tc.layout))*mib || st.DataBytes != tc.wantData || st.ZeroBytes != tc.wantZero {
				t.Fatalf("stats %+v, want data %d zero %d", st, tc.wantData, tc.wantZero)
			}
			// Zero chunks and holes stay unallocated in dst.
			dext, _ := FileExtents(dstPath)
			var alloc int64
			for _, e := range dext {
				alloc += e.Length
			}
			if alloc > tc.wantData+int64(len(dext))*64<<10 {
				t.Fatalf("dst has %d bytes allocated for %d of data: %v", alloc, tc.wantData, dext)
			}
		})
	}
}

func TestCopyRejectsBadExtents(t *testing.T) {
	dir := t.TempDir()
	writeLayout(t, filepath.Join(dir, "s"), "dd", 1)
	writeLayout(t, filepath.Join(dir, "d"), "h", 1)
	src, _ := OpenFileDevice(filepath.Join(dir, "s"), false)
	defer src.Close()
	dst, _ := OpenFileDevice(filepath.Join(dir, "d"), true)
	defer dst.Close()
	ctx := context.Background()
	if _, err := Copy(ctx, src, nil, dst, CopyOptions{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("small dst: %v", err)
	}
	dst2 := filepath.Join(dir, "d2")
	makeSparse(dst2, 2<<20)
	d2, _ := OpenFileDevice(dst2, true)
	defer d2.Close()
	for _, ext := range [][]Extent{
		{{Offset: 1 << 20, Length: 4096}, {Offset: 0, Length: 4096}},
		{{Offset: 0, Length: 0}},
		{{Offset: 0, Length: 3 << 20}},
	} {
		if _, err := Copy(ctx, src, ext, d2, CopyOptions{}); !errors.Is(err, ErrInvalid) {
			t.Errorf("%v: want ErrInvalid, got %v", ext, err)
		}
	}
}

// Throttle sees every data chunk before it is read, so a rate limiter
// holds the whole copy.
func TestCopyThrottle(t *testing.T) {
	dir := t.TempDir()
	writeLayout(t, filepath.Join(dir, "s"), "ddhzd", 1)
	makeSparse(filepath.Join(dir, "d"), 5<<20)
	src, _ := OpenFileDevice(filepath.Join(dir, "s"), false)
	defer src.Close()
	dst, _ := OpenFileDevice(filepath.Join(dir, "d"), true)
	defer dst.Close()
	ext, _ := FileExtents(filepath.Join(dir, "s"))
	var throttled atomic.Int64
	_, err := Copy(context.Background(), src, ext, dst, CopyOptions{ChunkSize: 256 << 10,
		Throttle: func(ctx context.Context, n int) error { throttled.Add(int64(n)); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, e := range ext {
		sum += e.Length
	}
	if throttled.Load() != sum {
		t.Fatalf("throttled %d bytes, extents hold %d", throttled.Load(), sum)
	}
}

func TestCopyProgress(t *testing.T) {
	dir := t.TempDir()
	writeLayout(t, filepath.Join(dir, "s"), "ddhzd", 1)
	makeSparse(filepath.Join(dir, "d"), 5<<20)
	src, _ := OpenFileDevice(filepath.Join(dir, "s"), false)
	defer src.Close()
	dst, _ := OpenFileDevice(filepath.Join(dir, "d"), true)
	defer dst.Close()
	ext, _ := FileExtents(filepath.Join(dir, "s"))
	var calls int
	var last, total int64
	_, err := Copy(context.Background(), src, ext, dst, CopyOptions{ChunkSize: 256 << 10, Progress: func(d, tot int64) {
		calls++
		if d <= last {
			t.Errorf("progress went from %d to %d", last, d)
		}
		last, total = d, tot
	}})
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, e := range ext {
		sum += e.Length
	}
	if calls < 8 || last != sum || total != sum {
		t.Fatalf("calls %d last %d total %d, extents sum %d", calls, last, total, sum)
	}
}

// faultyDevice wraps a Device: it fails writes after failAfter bytes, or
// flips a bit of everything it writes.
type faultyDevice struct {
	Device
	failAfter int64
	corrupt   bool
	written   atomic.Int64
}

var errInjected = errors.New("injected write error")

func (f *faultyDevice) WriteAt(p []byte, off int64) (int, error) {
	if f.corrupt {
		q := append([]byte(nil), p...)
		q[len(q)/2] ^= 1
		return f.Device.WriteAt(q, off)
	}
	if f.written.Add(int64(len(p))) > f.failAfter {
		return 0, errInjected
	}
	return f.Device.WriteAt(p, off)
}

func TestCopyDetectsCorruption(t *testing.T) {
	dir := t.TempDir()
	writeLayout(t, filepath.Join(dir, "s"), "dd", 1)
	makeSparse(filepath.Join(dir, "d"), 2<<20)
	src, _ := OpenFileDevice(filepath.Join(dir, "s"), false)
	defer src.Close()
	dst, _ := OpenFileDevice(filepath.Join(dir, "d"), true)
	defer dst.Close()
	ext, _ := FileExtents(filepath.Join(dir, "s"))
	_, err := Copy(context.Background(), src, ext, &faultyDevice{Device: dst, corrupt: true}, CopyOptions{})
	if !errors.Is(err, ErrVerify) {
		t.Fatalf("want ErrVerify, got %v", err)
	}
}

// faultyBackend hands out faulty writable devices.
type faultyBackend struct {
	*FileBackend
	wrap func(Device) Device
}

func (f *faultyBackend) Open(ctx context.Context, id string, writable bool) (Device, error) {
	d, err := f.FileBackend.Open(ctx, id, writable)
	if err == nil && writable {
		d = f.wrap(d)
	}
	return d, err
}

func setupSource(t *testing.T, b *FileBackend, layout string) []byte {
	t.Helper()
	if _, err := b.Create(context.Background(), CreateSpec{ID: "src", Name: "src", Size: int64(len(layout)) << 20}); err != nil {
		t.Fatal(err)
	}
	return writeLayout(t, imgPath(b, "src"), layout, 42)
}

func TestForkLocal(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t, "", 0)
	want := setupSource(t, b, "dhzdpdhh")
	st, err := ForkLocal(ctx, b, "src", CreateSpec{ID: "fork", Name: "fork", Owner: "fork_1"}, CopyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Without reflink the snapshot was itself a sparse copy, so the zero
	// block is already a hole there; with reflink Copy sees it as zeros.
	wantZero := int64(0)
	if b.Features().Clone {
		wantZero = 1 << 20
	}
	if st.DataBytes != 3<<20+4096 || st.ZeroBytes != wantZero {
		t.Fatalf("stats %+v", st)
	}
	if !bytes.Equal(readAll(t, imgPath(b, "fork")), want) {
		t.Fatal("fork differs from source")
	}
	if ids := listIDs(t, b); !reflect.DeepEqual(ids, []string{"fork/volume", "src/volume"}) {
		t.Fatalf("snapshot not released: %v", ids)
	}
	v, _ := b.Get(ctx, "fork")
	if v.Owner != "fork_1" || v.Size != 8<<20 {
		t.Fatalf("fork volume %+v", v)
	}
	// CloneOrFork picks the path by feature.
	v2, _, err := CloneOrFork(ctx, b, "src", CreateSpec{ID: "f2", Name: "f2"}, CopyOptions{})
	if err != nil || v2.ID != "f2" || !bytes.Equal(readAll(t, imgPath(b, "f2")), want) {
		t.Fatalf("CloneOrFork: %+v %v", v2, err)
	}
}

// TestForkLocalFailureCleansUp: whatever stops the copy, the partial target
// is removed and the snapshot released.
func TestForkLocalFailureCleansUp(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(b *FileBackend) error
		want error
	}{
		{"cancel mid-copy", func(b *FileBackend) error {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			_, err := ForkLocal(ctx, b, "src", CreateSpec{ID: "t", Name: "t"}, CopyOptions{ChunkSize: 64 << 10, Workers: 1,
				Progress: func(done, total int64) {
					if done >= 1<<20 {
						cancel()
					}
				}})
			return err
		}, context.Canceled},
		{"failing dst", func(b *FileBackend) error {
			fb := &faultyBackend{FileBackend: b, wrap: func(d Device) Device { return &faultyDevice{Device: d, failAfter: 2 << 20} }}
			_, err := ForkLocal(context.Background(), fb, "src", CreateSpec{ID: "t", Name: "t"}, CopyOptions{})
			return err
		}, errInjected},
		{"throttle refuses", func(b *FileBackend) error {
			var seen atomic.Int64
			_, err := ForkLocal(context.Background(), b, "src", CreateSpec{ID: "t", Name: "t"}, CopyOptions{ChunkSize: 64 << 10,
				Throttle: func(ctx context.Context, n int) error {
					if seen.Add(int64(n)) > 1<<20 {
						return errInjected
					}
					return nil
				}})
			return err
		}, errInjected},
		{"corrupting dst", func(b *FileBackend) error {
			fb := &faultyBackend{FileBackend: b, wrap: func(d Device) Device { return &faultyDevice{Device: d, corrupt: true} }}
			_, err := ForkLocal(context.Background(), fb, "src", CreateSpec{ID: "t", Name: "t"}, CopyOptions{})
			return err
		}, ErrVerify},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newTestBackend(t, "", 0)
			setupSource(t, b, "dddddddd")
			before, files := listIDs(t, b), dirFiles(t, b.Dir())
			err := tc.run(b)
			if !errors.Is(err, tc.want) {
				t.Fatalf("want %v, got %v", tc.want, err)
			}
			if after := listIDs(t, b); !reflect.DeepEqual(after, before) {
				t.Fatalf("List %v, before %v", after, before)
			}
			if after := dirFiles(t, b.Dir()); !reflect.DeepEqual(after, files) {
				t.Fatalf("dir %v, before %v", after, files)
			}
		})
	}
}

func ExampleCopy() {
	dir, _ := os.MkdirTemp("", "cow-example")
	defer os.RemoveAll(dir)
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	os.WriteFile(src, bytes.Repeat([]byte("x"), 8192), 0o600)
	makeSparse(dst, 8192)
	ext, _ := FileExtents(src)
	s, _ := OpenFileDevice(src, false)
	d, _ := OpenFileDevice(dst, true)
	st, err := Copy(context.Background(), s, ext, d, CopyOptions{})
	s.Close()
	d.Close()
	fmt.Println(st.DataBytes, err)
	// Output: 8192 <nil>
}
