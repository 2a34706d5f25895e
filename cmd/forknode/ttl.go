package main

import (
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/forknode/forknode/internal/api"
)

// parseTTL reads a time to live: Go durations ("90m", "36h", "1h30m")
// plus whole or fractional days, alone or before a Go duration ("7d",
// "1.5d", "1d12h"), which is how review environments are usually given.
// The result is whole seconds, at least one, at most api.MaxTTLSeconds.
func parseTTL(s string) (time.Duration, error) {
	in := strings.TrimSpace(s)
	bad := fmt.Errorf("ttl %q: want a duration such as 90m, 36h, 7d or 1d12h", s)
	// The sign is taken off first, so "-3d", "-1h" and "0d" all get the
	// same answer below.
	neg := strings.HasPrefix(in, "-")
	in = strings.TrimPrefix(strings.TrimPrefix(in, "-"), "+")
	var days float64
	rest := in
	if i := strings.IndexByte(in, 'd'); i >= 0 {
		if !isDecimal(in[:i]) {
			return 0, bad
		}
		days, _ = strconv.ParseFloat(in[:i], 64)
		rest = in[i+1:]
	} else if in == "" {
		return 0, bad
	}
	var d time.Duration
	if rest != "" {
		// A second sign ("1d-2h") is not a duration anyone means.
		if c := rest[0]; c != '.' && (c < '0' || c > '9') {
			return 0, bad
		}
		var err error
		if d, err = time.ParseDuration(rest); err != nil {
			return 0, bad
		}
	}
	secs := days*24*3600 + d.Seconds()
	if neg || secs < 1 {
		return 0, fmt.Errorf("ttl %q: want a positive duration of at least 1s, such as 90m, 36h or 7d", s)
	}
	if secs > float64(api.MaxTTLSeconds) {
		return 0, fmt.Errorf("ttl %q: at most about 100 years", s)
	}
	d += time.Duration(days * 24 * float64(time.Hour))
	return d.Truncate(time.Second), nil
}

// isDecimal reports whether s is digits with at most one decimal point
// ("7", "1.5"): no sign, exponent, hex or "NaN", which ParseFloat takes.
func isDecimal(s string) bool {
	digits, dots := 0, 0
	for _, c := range s {
		switch {
		case c >= '0' && c <= '9':
			digits++
		case c == '.':
			dots++
		default:
			return false
		}
	}
	return digits > 0 && dots <= 1
}

// ttlFlag is a flag.Value for TTLs (0 when not given).
type ttlFlag struct{ v *time.Duration }

func (f ttlFlag) String() string {
	if f.v == nil || *f.v == 0 {
		return ""
	}
	return f.v.String()
}

func (f ttlFlag) Set(s string) error {
	d, err := parseTTL(s)
	if err != nil {
		return err
	}
	*f.v = d
	return nil
}

func ttlVar(fs *flag.FlagSet, p *time.Duration, name, usage string) { fs.Var(ttlFlag{p}, name, usage) }

// expiresText renders an expiry for tables: "-", "in 3h0m0s" or "expired".
func expiresText(unixNanos int64, now time.Time) string {
	if unixNanos == 0 {
		return "-"
	}
	d := time.Unix(0, unixNanos).Sub(now)
	if d <= 0 {
		return "expired"
	}
	return "in " + d.Round(time.Second).String()
}

// durationFlag is a flag.Value for agent durations: Go's forms ("30s",
// "36h", "0") and, as --ttl takes them, days ("7d", "1d12h").
type durationFlag struct{ v *time.Duration }

func (f durationFlag) String() string {
	if f.v == nil {
		return ""
	}
	return f.v.String()
}

func (f durationFlag) Set(s string) error {
	if d, err := time.ParseDuration(strings.TrimSpace(s)); err == nil {
		*f.v = d
		return nil
	}
	d, err := parseTTL(s)
	if err != nil {
		return fmt.Errorf("%q: want a duration such as 30s, 36h, 7d or 1d12h", s)
	}
	*f.v = d
	return nil
}

func durationVar(fs *flag.FlagSet, p *time.Duration, name string, def time.Duration, usage string) {
	*p = def
	fs.Var(durationFlag{p}, name, usage)
}
