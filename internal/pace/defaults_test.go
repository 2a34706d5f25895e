package pace

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// The figures README.md's "Pacing" section promises. The tests below build
// the signals and the controller the way production does (NewCPUSignal,
// NewLatencySignal, New with only a ceiling, as the agent does without
// --pace-floor) and check behaviour on both sides of each figure, so that
// changing a default in the code without changing the README fails here.
const (
	readmeWaitShare   = 0.3                    // "more than 30 % of their time ... waiting for a CPU"
	readmeOthersShare = 0.5                    // "more than half of all CPUs"
	readmeFactor      = 2                      // "twice the lowest"
	readmeSlack       = 2 * time.Millisecond   // "plus 2 ms"
	readmeHistory     = 2 * time.Minute        // "the last two minutes"
	readmeBackoff     = 0.7                    // "cuts the rate by 30 %"
	readmeFloorDiv    = 8                      // "an eighth of the ceiling"
	readmeRamp        = 50                     // "a fiftieth of the span from floor to ceiling"
	readmeStartDiv    = 4                      // "an idle agent waits at a quarter of the ceiling"
	readmeInterval    = 200 * time.Millisecond // "every 200 ms during a fork"
	readmeIdleAfter   = 2 * time.Second        // no bytes for this long: idle (Config.IdleAfter)
	readmeCeiling     = 100 << 20              // the default --rate-limit
)

// TestCPUSignalDefaultThresholds: the CPU signal fires only when the wait
// share is above 30 % AND the rest of the host uses more than half of all
// CPUs; just under (or exactly at) either figure it stays quiet.
func TestCPUSignalDefaultThresholds(t *testing.T) {
	ms := int64(time.Millisecond)
	waitAt := int64(readmeWaitShare * 1000)     // per mille of 1 s of our threads' time
	othersAt := int64(readmeOthersShare * 1000) // per mille of 1000 ticks of all CPUs
	cases := []struct {
		name         string
		wait, others int64 // per mille, relative to the README's figures
		self         int64 // this process's own ticks: busy, but not others'
		want         bool
	}{
		{"wait just over, others just over", +1, +1, 0, true},
		{"wait just under, others just over", -1, +1, 0, false},
		{"wait exactly 30 %, others just over", 0, +1, 0, false},
		{"wait just over, others just under half", +1, -1, 0, false},
		{"wait just over, others exactly half", +1, 0, 0, false},
		{"our own ticks are not the others'", +1, +1, 300, true},
		{"busy host, but only half of it is others'", +1, 0, 300, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			wait, others := waitAt+c.wait, othersAt+c.others
			s := NewCPUSignal()
			if got, _, err := s.observe(cpuSample{}); err != nil || got {
				t.Fatalf("priming sample: congested=%v err=%v", got, err)
			}
			got, detail, err := s.observe(cpuSample{
				run:   (1000 - wait) * ms,
				wait:  wait * ms,
				busy:  others + c.self,
				total: 1000,
				self:  c.self,
			})
			if err != nil {
				t.Fatal(err)
			}
			if got != c.want {
				t.Fatalf("wait %.3f, others %.3f: congested=%v (%s), want %v", float64(wait)/1000, float64(others)/1000, got, detail, c.want)
			}
		})
	}
}

// fixedProber returns whatever delay the test sets next.
type fixedProber struct{ d time.Duration }

func (p *fixedProber) Probe() (time.Duration, error) { return p.d, nil }

// latencyClock drives a default LatencySignal through Sample with a fake
// prober and clock.
type latencyClock struct {
	t   *testing.T
	p   *fixedProber
	s   *LatencySignal
	now time.Time
}

func newLatencyClock(t *testing.T) *latencyClock {
	p := &fixedProber{}
	s := NewLatencySignal(p)
	lc := &latencyClock{t: t, p: p, s: s, now: time.Unix(1_000_000, 0)}
	s.now = func() time.Time { return lc.now }
	return lc
}

// probe samples once, a delay d at time at.
func (lc *latencyClock) probe(d time.Duration, at time.Time) (bool, string) {
	lc.t.Helper()
	lc.p.d, lc.now = d, at
	got, detail, err := lc.s.Sample()
	if err != nil {
		lc.t.Fatal(err)
	}
	return got, detail
}

