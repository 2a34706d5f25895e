package pace

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/testutil"
)

func TestLatencySignal(t *testing.T) {
	ms := time.Millisecond
	t0 := time.Unix(1000, 0)
	type obs struct {
		d    time.Duration
		at   time.Duration // since t0
		want bool
	}
	cases := []struct {
		name string
		seq  []obs
	}{
		{"first probes only fill the filter", []obs{{50 * ms, 0, false}, {50 * ms, 1, false}}},
		{"steady delay is not congestion", []obs{{ms, 0, false}, {ms, 1, false}, {ms, 2, false}, {ms, 3, false}}},
		{"one slow probe is noise", []obs{{ms, 0, false}, {ms, 1, false}, {ms, 2, false}, {40 * ms, 3, false}, {ms, 4, false}}},
		{"three slow probes are a queue", []obs{{ms, 0, false}, {ms, 1, false}, {ms, 2, false}, {40 * ms, 3, false}, {40 * ms, 4, false}, {40 * ms, 5, true}}},
		{"within factor plus slack is fine", []obs{{ms, 0, false}, {ms, 1, false}, {ms, 2, false}, {3 * ms, 3, false}, {3 * ms, 4, false}, {3 * ms, 5, false}}},
		{"the base forgets after the history", []obs{
			{ms, 0, false}, {ms, 1, false}, {ms, 2, false},
			{20 * ms, 3 * time.Minute, false}, {20 * ms, 3*time.Minute + time.Second, false},
			{20 * ms, 3*time.Minute + 2*time.Second, true},   // the base is still 1 ms
			{20 * ms, 5*time.Minute + 30*time.Second, false}, // now it is 20 ms
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := NewLatencySignal(nil)
			for i, o := range c.seq {
				got, detail, err := s.observe(o.d, t0.Add(o.at))
				if err != nil {
					t.Fatal(err)
				}
				if got != o.want {
					t.Fatalf("probe %d (%v): congested=%v (%s), want %v", i, o.d, got, detail, o.want)
				}
			}
		})
	}
}

func TestCPUSignal(t *testing.T) {
	ms := int64(time.Millisecond)
	// Two CPUs over 1 s: 200 ticks in total.
	type smp = cpuSample
	cases := []struct {
		name string
		seq  []smp
		want []bool
	}{
		{"first sample primes", []smp{{run: 100 * ms, wait: 900 * ms, busy: 200, total: 200}}, []bool{false}},
		{"running freely on a busy host", []smp{{}, {run: 100 * ms, wait: 5 * ms, busy: 190, total: 200}}, []bool{false, false}},
		{"waiting, and others hold the CPUs", []smp{{}, {run: 10 * ms, wait: 90 * ms, busy: 195, total: 200, self: 5}}, []bool{false, true}},
		{"waiting behind our own threads only", []smp{{}, {run: 900 * ms, wait: 900 * ms, busy: 190, total: 200, self: 180}}, []bool{false, false}},
		{"others busy but we never wait", []smp{{}, {run: 50 * ms, wait: ms, busy: 200, total: 200, self: 5}}, []bool{false, false}},
		{"too little work to judge", []smp{{}, {run: ms / 10, wait: ms / 2, busy: 200, total: 200}}, []bool{false, false}},
		{"shrinking sums are ignored", []smp{{run: 50 * ms, wait: 50 * ms}, {run: 10 * ms, busy: 200, total: 200}}, []bool{false, false}},
		{"no clock passed", []smp{{}, {run: 10 * ms, wait: 90 * ms}}, []bool{false, false}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := NewCPUSignal()
			for i, x := range c.seq {
				got, detail, err := s.observe(x)
				if err != nil {
					t.Fatal(err)
				}
				if got != c.want[i] {
					t.Fatalf("sample %d: congested=%v (%s), want %v", i, got, detail, c.want[i])
				}
			}
		})
	}
}

func TestCPUSignalReadsProc(t *testing.T) {
	s := NewCPUSignal()
	for i := 0; i < 2; i++ {
		if _, _, err := s.Sample(); err != nil {
			t.Fatal(err)
		}
	}
	if s.last.total <= 0 || s.last.run <= 0 {
		t.Fatalf("counters not read: %+v", s.last)
	}
	dir := t.TempDir()
	cases := []struct{ name, stat, self string }{
		{"stat without a cpu line", "intr 1 2 3\n", "1 (x) R 1 1 1 0 -1 0 0 0 0 0 5 6 0 0"},
		{"stat with letters", "cpu 1 2 x 4 5 6 7 8\n", "1 (x) R 1 1 1 0 -1 0 0 0 0 0 5 6 0 0"},
		{"self stat too short", "cpu 1 2 3 4 5 6 7 8\n", "1 (x) R 1"},
		{"self stat without the name", "cpu 1 2 3 4 5 6 7 8\n", "garbage"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err1 := readProcStat(writeTemp(t, dir, "stat", c.stat))
			_, err2 := readSelfTicks(writeTemp(t, dir, "self", c.self))
			if err1 == nil && err2 == nil {
				t.Fatal("malformed input accepted")
			}
		})
	}
	if v, err := readSelfTicks(writeTemp(t, dir, "ok", "1 (a b) c) R 1 1 1 0 -1 0 0 0 0 0 5 6 0 0")); err != nil || v != 11 {
		t.Fatalf("readSelfTicks with spaces and ')' in the name = %d, %v; want 11", v, err)
	}
}

