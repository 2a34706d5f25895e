package lvm

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"
)

// Runner runs "lvm args..." and returns its stdout. A non-zero exit must be
// returned as an *LVMError so that callers can match sentinels.
type Runner interface {
	Run(ctx context.Context, args ...string) ([]byte, error)
}

// ToolRunner is what a Runner also implements when it can run the
// device-mapper tools beside lvm (dmsetup, thin_dump), with the same error
// rules. A Runner without it has no thin maps (ErrUnsupported).
// Its output goes to stdout as it comes, so a long dump can be parsed as a
// stream.
type ToolRunner interface {
	RunTool(ctx context.Context, stdout io.Writer, tool string, args ...string) error
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
	var stdout bytes.Buffer
	if err := runCommand(ctx, "", path, args, &stdout); err != nil {
		var le *LVMError
		if errors.As(err, &le) {
			return stdout.Bytes(), err
		}
		return nil, err
	}
	return stdout.Bytes(), nil
}

// RunTool runs dmsetup or thin_dump (from PATH) like Run runs lvm.
func (r ExecRunner) RunTool(ctx context.Context, stdout io.Writer, tool string, args ...string) error {
	switch tool {
	case "dmsetup", "thin_dump":
	default:
		return fmt.Errorf("%w: tool %q", ErrInvalid, tool)
	}
	return runCommand(ctx, tool, tool, args, stdout)
}

// runCommand runs path with args, its output into stdout; tool names it in
// errors ("" for lvm).
func runCommand(ctx context.Context, tool, path string, args []string, stdout io.Writer) error {
	cmd := exec.CommandContext(ctx, path, args...)
	// On cancel, interrupt rather than kill: lvm finishes or rolls back its
	// metadata update on SIGINT. Only a hung lvm gets SIGKILL, later.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 30 * time.Second
	// LVM_SUPPRESS_FD_WARNINGS: lvm complains about inherited descriptors,
	// which is noise in stderr, not an error.
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LVM_SUPPRESS_FD_WARNINGS=1")
	var stderr bytes.Buffer
	cmd.Stdout = stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err == nil {
		return nil
	}
	op := ""
	if len(args) > 0 {
		op = args[0]
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%s %s: %w (stderr: %s)", cmp.Or(tool, "lvm"), op, ctx.Err(), bytes.TrimSpace(stderr.Bytes()))
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return &LVMError{
			Tool:   tool,
			Op:     op,
			Args:   append([]string(nil), args...),
			Code:   ee.ExitCode(),
			Stderr: string(bytes.TrimSpace(stderr.Bytes())),
		}
	}
	if tool != "" && errors.Is(err, exec.ErrNotFound) {
		return fmt.Errorf("%w: %w", ErrUnsupported, err) // thin maps are optional
	}
	// Could not start the tool at all (missing binary, permissions).
	return fmt.Errorf("run %s %s: %w", path, op, err)
}