// TestLatencySignalDefaultThreshold: with the lowest filtered delay of the
// last two minutes at base, the disk signal fires when the filtered delay is
// above 2·base + 2 ms, and not at or under it. Two bases tell the factor
// from the slack.
func TestLatencySignalDefaultThreshold(t *testing.T) {
	us := time.Microsecond
	limit := func(base time.Duration) time.Duration { return readmeFactor*base + readmeSlack }
	cases := []struct {
		name  string
		base  time.Duration
		delay time.Duration
		want  bool
	}{
		{"fast disk: just under 2·base+2ms", 100 * us, limit(100*us) - us, false},
		{"fast disk: exactly 2·base+2ms", 100 * us, limit(100 * us), false},
		{"fast disk: just over 2·base+2ms", 100 * us, limit(100*us) + us, true},
		{"1 ms disk: just under", time.Millisecond, limit(time.Millisecond) - us, false},
		{"1 ms disk: just over", time.Millisecond, limit(time.Millisecond) + us, true},
		{"slow disk: just under", 10 * time.Millisecond, limit(10*time.Millisecond) - us, false},
		{"slow disk: exactly", 10 * time.Millisecond, limit(10 * time.Millisecond), false},
		{"slow disk: just over", 10 * time.Millisecond, limit(10*time.Millisecond) + us, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			lc := newLatencyClock(t)
			at := lc.now
			var got bool
			var detail string
			// Three probes at base fill the filter and set the base; three
			// at delay move the filtered (min of three) delay there.
			for i, d := range []time.Duration{c.base, c.base, c.base, c.delay, c.delay, c.delay} {
				got, detail = lc.probe(d, at.Add(time.Duration(i)*readmeInterval))
				if i < 5 && got {
					t.Fatalf("probe %d fired early (%s)", i, detail)
				}
			}
			if got != c.want {
				t.Fatalf("base %v, filtered delay %v: congested=%v (%s), want %v", c.base, c.delay, got, detail, c.want)
			}
		})
	}
}

// TestLatencySignalDefaultHistory: a low delay counts as the base while it
// is less than two minutes old, and not once it is older.
func TestLatencySignalDefaultHistory(t *testing.T) {
	const base, high = time.Millisecond, 20 * time.Millisecond
	if high <= readmeFactor*base+readmeSlack || high > readmeFactor*high+readmeSlack {
		t.Fatal("high must be congested against base and quiet against itself")
	}
	cases := []struct {
		name string
		age  time.Duration // of the low probe when the high one is judged
		want bool
	}{
		{"low probe 10 s old", 10 * time.Second, true},
		{"low probe just under two minutes old", readmeHistory - time.Millisecond, true},
		{"low probe just over two minutes old", readmeHistory + time.Millisecond, false},
		{"low probe three minutes old", 3 * time.Minute, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			lc := newLatencyClock(t)
			t0 := lc.now
			// Two high probes fill the filter; one low probe at t0 is the
			// minimum (it echoes through the filter for two more probes);
			// three high probes later the filtered delay is high again.
			lc.probe(high, t0.Add(-2*readmeInterval))
			lc.probe(high, t0.Add(-readmeInterval))
			for i := range 4 {
				if got, detail := lc.probe([]time.Duration{base, high, high, high}[i], t0.Add(time.Duration(i)*readmeInterval)); i == 3 && !got {
					t.Fatalf("high delay right after the low one did not fire (%s)", detail)
				}
			}
			got, detail := lc.probe(high, t0.Add(c.age))
			if got != c.want {
				t.Fatalf("high probe %v after the low one: congested=%v (%s), want %v", c.age, got, detail, c.want)
			}
		})
	}
}

// flagSignal fires when told to and counts its samples.
type flagSignal struct {
	congested atomic.Bool
	samples   atomic.Int64
}

func (s *flagSignal) Name() string { return "flag" }
func (s *flagSignal) Sample() (bool, string, error) {
	s.samples.Add(1)
	return s.congested.Load(), "x", nil
}

// errSignal always fails: a broken signal must not count as congestion.
type errSignal struct{}

func (errSignal) Name() string                  { return "broken" }
func (errSignal) Sample() (bool, string, error) { return true, "", errors.New("broken") }