func writeTemp(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReadSchedstats(t *testing.T) {
	run, _, err := readSchedstats("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	if run <= 0 {
		t.Fatalf("this process has run %d ns by its schedstats", run)
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "7"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "7", "schedstat"), []byte("garbage\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := readSchedstats(dir); err == nil {
		t.Fatal("a malformed schedstat was accepted")
	}
}

func TestFileProbe(t *testing.T) {
	path := filepath.Join(t.TempDir(), ".probe")
	for pass := 0; pass < 2; pass++ { // the second pass reuses the file
		p, err := OpenFileProbe(path)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 5; i++ {
			d, err := p.Probe()
			if err != nil {
				t.Fatal(err)
			}
			if d <= 0 {
				t.Fatalf("probe took %v", d)
			}
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Probe(); err == nil {
			t.Fatal("probe after Close succeeded")
		}
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() != probeBlock*probeSlots {
			t.Fatalf("probe file is %d bytes", st.Size())
		}
	}
	if _, err := OpenFileProbe(filepath.Join(t.TempDir(), "missing", "dir", "probe")); err == nil {
		t.Fatal("a probe in a missing directory opened")
	}
}

// TestFileProbeRefusesOtherFiles: a path that names someone's file is
// refused and left as it was; a probe file whose creation was cut short
// (zeros only) is taken over.
func TestFileProbeRefusesOtherFiles(t *testing.T) {
	random := make([]byte, 10<<20)
	rand.New(rand.NewSource(1)).Read(random)
	behind := make([]byte, probeBlock*probeSlots)
	copy(behind[64<<10:], "_BHRfS_M")
	for _, tc := range []struct {
		name    string
		content []byte
		dir     bool
		err     error
	}{
		{"a 10 MiB file of data", random, false, ErrNotProbeDevice},
		{"a probe-sized file with data at 64 KiB", behind, false, ErrNotProbeDevice},
		{"a text file", []byte("remember the milk\n"), false, ErrNotProbeDevice},
		{"a directory", nil, true, ErrNotProbeDevice},
		{"a probe file cut short", make([]byte, 8192), false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "probe")
			if tc.dir {
				if err := os.Mkdir(path, 0o700); err != nil {
					t.Fatal(err)
				}
			} else if err := os.WriteFile(path, tc.content, 0o600); err != nil {
				t.Fatal(err)
			}
			p, err := OpenFileProbe(path)
			if !errors.Is(err, tc.err) {
				t.Fatalf("open: %v, want %v", err, tc.err)
			}
			if err != nil {
				if got, _ := os.ReadFile(path); !tc.dir && !bytes.Equal(got, tc.content) {
					t.Fatalf("a refused file was changed: %d bytes, was %d", len(got), len(tc.content))
				}
				return
			}
			defer p.Close()
			if _, err := p.Probe(); err != nil {
				t.Fatal(err)
			}
			if st, err := os.Stat(path); err != nil || st.Size() != probeBlock*probeSlots {
				t.Fatalf("probe file: %v %v", st, err)
			}
		})
	}
}

// A block device (a small LV on an LVM host) can be the probe, but only an
// empty one or one a probe wrote before: anything else is left untouched.
func TestDeviceProbe(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	image := func(name string, size int64, first []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, first, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, size); err != nil {
			t.Fatal(err)
		}
		return testutil.AttachLoop(t, path)
	}
	data := bytes.Repeat([]byte("precious"), 512)
	for _, tc := range []struct {
		name  string
		size  int64
		first []byte
		err   error
	}{
		{"empty", 4 << 20, nil, nil},
		{"small", 512 << 10, nil, ErrNotProbeDevice},
		{"holds data", 4 << 20, data, ErrNotProbeDevice},
		// A btrfs superblock sits at 64 KiB, behind a zero first block.
		{"data behind a zero first block", 4 << 20, append(make([]byte, 64<<10), data...), ErrNotProbeDevice},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev := image(tc.name+".img", tc.size, tc.first)
			p, err := OpenFileProbe(dev)
			if !errors.Is(err, tc.err) {
				t.Fatalf("open %s: %v, want %v", dev, err, tc.err)
			}
			if err != nil {
				got := make([]byte, len(tc.first))
				f, err := os.Open(dev)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				if _, err := io.ReadFull(f, got); err != nil || !bytes.Equal(got, tc.first) {
					t.Fatalf("a refused device was written to: %v", err)
				}
				return
			}
			for range 3 {
				if d, err := p.Probe(); err != nil || d <= 0 {
					t.Fatalf("probe: %v %v", d, err)
				}
			}
			p.Close()
			// A later start recognises the device as the probe's.
			p, err = OpenFileProbe(dev)
			if err != nil {
				t.Fatalf("reopen: %v", err)
			}
			p.Close()
		})
	}
}

