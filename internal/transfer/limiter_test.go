package transfer

import (
	"context"
	"testing"
	"time"
)

func TestLimiterSetRate(t *testing.T) {
	var nilL *Limiter
	nilL.SetRate(5) // no panic
	if nilL.Rate() != 0 || nilL.Taken() != 0 {
		t.Fatal("a nil limiter reports a rate or bytes")
	}
	if NewLimiter(0) != nil {
		t.Fatal("NewLimiter(0) is not unlimited")
	}

	l := NewLimiter(1 << 20)
	cases := []struct {
		set, want int64
	}{
		{8 << 20, 8 << 20},
		{0, 8 << 20},  // ignored: a shared limiter never turns unlimited
		{-1, 8 << 20}, // ignored
		{512 << 20, 512 << 20},
	}
	for _, c := range cases {
		l.SetRate(c.set)
		if got := l.Rate(); got != c.want {
			t.Fatalf("SetRate(%d): Rate() = %d, want %d", c.set, got, c.want)
		}
	}
	// At 512 MiB/s, 8 MiB is paid within a second; at the first rate of
	// 1 MiB/s it would have taken eight.
	ctx := context.Background()
	start := time.Now()
	for range 8 {
		if err := l.WaitN(ctx, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("8 MiB at 512 MiB/s took %v: the new rate did not apply", d)
	}
	if got := l.Taken(); got != 8<<20 {
		t.Fatalf("Taken() = %d, want %d", got, 8<<20)
	}
	// Lowered again, the debt is paid at the new rate: 1 MiB at 4 MiB/s
	// cannot finish in under ~200 ms.
	l.SetRate(4 << 20)
	start = time.Now()
	if err := l.WaitN(ctx, 1<<20); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Fatalf("1 MiB at 4 MiB/s took only %v", d)
	}
}
