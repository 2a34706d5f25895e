package main

import (
	"context"
	"strings"
	"testing"
)

func TestUniqueLines(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"one line", "one line"},
		{"failed to connect:\n\ta: refused\n\ta: refused", "failed to connect: a: refused"},
		{"failed to connect:\n\ta: refused\n\tb: refused\n\ta: refused", "failed to connect:\n\ta: refused\n\tb: refused"},
		{"x\nx\ny", "x\ny"},
	} {
		if got := uniqueLines(tc.in); got != tc.want {
			t.Errorf("uniqueLines(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// Nothing listens on port 1: pgx dials it twice (sslmode=prefer), and the
// refusal is told once.
func TestCheckpointUnreachable(t *testing.T) {
	_, err := checkpoint(context.Background(), "postgres://u@127.0.0.1:1/db?connect_timeout=5")
	if err == nil {
		t.Fatal("checkpoint against port 1 succeeded")
	}
	if msg := err.Error(); !strings.HasPrefix(msg, "checkpoint: connect: ") || strings.Count(msg, "127.0.0.1:1 (") != 1 {
		t.Fatalf("error: %q", msg)
	}
}
