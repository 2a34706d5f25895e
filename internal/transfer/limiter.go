package transfer

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Limiter is a token bucket over bytes, shareable by all transfers of a
// node. It is hand-written rather than golang.org/x/time/rate because a
// chunk (up to 4 MiB) may exceed any sensible burst: here a request larger
// than the bucket simply goes into debt and waits it off, and no new module
// is needed. A nil *Limiter never waits.
type Limiter struct {
	mu     sync.Mutex
	rate   float64 // bytes per second
	burst  float64
	tokens float64
	last   time.Time
	taken  atomic.Int64 // bytes asked for, ever: lets a pacer see activity
}

// NewLimiter returns a limiter of bytesPerSec, or nil (unlimited) for ≤ 0.
func NewLimiter(bytesPerSec int64) *Limiter {
	if bytesPerSec <= 0 {
		return nil
	}
	l := &Limiter{last: time.Now()}
	l.rate, l.burst = float64(bytesPerSec), burstFor(float64(bytesPerSec))
	l.tokens = l.burst
	return l
}

// burstFor is small: a limit should hold over short spans too.
func burstFor(rate float64) float64 { return min(rate/4, 256<<10) }

// SetRate changes the rate from now on (internal/pace steers it); ≤ 0 is
// ignored, as a shared limiter cannot turn into "unlimited" under running
// transfers. Waits already computed keep their length.
func (l *Limiter) SetRate(bytesPerSec int64) {
	if l == nil || bytesPerSec <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	l.last = now
	l.rate, l.burst = float64(bytesPerSec), burstFor(float64(bytesPerSec))
	l.tokens = min(l.tokens, l.burst)
}

// Rate is the current rate in bytes/s (0 for a nil limiter: unlimited).
func (l *Limiter) Rate() int64 {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return int64(l.rate)
}

// Taken is the number of bytes WaitN has been asked for since creation.
func (l *Limiter) Taken() int64 {
	if l == nil {
		return 0
	}
	return l.taken.Load()
}

// WaitAll takes n bytes from each limiter in turn (nil ones never wait):
// a transfer's own cap, then the node's shared limiter. Tokens keep
// accruing in the later ones meanwhile, so the rate is the lowest of them.
func WaitAll(ctx context.Context, n int, ls ...*Limiter) error {
	for _, l := range ls {
		if err := l.WaitN(ctx, n); err != nil {
			return err
		}
	}
	return nil
}

// WaitN takes n bytes from the bucket, sleeping until they are paid for.
func (l *Limiter) WaitN(ctx context.Context, n int) error {
	if l == nil || n <= 0 {
		return ctx.Err()
	}
	l.taken.Add(int64(n))
	l.mu.Lock()
	now := time.Now()
	l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	l.last = now
	l.tokens -= float64(n)
	var wait time.Duration
	if l.tokens < 0 {
		wait = time.Duration(-l.tokens / l.rate * float64(time.Second))
	}
	l.mu.Unlock()
	if wait == 0 {
		return ctx.Err()
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
