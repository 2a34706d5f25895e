package main

import (
	"flag"
	"fmt"
	"math"
	"strconv"
	"strings"
)

var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}

// parseSize reads "10GiB", "512M", "1.5g", "4096". Units are powers of
// 1024 whatever the spelling ("GB" is GiB): volume sizes are block
// counts, not marketing. A fraction must make a whole number of bytes.
func parseSize(s string) (int64, error) {
	in := strings.TrimSpace(s)
	i := 0
	for i < len(in) && (in[i] >= '0' && in[i] <= '9' || in[i] == '.') {
		i++
	}
	num, unit := in[:i], strings.ToLower(strings.TrimSpace(in[i:]))
	if num == "" {
		return 0, fmt.Errorf("size %q: want a number with an optional unit (B, KiB, MiB, GiB, TiB, or k/M/G/T)", s)
	}
	mult, ok := sizeUnits[unit]
	if !ok {
		return 0, fmt.Errorf("size %q: unknown unit %q (want B, KiB, MiB, GiB, TiB, or k/M/G/T)", s, in[i:])
	}
	if !strings.Contains(num, ".") {
		n, err := strconv.ParseInt(num, 10, 64)
		if err != nil || n > math.MaxInt64/mult {
			return 0, fmt.Errorf("size %q is out of range", s)
		}
		return n * mult, nil
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: bad number", s)
	}
	v := f * float64(mult)
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("size %q is out of range", s)
	}
	// "1.5" would otherwise be read as 1 byte: a size is a whole number of
	// bytes, so a fraction must come out whole once the unit applies.
	if v != math.Trunc(v) {
		return 0, fmt.Errorf("size %q is %.1f bytes, not a whole number: use a larger unit or a whole number (e.g. 1536KiB for 1.5MiB)", s, v)
	}
	return int64(v), nil
}

// humanSize prints bytes with a binary unit: 1.5 GiB, 512 MiB, 4.0 KiB, 17 B.
func humanSize(n int64) string {
	neg := ""
	if n < 0 {
		neg, n = "-", -n
	}
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	f := float64(n)
	u := 0
	for f >= 1024 && u < len(units)-1 {
		f /= 1024
		u++
	}
	switch {
	case u == 0:
		return fmt.Sprintf("%s%d B", neg, n)
	case f == math.Trunc(f):
		return fmt.Sprintf("%s%.0f %s", neg, f, units[u])
	default:
		return fmt.Sprintf("%s%.1f %s", neg, f, units[u])
	}
}

// sizeFlag is a flag.Value for sizes.
type sizeFlag struct{ v *int64 }

func (s sizeFlag) String() string {
	if s.v == nil || *s.v == 0 {
		return "0"
	}
	return strings.ReplaceAll(humanSize(*s.v), " ", "")
}

func (s sizeFlag) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*s.v = n
	return nil
}

func sizeVar(fs *flag.FlagSet, p *int64, name string, def int64, usage string) {
	*p = def
	fs.Var(sizeFlag{p}, name, usage)
}
