package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCompare(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string, size int64, writes map[int64]string) string {
		p := filepath.Join(dir, name)
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		for off, s := range writes {
			if _, err := f.WriteAt([]byte(s), off); err != nil {
				t.Fatal(err)
			}
		}
		return p
	}
	const sz = 5 << 20
	base := mk("base", sz, map[int64]string{100: "hello", 3<<20 + 7: "world"})
	for _, tc := range []struct {
		name string
		path string
		want string // substring of the difference; "" = identical
	}{
		{"same bytes, other layout", mk("same", sz, map[int64]string{100: "hello", 3<<20 + 7: "world", 4 << 20: "\x00\x00"}), ""},
		{"one byte differs", mk("byte", sz, map[int64]string{100: "hellp", 3<<20 + 7: "world"}), "at byte 0"},
		{"data where the other has a hole", mk("extra", sz, map[int64]string{100: "hello", 3<<20 + 7: "world", 2 << 20: "x"}), "at byte 2097152"},
		{"sizes differ", mk("short", sz-1, map[int64]string{100: "hello", 3<<20 + 7: "world"}), "sizes differ"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := compare(base, tc.path)
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == "" && got != "" || tc.want != "" && !strings.Contains(got, tc.want) {
				t.Fatalf("compare = %q, want %q", got, tc.want)
			}
		})
	}
	if _, err := compare(base, filepath.Join(dir, "missing")); err == nil {
		t.Fatal("no error for a missing file")
	}
}
