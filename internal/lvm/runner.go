package lvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"time"
)

// Runner runs "lvm args..." and returns its stdout. A non-zero exit must be
// returned as an *LVMError so that callers can match sentinels.
type Runner interface {
	Run(ctx context.Context, args ...string) ([]byte, error)
}

// ExecRunner runs the real lvm binary.
type ExecRunner struct {
	// Path of the lvm binary; "lvm" (looked up on PATH) when empty.
	Path string
}

// Run executes lvm with args under LC_ALL=C, so that the stderr texts the
// sentinels match are never translated.
func (r ExecRunner) Run(ctx context.Context, args ...string) ([]byte, error) {
	path := r.Path
	if path == "" {
		path = "lvm"
	}
	cmd := exec.CommandContext(ctx, path, args...)
	// On cancel, interrupt rather than kill: lvm finishes or rolls back its
	// metadata update on SIGINT. Only a hung lvm gets SIGKILL, later.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 30 * time.Second
	// LVM_SUPPRESS_FD_WARNINGS: lvm complains about inherited descriptors,
	// which is noise in stderr, not an error.
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LVM_SUPPRESS_FD_WARNINGS=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err == nil {
		return stdout.Bytes(), nil
	}
	op := ""
	if len(args) > 0 {
		op = args[0]
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("lvm %s: %w (stderr: %s)", op, ctx.Err(), bytes.TrimSpace(stderr.Bytes()))
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return stdout.Bytes(), &LVMError{
			Op:     op,
			Args:   append([]string(nil), args...),
			Code:   ee.ExitCode(),
			Stderr: string(bytes.TrimSpace(stderr.Bytes())),
		}
	}
	// Could not start lvm at all (missing binary, permissions).
	return nil, fmt.Errorf("run %s %s: %w", path, op, err)
}