// TestControllerDefaultSteps: under the default 100 MiB/s ceiling and no
// --pace-floor, a congested sample cuts the rate by 30 % down to an eighth
// of the ceiling, and a quiet one adds a fiftieth of the span from floor to
// ceiling, up to the ceiling.
func TestControllerDefaultSteps(t *testing.T) {
	const ceiling = int64(readmeCeiling)
	floor := ceiling / readmeFloorDiv      // 12.5 MiB/s
	step := (ceiling - floor) / readmeRamp // 1.75 MiB/s
	cut := func(r int64) int64 { return int64(float64(r) * readmeBackoff) }
	cases := []struct {
		name      string
		rate      int64
		congested bool
		want      int64
	}{
		{"congested at the ceiling: 70 %", ceiling, true, cut(ceiling)},
		{"congested at 50 MiB/s: 35 MiB/s", 50 << 20, true, 35 << 20},
		{"congested, 70 % just above an eighth", floor*10/7 + 64, true, cut(floor*10/7 + 64)},
		{"congested, 70 % just below an eighth: the floor", floor*10/7 - 64, true, floor},
		{"congested at the floor stays there", floor, true, floor},
		{"quiet at the floor adds a fiftieth of the span", floor, false, floor + step},
		{"quiet at the start rate", ceiling / readmeStartDiv, false, ceiling/readmeStartDiv + step},
		{"quiet just over a step below the ceiling", ceiling - step - 1, false, ceiling - 1},
		{"quiet just under a step below the ceiling: the ceiling", ceiling - step + 1, false, ceiling},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.want < floor || c.want > ceiling {
				t.Fatalf("bad case: want %d outside [%d, %d]", c.want, floor, ceiling)
			}
			lim := &fakeLimiter{}
			sig := &flagSignal{}
			ctl, err := New(Config{Ceiling: ceiling}, lim, sig, errSignal{})
			if err != nil {
				t.Fatal(err)
			}
			ctl.record(c.rate, true, "", time.Unix(0, 0)) // as an earlier sample would have left it
			sig.congested.Store(c.congested)
			ctl.tick(true, ctl.startRate(), time.Unix(1, 0))
			st := ctl.Status()
			if st.Rate != c.want || lim.Rate() != c.want {
				t.Fatalf("from %d, congested=%v: status rate %d, limiter %d; want %d", c.rate, c.congested, st.Rate, lim.Rate(), c.want)
			}
			if (st.Congested != "") != c.congested {
				t.Fatalf("status congested %q, want %v", st.Congested, c.congested)
			}
		})
	}
}

// TestControllerDefaultFloorAndStart: New with only a ceiling (the agent
// without --pace-floor) paces no lower than an eighth of it (but at least
// 1 MiB/s, Config.Floor) and waits at a quarter of it while idle.
func TestControllerDefaultFloorAndStart(t *testing.T) {
	const mib = 1 << 20
	cases := []struct {
		ceiling, floor, start int64
	}{
		{readmeCeiling, readmeCeiling / readmeFloorDiv, readmeCeiling / readmeStartDiv},
		{800 * mib, 100 * mib, 200 * mib},
		{40 * mib, 5 * mib, 10 * mib},
		{8 * mib, mib, 2 * mib},
		{4 * mib, mib, mib}, // an eighth would be under 1 MiB/s
	}
	for _, c := range cases {
		lim := &fakeLimiter{}
		sig := &flagSignal{}
		ctl, err := New(Config{Ceiling: c.ceiling}, lim, sig)
		if err != nil {
			t.Fatal(err)
		}
		if st := ctl.Status(); st.Rate != c.start {
			t.Errorf("ceiling %d: start rate %d, want %d", c.ceiling, st.Rate, c.start)
		}
		// Idle: the rate stays at the start rate whatever the signal says.
		sig.congested.Store(true)
		ctl.tick(false, ctl.startRate(), time.Unix(1, 0))
		if got := ctl.Status().Rate; got != c.start {
			t.Errorf("ceiling %d: idle rate %d, want %d", c.ceiling, got, c.start)
		}
		// Busy and congested for long: down to the floor, no lower.
		for range 100 {
			ctl.tick(true, ctl.startRate(), time.Unix(2, 0))
		}
		if got := ctl.Status().Rate; got != c.floor {
			t.Errorf("ceiling %d: rate after long congestion %d, want the floor %d", c.ceiling, got, c.floor)
		}
		// Quiet: each sample adds a fiftieth of the span (rounded down),
		// so about fifty of them climb from the floor to the ceiling.
		sig.congested.Store(false)
		step := (c.ceiling - c.floor) / readmeRamp
		for k := int64(1); k <= readmeRamp+1; k++ {
			ctl.tick(true, ctl.startRate(), time.Unix(3, 0))
			if got, want := ctl.Status().Rate, min(c.floor+k*step, c.ceiling); got != want {
				t.Errorf("ceiling %d: rate %d after %d quiet samples, want %d", c.ceiling, got, k, want)
				break
			}
		}
		if got := ctl.Status().Rate; got != c.ceiling {
			t.Errorf("ceiling %d: rate %d after %d quiet samples, want the ceiling", c.ceiling, got, readmeRamp+1)
		}
	}
}

