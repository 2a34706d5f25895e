// Package testutil holds helpers shared by tests: tier gating and polling.
//
// A test that needs root, a tool or a kernel feature calls Require*. When the
// requirement is missing the test is skipped with the reason, except under
// CI=true, where a missing tier is a failure: CI must never pass by skipping.
package testutil

import (
	"os"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Skip skips the test with reason, or fails it when CI=true.
func Skip(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("tier required in CI but unavailable: %s", reason)
	}
	t.Skipf("SKIP (set up the tier to run it): %s", reason)
}

// RequireRoot needs uid 0.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root")
	}
}

// RequireCmd needs each named program on PATH.
func RequireCmd(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			Skip(t, "needs "+n+" on PATH")
		}
	}
}

// Eventually polls cond every 10ms until it returns true or timeout passes.
func Eventually(t testing.TB, timeout time.Duration, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", timeout, msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// DiskTempDir returns a temporary directory on a disk file system, for
// tests that need O_DIRECT, which tmpfs refuses: t.TempDir() when it is on
// disk, else one under /var/tmp, else the test is skipped as a missing
// tier (a failure under CI=true).
func DiskTempDir(t testing.TB) string {
	t.Helper()
	onTmpfs := func(dir string) bool {
		var st unix.Statfs_t
		return unix.Statfs(dir, &st) == nil && st.Type == unix.TMPFS_MAGIC
	}
	dir := t.TempDir()
	if !onTmpfs(dir) {
		return dir
	}
	dir, err := os.MkdirTemp("/var/tmp", "forknode-test-")
	if err != nil || onTmpfs(dir) {
		if err == nil {
			os.RemoveAll(dir)
		}
		Skip(t, "no temporary directory on a disk file system (the test needs O_DIRECT, which tmpfs refuses)")
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
