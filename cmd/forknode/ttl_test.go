package main

import (
	"testing"
	"time"
)

func TestParseTTL(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		bad  bool
	}{
		{in: "90m", want: 90 * time.Minute},
		{in: "36h", want: 36 * time.Hour},
		{in: "1h30m", want: 90 * time.Minute},
		{in: "7d", want: 7 * 24 * time.Hour},
		{in: "1.5d", want: 36 * time.Hour},
		{in: " 2d ", want: 48 * time.Hour},
		{in: "1500ms", want: time.Second},
		{in: "1s", want: time.Second},
		{in: "", bad: true},
		{in: "d", bad: true},
		{in: "0", bad: true},
		{in: "0s", bad: true},
		{in: "500ms", bad: true},
		{in: "-1h", bad: true},
		{in: "-2d", bad: true},
		{in: "forever", bad: true},
		{in: "3 weeks", bad: true},
		{in: "1hd", bad: true},
		{in: "99999999d", bad: true},
		{in: "NaNd", bad: true},
	} {
		got, err := parseTTL(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("parseTTL(%q) = %v, want error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseTTL(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestExpiresText(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		at   int64
		want string
	}{
		{0, "-"},
		{now.Add(-time.Minute).UnixNano(), "expired"},
		{now.UnixNano(), "expired"},
		{now.Add(3*time.Hour + 400*time.Millisecond).UnixNano(), "in 3h0m0s"},
	} {
		if got := expiresText(tc.at, now); got != tc.want {
			t.Errorf("expiresText(%d) = %q, want %q", tc.at, got, tc.want)
		}
	}
}
