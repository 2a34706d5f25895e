package pace

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Limiter is what the controller steers: a shared byte-rate limiter
// (transfer.Limiter) that also counts the bytes it has let through, so the
// controller can tell a busy node from an idle one.
type Limiter interface {
	SetRate(bytesPerSec int64)
	Taken() int64
}

// Signal says whether the fork's I/O is hurting the host right now. detail
// is a figure for the log (a latency, a share).
type Signal interface {
	Name() string
	Sample() (congested bool, detail string, err error)
}

// Config of a Controller. Zero fields take the defaults below.
type Config struct {
	Ceiling      int64         // the configured rate limit: never exceeded
	Floor        int64         // never paced below (default Ceiling/8, at least 1 MiB/s)
	Interval     time.Duration // sampling period while forks move data (200 ms)
	IdleInterval time.Duration // sampling period otherwise (5 s)
	IdleAfter    time.Duration // no bytes for this long: idle (2 s)
	Backoff      float64       // multiplier on congestion (0.7)
	Ramp         int           // steps from Floor to Ceiling when all is quiet (50: ten seconds)
	Logger       hclog.Logger
}

func (c *Config) defaults() {
	if c.Floor <= 0 {
		// A fork must finish in reasonable time even on a host that is
		// never idle: at the default 100 MiB/s ceiling, 12.5 MiB/s moves a
		// 100 GiB volume in a little over two hours.
		c.Floor = max(c.Ceiling/8, 1<<20)
	}
	c.Floor = min(c.Floor, c.Ceiling)
	if c.Interval <= 0 {
		c.Interval = 200 * time.Millisecond
	}
	if c.IdleInterval <= 0 {
		c.IdleInterval = 5 * time.Second
	}
	if c.IdleAfter <= 0 {
		c.IdleAfter = 2 * time.Second
	}
	if c.Backoff <= 0 || c.Backoff >= 1 {
		c.Backoff = 0.7
	}
	if c.Ramp <= 0 {
		c.Ramp = 50
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
}

// Step is the AIMD rule: on congestion multiply by backoff, else add
// (ceiling-floor)/ramp; the result stays within [floor, ceiling].
func Step(rate, floor, ceiling int64, congested bool, backoff float64, ramp int) int64 {
	if ceiling <= 0 {
		return 0
	}
	floor = max(min(floor, ceiling), 1)
	if congested {
		rate = int64(float64(rate) * backoff)
	} else {
		rate += max((ceiling-floor)/int64(max(ramp, 1)), 1)
	}
	return max(floor, min(rate, ceiling))
}

// Controller moves a limiter's rate between Floor and Ceiling.
type Controller struct {
	cfg     Config
	lim     Limiter
	signals []Signal

	mu   sync.Mutex
	rate int64
	last Status
}

// Status is the controller's last decision, for the node's status report.
type Status struct {
	Rate      int64     `json:"rate"`
	Ceiling   int64     `json:"ceiling"`
	Active    bool      `json:"active"`
	Congested string    `json:"congested,omitempty"` // the signals that fired, with their figures
	At        time.Time `json:"at"`
}

// New returns a controller; Run starts it.
func New(cfg Config, lim Limiter, signals ...Signal) (*Controller, error) {
	if cfg.Ceiling <= 0 {
		return nil, fmt.Errorf("pace: a ceiling (rate limit) is needed to pace under")
	}
	if lim == nil {
		return nil, fmt.Errorf("pace: no limiter")
	}
	cfg.defaults()
	c := &Controller{cfg: cfg, lim: lim, signals: signals}
	c.rate = c.startRate()
	c.last = Status{Rate: c.rate, Ceiling: cfg.Ceiling} // before Run's first tick
	return c, nil
}

// Status reports the current rate and the last decision.
func (c *Controller) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// Run samples the signals and steers the limiter until ctx ends; then it
// leaves the limiter at Ceiling.
//
// It looks at the limiter every Interval, which costs one atomic load. The
// node counts as busy while bytes went through in the last IdleAfter; only
// then are the signals sampled every Interval (and every IdleInterval
// otherwise, to keep their baselines fresh). An idle node waits at a
// quarter of the ceiling, so the first bytes of the next fork go out
// gently and the rate climbs from there.
func (c *Controller) Run(ctx context.Context) {
	defer c.lim.SetRate(c.cfg.Ceiling)
	start := c.startRate()
	c.lim.SetRate(start) // New set c.rate and the status to it
	taken := c.lim.Taken()
	var lastMove, lastSample time.Time
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		if n := c.lim.Taken(); n != taken {
			taken, lastMove = n, now
		}
		active := !lastMove.IsZero() && now.Sub(lastMove) < c.cfg.IdleAfter
		if !active && now.Sub(lastSample) < c.cfg.IdleInterval {
			if c.Status().Active { // just went idle: wait at the start rate
				c.record(start, false, "", now)
			}
			continue
		}
		lastSample = now
		c.tick(active, start, now)
	}
}

// startRate is where an idle node waits: a quarter of the ceiling.
func (c *Controller) startRate() int64 { return max(c.cfg.Floor, c.cfg.Ceiling/4) }

// tick samples every signal once and takes one Step when busy.
func (c *Controller) tick(active bool, start int64, now time.Time) {
	var fired string
	for _, s := range c.signals {
		congested, detail, err := s.Sample()
		if err != nil {
			c.cfg.Logger.Debug("pace signal failed", "signal", s.Name(), "error", err)
			continue
		}
		if congested {
			if fired != "" {
				fired += " "
			}
			fired += s.Name() + "=" + detail
		}
	}
	c.mu.Lock()
	rate := start
	if active {
		rate = Step(c.rate, c.cfg.Floor, c.cfg.Ceiling, fired != "", c.cfg.Backoff, c.cfg.Ramp)
	}
	c.mu.Unlock()
	c.record(rate, active, fired, now)
	if fired != "" && active {
		c.cfg.Logger.Trace("pacing down", "rate_mib", rate>>20, "signals", fired)
	}
}

// record sets the rate and the status.
func (c *Controller) record(rate int64, active bool, fired string, now time.Time) {
	c.mu.Lock()
	changed := rate != c.rate
	c.rate = rate
	c.last = Status{Rate: rate, Ceiling: c.cfg.Ceiling, Active: active, Congested: fired, At: now}
	c.mu.Unlock()
	if changed {
		c.lim.SetRate(rate)
	}
}
