package main

import "testing"

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		bad  bool
	}{
		{in: "4096", want: 4096},
		{in: "10GiB", want: 10 << 30},
		{in: "10 GiB", want: 10 << 30},
		{in: "512M", want: 512 << 20},
		{in: "512mb", want: 512 << 20},
		{in: "1k", want: 1024},
		{in: "2KiB", want: 2048},
		{in: "1.5g", want: 3 << 29},
		{in: "1TiB", want: 1 << 40},
		{in: "7B", want: 7},
		{in: "", bad: true},
		{in: "GiB", bad: true},
		{in: "10 parsecs", bad: true},
		{in: "-1G", bad: true},
		{in: "99999999999999TiB", bad: true},
		{in: "1.2.3G", bad: true},
		{in: "1.5", bad: true},    // 1.5 bytes, once read as 1
		{in: "1.1MiB", bad: true}, // 1153433.6 bytes
		{in: "0.5KiB", want: 512}, // a fraction that comes out whole
		{in: "1.0", want: 1},
	} {
		got, err := parseSize(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("parseSize(%q) = %d, want error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestHumanSize(t *testing.T) {
	for _, tc := range []struct {
		in   int64
		want string
	}{
		{0, "0 B"}, {17, "17 B"}, {1024, "1 KiB"}, {1536, "1.5 KiB"},
		{64 << 20, "64 MiB"}, {3 << 29, "1.5 GiB"}, {1 << 40, "1 TiB"}, {-2048, "-2 KiB"},
	} {
		if got := humanSize(tc.in); got != tc.want {
			t.Errorf("humanSize(%d) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
