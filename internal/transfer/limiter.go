package transfer

import (
	"context"
	"sync"
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
}

// NewLimiter returns a limiter of bytesPerSec, or nil (unlimited) for ≤ 0.
func NewLimiter(bytesPerSec int64) *Limiter {
	if bytesPerSec <= 0 {
		return nil
	}
	r := float64(bytesPerSec)
	burst := min(r/4, 256<<10) // small burst: a limit should hold over short spans too
	return &Limiter{rate: r, burst: burst, tokens: burst, last: time.Now()}
}

// WaitN takes n bytes from the bucket, sleeping until they are paid for.
func (l *Limiter) WaitN(ctx context.Context, n int) error {
	if l == nil || n <= 0 {
		return ctx.Err()
	}
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