// TestCPUSignalFiresUnderContention runs real CPU hogs in other processes
// (one more than there are CPUs) while this process also wants every CPU:
// the signal must see both its threads waiting and the rest of the host
// busy. (The opposite case is not asserted: other work on a shared test
// machine can legitimately saturate it at any time.)
func TestCPUSignalFiresUnderContention(t *testing.T) {
	ncpu := runtime.NumCPU()
	var hogs []*exec.Cmd
	for range ncpu + 1 {
		c := exec.Command("sh", "-c", "while :; do :; done")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		hogs = append(hogs, c)
	}
	t.Cleanup(func() {
		for _, c := range hogs {
			c.Process.Kill()
			c.Wait()
		}
	})
	stop := make(chan struct{})
	defer close(stop)
	for range ncpu {
		go func() {
			x := 0
			for {
				select {
				case <-stop:
					return
				default:
					for i := 0; i < 1e5; i++ {
						x += i
					}
				}
			}
		}()
	}
	s := NewCPUSignal()
	if _, _, err := s.Sample(); err != nil {
		t.Fatal(err)
	}
	var last string
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(250 * time.Millisecond)
		congested, detail, err := s.Sample()
		if err != nil {
			t.Fatal(err)
		}
		if congested {
			t.Logf("congested: %s", detail)
			return
		}
		last = detail
	}
	t.Fatalf("CPU signal never fired with %d hogs on %d CPUs (last sample %s)", ncpu+1, ncpu, last)
}

// TestReclaimProbeDevice: the agent's own probe LV, left by an older
// release (a probe's first block, old data further on) or half-zeroed by
// a crash (zeros, then old data), is readied for the probe; anything
// whose first block is someone else's is left alone. Loop devices stand
// in for the LV; TestLVMProbeLV runs the LVM side in the qemu guest.
func TestReclaimProbeDevice(t *testing.T) {
	testutil.RequireRoot(t)
	stale := bytes.Repeat([]byte("left by a removed LV "), (4<<20)/21+1)[:4<<20]
	withFirst := func(first string) []byte {
		b := append([]byte(nil), stale...)
		copy(b, make([]byte, probeBlock))
		copy(b, first)
		return b
	}
	for _, tc := range []struct {
		name    string
		content []byte
		err     error
	}{
		{"an older release's probe LV", withFirst(probeMagic + "\x07"), nil},
		{"zeroing cut short", withFirst(""), nil},
		{"someone's data from the first block", stale, ErrNotProbeDevice},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "lv.img")
			if err := os.WriteFile(img, tc.content, 0o600); err != nil {
				t.Fatal(err)
			}
			dev := testutil.AttachLoop(t, img)
			if p, err := OpenFileProbe(dev); err == nil {
				p.Close()
				t.Fatal("before: the probe took it; the case proves nothing")
			}
			err := ReclaimProbeDevice(dev)
			if !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
				t.Fatalf("reclaim: %v, want %v", err, tc.err)
			}
			read := func() []byte {
				f, err := os.Open(dev)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				b := make([]byte, len(tc.content))
				if _, err := io.ReadFull(f, b); err != nil {
					t.Fatal(err)
				}
				return b
			}
			if err != nil {
				if !bytes.Equal(read(), tc.content) {
					t.Fatal("a refused device was written to")
				}
				return
			}
			p, err := OpenFileProbe(dev)
			if err != nil {
				t.Fatalf("after reclaim the probe refuses it: %v", err)
			}
			p.Close()
			if got := read(); !bytes.Equal(got[probeBlock*probeSlots:], tc.content[probeBlock*probeSlots:]) {
				t.Fatal("reclaim wrote past the probe's first MiB")
			}
		})
	}
	if err := ReclaimProbeDevice(filepath.Join(t.TempDir(), "file")); !errors.Is(err, ErrNotProbeDevice) {
		t.Fatalf("a path that is not a block device: %v", err)
	}
}