// TestControllerDefaultTiming runs a default controller on synctest's fake
// clock: it waits at a quarter of the ceiling, samples every 200 ms while
// bytes move, counts as busy until 2 s without bytes, then goes back to a
// quarter of the ceiling; stopped, it leaves the ceiling.
func TestControllerDefaultTiming(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ceiling = int64(readmeCeiling)
		start := ceiling / readmeStartDiv
		step := (ceiling - ceiling/readmeFloorDiv) / readmeRamp
		lim := &fakeLimiter{}
		sig := &flagSignal{}
		ctl, err := New(Config{Ceiling: ceiling}, lim, sig)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); ctl.Run(ctx) }()
		t0 := time.Now()
		// at advances the fake clock to t0+d and lets Run handle any tick.
		at := func(d time.Duration) {
			time.Sleep(time.Until(t0.Add(d)))
			synctest.Wait()
		}
		half := readmeInterval / 2

		at(half)
		if lim.Rate() != start || ctl.Status().Active {
			t.Fatalf("before any bytes: rate %d active %v, want %d idle", lim.Rate(), ctl.Status().Active, start)
		}
		// Bytes move before each of the first six ticks, then stop: the
		// last tick that sees them is the sixth.
		const moving = 6
		for i := range moving {
			lim.taken.Add(1)
			at(time.Duration(i+1)*readmeInterval + half)
		}
		lastMove := moving * readmeInterval
		if n := sig.samples.Load(); n != moving {
			t.Fatalf("%d samples in %v of traffic, want one per 200 ms: %d", n, lastMove, moving)
		}
		// The last tick less than IdleAfter after the last move: still
		// busy, still sampling every tick and stepping up.
		busyTicks := int64((readmeIdleAfter - 1) / readmeInterval) // ticks at lastMove+200ms ... lastMove+1.8s
		at(lastMove + readmeIdleAfter - readmeInterval + half)
		st := ctl.Status()
		if !st.Active {
			t.Fatalf("idle %v after the last bytes, want busy until %v", readmeIdleAfter-readmeInterval, readmeIdleAfter)
		}
		if n := sig.samples.Load(); n != moving+busyTicks {
			t.Fatalf("%d samples, want %d (every 200 ms while busy)", n, moving+busyTicks)
		}
		if want := start + (moving+busyTicks)*step; st.Rate != want {
			t.Fatalf("busy rate %d, want %d", st.Rate, want)
		}
		// The tick IdleAfter after the last move: idle, at the start rate.
		at(lastMove + readmeIdleAfter + half)
		if st := ctl.Status(); st.Active || st.Rate != start || lim.Rate() != start {
			t.Fatalf("%v after the last bytes: active %v rate %d limiter %d, want idle at %d", readmeIdleAfter, st.Active, st.Rate, lim.Rate(), start)
		}
		cancel()
		<-done
		if lim.Rate() != ceiling {
			t.Fatalf("rate after Run %d, want the ceiling", lim.Rate())
		}
	})
}

// TestConfigDefaults pins the defaults New fills in, for the figures the
// behavioural tests above can only see to the nearest tick.
func TestConfigDefaults(t *testing.T) {
	ctl, err := New(Config{Ceiling: readmeCeiling}, &fakeLimiter{})
	if err != nil {
		t.Fatal(err)
	}
	c := ctl.cfg
	if c.Floor != readmeCeiling/readmeFloorDiv || c.Interval != readmeInterval || c.IdleAfter != readmeIdleAfter ||
		c.Backoff != readmeBackoff || c.Ramp != readmeRamp {
		t.Fatalf("defaults %+v: want floor %d, interval %v, idle after %v, backoff %v, ramp %d",
			c, readmeCeiling/readmeFloorDiv, readmeInterval, readmeIdleAfter, readmeBackoff, readmeRamp)
	}
	s := NewLatencySignal(nil)
	if s.Factor != readmeFactor || s.Slack != readmeSlack || s.History != readmeHistory {
		t.Fatalf("latency defaults factor %v slack %v history %v", s.Factor, s.Slack, s.History)
	}
	cpu := NewCPUSignal()
	if cpu.WaitShare != readmeWaitShare || cpu.OthersShare != readmeOthersShare {
		t.Fatalf("cpu defaults wait %v others %v", cpu.WaitShare, cpu.OthersShare)
	}
}
