package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseTTL(t *testing.T) {
	const (
		format   = "want a duration such as"
		positive = "want a positive duration of at least 1s"
		tooLong  = "at most about 100 years"
	)
	for _, tc := range []struct {
		in   string
		want time.Duration
		err  string // a fragment of the error; "" for none
	}{
		{in: "90m", want: 90 * time.Minute},
		{in: "36h", want: 36 * time.Hour},
		{in: "1h30m", want: 90 * time.Minute},
		{in: "7d", want: 7 * 24 * time.Hour},
		{in: "1.5d", want: 36 * time.Hour},
		{in: " 2d ", want: 48 * time.Hour},
		{in: "1d12h", want: 36 * time.Hour},
		{in: "2d30m15s", want: 48*time.Hour + 30*time.Minute + 15*time.Second},
		{in: "+1d", want: 24 * time.Hour},
		{in: "1500ms", want: time.Second},
		{in: "1s", want: time.Second},
		{in: "36500d", want: 36500 * 24 * time.Hour},
		{in: "", err: format},
		{in: "d", err: format},
		{in: "-", err: format},
		{in: "0", err: positive},
		{in: "0s", err: positive},
		{in: "0d", err: positive},
		{in: "500ms", err: positive},
		// Negative values get the same answer whatever their form.
		{in: "-1h", err: positive},
		{in: "-2d", err: positive},
		{in: "-3d", err: positive},
		{in: "-1d12h", err: positive},
		{in: "-99999999d", err: positive},
		{in: "1d-2h", err: format},
		{in: "1d12", err: format},
		{in: "12h1d", err: format},
		{in: "forever", err: format},
		{in: "5days", err: format},
		{in: "3 weeks", err: format},
		{in: "1hd", err: format},
		{in: "1e3d", err: format},
		{in: "NaNd", err: format},
		{in: "99999999d", err: tooLong},
		{in: "36500d2000000h", err: tooLong},
	} {
		got, err := parseTTL(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseTTL(%q) = %v, %v; want an error with %q", tc.in, got, err, tc.err)
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

func TestDurationFlag(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		bad  bool
	}{
		{in: "30s", want: 30 * time.Second},
		{in: "100ms", want: 100 * time.Millisecond},
		{in: "0", want: 0},
		{in: "7d", want: 7 * 24 * time.Hour},
		{in: "1d12h", want: 36 * time.Hour},
		{in: "-1h", want: -time.Hour}, // the agent's own check refuses it, naming the flag
		{in: "7 days", bad: true},
		{in: "", bad: true},
	} {
		var d time.Duration
		err := durationFlag{&d}.Set(tc.in)
		if tc.bad != (err != nil) || (!tc.bad && d != tc.want) {
			t.Errorf("Set(%q) = %v, %v; want %v (bad %v)", tc.in, d, err, tc.want, tc.bad)
		}
	}
}
