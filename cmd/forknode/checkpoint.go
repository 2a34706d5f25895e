package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// checkpoint runs CHECKPOINT on a PostgreSQL server before a fork, so the
// fork's crash recovery has little WAL to replay (Database Lab Engine does
// the same). pgx is used instead of shelling out to psql: the CLI then needs
// no PostgreSQL client installed, and errors come back typed.
func checkpoint(ctx context.Context, dsn string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	start := time.Now()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, fmt.Errorf("checkpoint: connect: %w", onceError{err})
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		return 0, fmt.Errorf("checkpoint: %w (CHECKPOINT needs a superuser or the pg_checkpoint role)", err)
	}
	return time.Since(start), nil
}

// onceError says each line of an error once. With the default
// sslmode=prefer pgx dials every address twice (TLS, then plain), and an
// unreachable server fails both the same way.
type onceError struct{ err error }

func (e onceError) Error() string { return uniqueLines(e.err.Error()) }
func (e onceError) Unwrap() error { return e.err }

// uniqueLines drops repeated lines; a single detail line left goes back
// on the line it explains ("...: detail").
func uniqueLines(s string) string {
	seen := map[string]bool{}
	var out []string
	for _, l := range strings.Split(s, "\n") {
		k := strings.TrimSpace(l)
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, l)
	}
	if len(out) == 2 && strings.HasSuffix(out[0], ":") {
		return out[0] + " " + strings.TrimSpace(out[1])
	}
	return strings.Join(out, "\n")
}
