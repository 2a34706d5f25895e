package transfer

import (
	"sync"
	"sync/atomic"
	"time"
)

// meter tracks a transfer and reports it to Options.Progress from its own
// goroutine, so hot paths only bump atomics.
type meter struct {
	fn    func(Progress)
	total int64
	base  int64 // done at start (resume): not counted in the rate
	start time.Time

	done, wire, resent atomic.Int64

	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

func newMeter(fn func(Progress), total, base int64) *meter {
	m := &meter{fn: fn, total: total, base: base, start: time.Now(), stop: make(chan struct{})}
	m.done.Store(base)
	if fn != nil {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			t := time.NewTicker(progressEvery)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					m.fn(m.snapshot())
				case <-m.stop:
					return
				}
			}
		}()
	}
	return m
}

func (m *meter) snapshot() Progress {
	p := Progress{Done: m.done.Load(), Total: m.total, Wire: m.wire.Load(), Resent: m.resent.Load()}
	if el := time.Since(m.start).Seconds(); el > 0 {
		p.Rate = float64(p.Done-m.base) / el
	}
	if p.Rate > 0 && p.Total > p.Done {
		p.ETA = time.Duration(float64(p.Total-p.Done) / p.Rate * float64(time.Second))
	}
	return p
}

// finish stops the ticker and makes the final report.
func (m *meter) finish() {
	m.once.Do(func() {
		close(m.stop)
		m.wg.Wait()
		if m.fn != nil {
			m.fn(m.snapshot())
		}
	})
}
