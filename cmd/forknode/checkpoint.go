package main

import (
	"context"
	"fmt"
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
		return 0, fmt.Errorf("checkpoint: connect: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		return 0, fmt.Errorf("checkpoint: %w (CHECKPOINT needs a superuser or the pg_checkpoint role)", err)
	}
	return time.Since(start), nil
}
