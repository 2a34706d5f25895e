package pace

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Prober times one operation whose delay stands for what the host's
// database sees (FileProbe).
type Prober interface {
	Probe() (time.Duration, error)
}

// LatencySignal fires when the probe's delay, filtered as the minimum of
// the last three probes (one slow probe is noise, three are a queue), is
// above Base·Factor + Slack, where Base is the lowest filtered delay of
// the last History.
type LatencySignal struct {
	p       Prober
	Factor  float64
	Slack   time.Duration
	History time.Duration
	now     func() time.Time

	recent  [3]time.Duration
	n       int
	buckets []bucket // ten-second minimums, oldest first
}

type bucket struct {
	start time.Time
	min   time.Duration
}

const bucketSpan = 10 * time.Second

// NewLatencySignal watches p with the defaults: Factor 2, Slack 2 ms,
// History 2 min. The slack keeps jitter on a fast device (tens of
// microseconds) from counting as congestion.
func NewLatencySignal(p Prober) *LatencySignal {
	return &LatencySignal{p: p, Factor: 2, Slack: 2 * time.Millisecond, History: 2 * time.Minute, now: time.Now}
}

// Name is "io".
func (s *LatencySignal) Name() string { return "io" }

// Sample probes once.
func (s *LatencySignal) Sample() (bool, string, error) {
	d, err := s.p.Probe()
	if err != nil {
		return false, "", err
	}
	return s.observe(d, s.now())
}

// observe folds one probe delay in and decides.
func (s *LatencySignal) observe(d time.Duration, now time.Time) (bool, string, error) {
	s.recent[s.n%len(s.recent)] = d
	s.n++
	if s.n < len(s.recent) {
		return false, "", nil // not enough probes to filter yet
	}
	cur := s.recent[0]
	for _, r := range s.recent[1:] {
		cur = min(cur, r)
	}
	// Slide the base window.
	if k := len(s.buckets); k == 0 || now.Sub(s.buckets[k-1].start) >= bucketSpan {
		s.buckets = append(s.buckets, bucket{start: now, min: cur})
	} else if cur < s.buckets[k-1].min {
		s.buckets[k-1].min = cur
	}
	for len(s.buckets) > 1 && now.Sub(s.buckets[0].start) > s.History {
		s.buckets = s.buckets[1:]
	}
	base := s.buckets[0].min
	for _, b := range s.buckets[1:] {
		base = min(base, b.min)
	}
	limit := time.Duration(float64(base)*s.Factor) + s.Slack
	return cur > limit, fmt.Sprintf("%v>%v", cur.Round(time.Microsecond), limit.Round(time.Microsecond)), nil
}

// CPUSignal fires when the CPUs are saturated by someone else: this
// process's threads spent more than WaitShare of their
// on-CPU-or-waiting time waiting in a run queue, AND the rest of the host
// (everything but this process) used more than OthersShare of all CPUs.
// Then every cycle the fork burns (at a lower nice level or not, and the
// kernel's copying on its behalf) is one the database waits for. Run-queue
// delay alone is not enough: on an idle host the fork's own threads queue
// behind each other, and that hurts nobody. It reads the schedstat of
// every thread of this process, /proc/stat and /proc/self/stat.
type CPUSignal struct {
	WaitShare   float64
	OthersShare float64
	proc        string // "/proc"

	last   cpuSample
	primed bool
}

type cpuSample struct {
	run, wait   int64 // this process's threads, ns
	busy, total int64 // all CPUs, clock ticks
	self        int64 // this process's utime+stime, clock ticks
}

// NewCPUSignal watches this process and the host, firing above 30 %
// run-queue wait while the rest of the host uses over half of the CPUs.
func NewCPUSignal() *CPUSignal {
	return &CPUSignal{WaitShare: 0.3, OthersShare: 0.5, proc: "/proc"}
}

// Name is "cpu".
func (s *CPUSignal) Name() string { return "cpu" }

// Sample reads the counters once.
func (s *CPUSignal) Sample() (bool, string, error) {
	var c cpuSample
	var err error
	if c.run, c.wait, err = readSchedstats(filepath.Join(s.proc, "self", "task")); err != nil {
		return false, "", err
	}
	if c.busy, c.total, err = readProcStat(filepath.Join(s.proc, "stat")); err != nil {
		return false, "", err
	}
	if c.self, err = readSelfTicks(filepath.Join(s.proc, "self", "stat")); err != nil {
		return false, "", err
	}
	return s.observe(c)
}

func (s *CPUSignal) observe(c cpuSample) (bool, string, error) {
	prev := s.last
	s.last = c
	if !s.primed {
		s.primed = true
		return false, "", nil
	}
	dr, dw := c.run-prev.run, c.wait-prev.wait
	dbusy, dtotal, dself := c.busy-prev.busy, c.total-prev.total, c.self-prev.self
	// Threads come and go, so a sum can shrink; and under a millisecond
	// of work, or of clock, says nothing either way.
	if dr < 0 || dw < 0 || dr+dw < int64(time.Millisecond) || dtotal <= 0 {
		return false, "", nil
	}
	wait := float64(dw) / float64(dr+dw)
	others := max(0, float64(dbusy-dself)/float64(dtotal))
	return wait > s.WaitShare && others > s.OthersShare, fmt.Sprintf("wait:%.2f,others:%.2f", wait, others), nil
}

// readProcStat returns the busy and total clock ticks of all CPUs from the
// first line of /proc/stat.
func readProcStat(path string) (busy, total int64, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, fmt.Errorf("pace: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("pace: %s: unexpected first line %q", path, line)
	}
	// user nice system idle iowait irq softirq [steal]; guest time is
	// already inside user and nice.
	var v [8]int64
	for i := 1; i < len(f) && i <= 8; i++ {
		if v[i-1], err = strconv.ParseInt(f[i], 10, 64); err != nil {
			return 0, 0, fmt.Errorf("pace: %s: %q: %w", path, line, err)
		}
	}
	idle := v[3] + v[4]
	busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
	return busy, busy + idle, nil
}

// readSelfTicks returns utime+stime of the process from /proc/self/stat.
func readSelfTicks(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("pace: %w", err)
	}
	// The command name (field 2) may hold spaces: count fields after ")".
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("pace: %s: no ')' in %q", path, b)
	}
	f := strings.Fields(string(b[i+1:]))
	// After ")": state is field 3, so utime (14) and stime (15) are at 11 and 12.
	if len(f) < 13 {
		return 0, fmt.Errorf("pace: %s: %d fields", path, len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("pace: %s: utime %q stime %q", path, f[11], f[12])
	}
	return ut + st, nil
}

// readSchedstats sums the run and wait nanoseconds of every thread.
func readSchedstats(dir string) (run, wait int64, err error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0, fmt.Errorf("pace: %w", err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "schedstat"))
		if err != nil {
			continue // the thread exited
		}
		f := strings.Fields(string(b))
		if len(f) < 2 {
			return 0, 0, fmt.Errorf("pace: schedstat of thread %s: %q", e.Name(), b)
		}
		r, err1 := strconv.ParseInt(f[0], 10, 64)
		w, err2 := strconv.ParseInt(f[1], 10, 64)
		if err1 != nil || err2 != nil {
			return 0, 0, fmt.Errorf("pace: schedstat of thread %s: %q", e.Name(), b)
		}
		run += r
		wait += w
	}
	return run, wait, nil
}
