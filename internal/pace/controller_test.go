package pace

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/testutil"
)

func TestStep(t *testing.T) {
	const mib = 1 << 20
	cases := []struct {
		name                 string
		rate, floor, ceiling int64
		congested            bool
		want                 int64
	}{
		{"congested cuts by backoff", 100 * mib, 4 * mib, 100 * mib, true, 70 * mib},
		{"cut stops at the floor", 5 * mib, 4 * mib, 100 * mib, true, 4 * mib},
		{"quiet adds ceiling-floor over ramp", 50 * mib, 4 * mib, 54 * mib, false, 51 * mib},
		{"quiet stops at the ceiling", 99 * mib, 4 * mib, 100 * mib, false, 100 * mib},
		{"rate above the ceiling is clamped", 500 * mib, 4 * mib, 100 * mib, true, 100 * mib},
		{"floor above ceiling becomes the ceiling", 10 * mib, 200 * mib, 100 * mib, true, 100 * mib},
		{"no ceiling means no rate", 10 * mib, 1, 0, false, 0},
		{"tiny ceiling still moves", 1, 1, 10, false, 1 + 9/50 + 1},
	}
	var def Config // the backoff and ramp the controller uses by default
	def.defaults()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := Step(c.rate, c.floor, c.ceiling, c.congested, def.Backoff, def.Ramp); got != c.want {
				t.Fatalf("Step(%d, %d, %d, %v) = %d, want %d", c.rate, c.floor, c.ceiling, c.congested, got, c.want)
			}
		})
	}
}

type fakeLimiter struct {
	mu    sync.Mutex
	rate  int64
	taken atomic.Int64
}

func (l *fakeLimiter) SetRate(r int64) { l.mu.Lock(); l.rate = r; l.mu.Unlock() }
func (l *fakeLimiter) Taken() int64    { return l.taken.Load() }
func (l *fakeLimiter) Rate() int64     { l.mu.Lock(); defer l.mu.Unlock(); return l.rate }

type fakeSignal struct{ congested atomic.Bool }

func (s *fakeSignal) Name() string { return "fake" }
func (s *fakeSignal) Sample() (bool, string, error) {
	return s.congested.Load(), "x", nil
}

func TestNewStatusBeforeRun(t *testing.T) {
	c, err := New(Config{Ceiling: 40 << 20}, &fakeLimiter{})
	if err != nil {
		t.Fatal(err)
	}
	if st := c.Status(); st.Rate != 10<<20 || st.Ceiling != 40<<20 || st.Active {
		t.Fatalf("status before Run = %+v, want the start rate under a 40 MiB/s ceiling", st)
	}
}

func TestNewRejects(t *testing.T) {
	if _, err := New(Config{}, &fakeLimiter{}); err == nil {
		t.Fatal("New without a ceiling succeeded")
	}
	if _, err := New(Config{Ceiling: 1}, nil); err == nil {
		t.Fatal("New without a limiter succeeded")
	}
}

// TestControllerFollowsSignal drives a controller with a fake signal and a
// limiter that sees traffic: congestion sends the rate to the floor, quiet
// brings it back to the ceiling, and stopping leaves the ceiling.
func TestControllerFollowsSignal(t *testing.T) {
	const ceiling, floor = 64 << 20, 2 << 20
	lim := &fakeLimiter{}
	sig := &fakeSignal{}
	c, err := New(Config{Ceiling: ceiling, Floor: floor, Interval: 2 * time.Millisecond, IdleInterval: 2 * time.Millisecond, Ramp: 10}, lim, sig)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	traffic := make(chan struct{})
	go func() {
		for {
			select {
			case <-traffic:
				return
			case <-time.After(time.Millisecond):
				lim.taken.Add(4096)
			}
		}
	}()
	defer close(traffic)

	sig.congested.Store(true)
	testutil.Eventually(t, 5*time.Second, "rate at the floor under congestion", func() bool {
		return lim.Rate() == floor && c.Status().Congested != ""
	})
	sig.congested.Store(false)
	testutil.Eventually(t, 5*time.Second, "rate back at the ceiling when quiet", func() bool {
		return lim.Rate() == ceiling && c.Status().Active
	})
	cancel()
	<-done
	if lim.Rate() != ceiling {
		t.Fatalf("rate after Run returned = %d, want the ceiling %d", lim.Rate(), ceiling)
	}
}

// TestControllerIdleWaitsAtStartRate: with no traffic, congestion does not
// matter (there is nothing to slow down): the limiter waits at a quarter of
// the ceiling. Traffic that stops sends it back there after IdleAfter.
func TestControllerIdleWaitsAtStartRate(t *testing.T) {
	lim := &fakeLimiter{rate: 1 << 20}
	sig := &fakeSignal{}
	c, err := New(Config{Ceiling: 32 << 20, Floor: 1 << 20, Interval: time.Millisecond, IdleInterval: time.Millisecond, IdleAfter: 50 * time.Millisecond, Ramp: 4}, lim, sig)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx)
	testutil.Eventually(t, 5*time.Second, "idle controller at the start rate", func() bool {
		st := c.Status()
		return !st.At.IsZero() && !st.Active && lim.Rate() == 8<<20
	})
	// Busy and quiet: up to the ceiling.
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
				lim.taken.Add(1)
			}
		}
	}()
	testutil.Eventually(t, 5*time.Second, "busy controller at the ceiling", func() bool {
		return c.Status().Active && lim.Rate() == 32<<20
	})
	close(stop)
	testutil.Eventually(t, 5*time.Second, "idle again, back at the start rate", func() bool {
		return !c.Status().Active && lim.Rate() == 8<<20
	})
}
