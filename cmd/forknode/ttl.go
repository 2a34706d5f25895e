package main

import (
	"flag"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/forknode/forknode/internal/api"
)

// parseTTL reads a time to live: Go durations ("90m", "36h", "1h30m") plus
// whole days ("7d"), which is how review environments are usually given.
// The result is whole seconds, at least one, at most api.MaxTTLSeconds.
func parseTTL(s string) (time.Duration, error) {
	in := strings.TrimSpace(s)
	var d time.Duration
	if days, ok := strings.CutSuffix(in, "d"); ok && days != "" && !strings.ContainsAny(days, "hmsuµn") {
		n, err := strconv.ParseFloat(days, 64)
		if err != nil || n < 0 || n*24*3600 > float64(api.MaxTTLSeconds) || math.IsNaN(n) {
			return 0, fmt.Errorf("ttl %q: want a duration such as 90m, 36h or 7d", s)
		}
		d = time.Duration(n * 24 * float64(time.Hour))
	} else {
		var err error
		if d, err = time.ParseDuration(in); err != nil {
			return 0, fmt.Errorf("ttl %q: want a duration such as 90m, 36h or 7d", s)
		}
	}
	if d < time.Second {
		return 0, fmt.Errorf("ttl %q: want at least 1s", s)
	}
	if d/time.Second > time.Duration(api.MaxTTLSeconds) {
		return 0, fmt.Errorf("ttl %q: at most about 100 years", s)
	}
	return d.Truncate(time.Second), nil
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
