package e2e

// Real LVM in a qemu guest. The host kernel has no device-mapper, so the
// LVM tiers of internal/lvm and internal/cow run inside a small guest that
// boots Debian's kernel (see test/e2e/qemu and
// shared/notes/lvm-in-qemu.md). This test builds (or reuses) the guest,
// boots it with the payload and asserts from the serial console that every
// in-guest test passed.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/testutil"
)

// qemuGuestTests must each report PASS inside the guest: a test that
// skipped there (its env missing) would otherwise go unnoticed.
var qemuGuestTests = []string{
	"TestRealVGCapacity", "TestRealCreateListRemove", "TestRealSnapshotWatch", "TestRealThin",
	"TestLVMThickCreateListCapacity", "TestLVMThickForkLocal", "TestLVMThinClone1GiB",
	"TestLVMStaleDataThickFork", "TestLVMSnapshotOverflow", "TestLVMProbeLV", "TestLVMThinMap",
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repo root %s: %v", root, err)
	}
	return root
}

// runScript runs a harness script with a deadline and returns its combined
// output.
func runScript(t *testing.T, timeout time.Duration, script string, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{script}, args...)...)
	cmd.Stdin = nil
	cmd.WaitDelay = 15 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("%s: %v", filepath.Base(script), time.Since(start).Round(100*time.Millisecond))
	return out, err
}

func TestLVMInQemu(t *testing.T) {
	console := bootGuest(t, "10,20,90", false)
	for _, p := range guestProblems(console, qemuGuestTests) {
		t.Error(p)
	}
}

// TestLVMClusterInQemu runs two forknode agents in the guest, one per
// volume group, and forks through the copy, stream and clone paths on real
// LVM (scenario 50-cluster-two-hosts).
func TestLVMClusterInQemu(t *testing.T) {
	console := bootGuest(t, "50,90", true)
	for _, p := range guestProblems(console, nil) {
		t.Error(p)
	}
	if !bytes.Contains(console, []byte("copy, stream and clone forks verified")) ||
		!bytes.Contains(console, []byte("=== SCENARIO 50-cluster-two-hosts END rc=0")) {
		t.Error("the two-host cluster scenario did not pass")
	}
	if !bytes.Contains(console, []byte("thick COW area reserved")) {
		t.Error("the thick host's snapshot reservation was not shown")
	}
	if !bytes.Contains(console, []byte("stream target restarted mid-stream resumed from its checkpoint on LVM")) {
		t.Error("the LVM stream target's resume after a kill -9 was not shown")
	}
	if !bytes.Contains(console, []byte("thin pool nearly full: no new work until it had room again")) {
		t.Error("the nearly-full thin pool guard was not shown")
	}
	// test.sh installs thin-provisioning-tools, so the guest has thin_dump
	// and the thin-to-thick stream must have used the thin map.
	if !bytes.Contains(console, []byte("thin map: the stream read 4 MiB of 32")) {
		t.Error("the thin-to-thick stream did not read through the thin map")
	}
}

// bootGuest builds (or reuses) the guest, builds the payload and boots it
// with the given scenarios, returning the serial console.
func bootGuest(t *testing.T, scenarios string, needBinary bool) []byte {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireCmd(t, "qemu-system-x86_64", "cpio", "depmod", "go")
	root := repoRoot(t)
	qdir := filepath.Join(root, "test", "e2e", "qemu")
	cache := filepath.Join(root, "test", "e2e", ".cache", "guest")

	// First build downloads the kernel package; later ones are cached.
	if out, err := runScript(t, 10*time.Minute, filepath.Join(qdir, "build-guest.sh"), cache); err != nil {
		t.Fatalf("build-guest.sh: %v\n%s", err, out)
	}
	work := t.TempDir()
	payload := filepath.Join(work, "payload.cpio")
	out, err := runScript(t, 5*time.Minute, filepath.Join(qdir, "build-payload.sh"), root, payload)
	t.Logf("build-payload.sh:\n%s", out)
	if err != nil {
		t.Fatalf("build-payload.sh: %v", err)
	}
	if needBinary && !bytes.Contains(out, []byte("forknode binary included")) {
		t.Fatalf("the forknode binary did not build, so the cluster scenario cannot run")
	}
	console, err := runScript(t, 8*time.Minute, filepath.Join(qdir, "boot-guest.sh"), cache, payload, filepath.Join(work, "run"), "420", scenarios)
	t.Logf("guest console:\n%s", guestSection(console))
	if err != nil {
		t.Errorf("boot-guest.sh: %v", err)
	}
	return console
}

// guestSection cuts the console down to the payload's output (firmware
// and kernel noise around it say nothing); all of it when a marker is
// missing.
func guestSection(console []byte) string {
	s := string(console)
	if i := strings.Index(s, "===FORKNODE-GUEST-BEGIN==="); i >= 0 {
		s = s[i:]
	}
	if i := strings.Index(s, "===FORKNODE-GUEST-END"); i >= 0 {
		if j := strings.Index(s[i:], "\n"); j >= 0 {
			s = s[:i+j]
		}
	}
	return s
}

var guestEndRE = regexp.MustCompile(`===FORKNODE-GUEST-END rc=(\d+)===`)

// guestProblems lists why a console does not show a passing guest run:
// no PASS marker, an end rc other than 0, a failing test, or a required
// test that did not pass. Empty means it passed.
func guestProblems(console []byte, required []string) []string {
	var out []string
	if !bytes.Contains(console, []byte("FORKNODE-GUEST-RESULT: PASS")) {
		out = append(out, "guest output lacks the PASS marker")
	}
	m := guestEndRE.FindSubmatch(console)
	if m == nil || string(m[1]) != "0" {
		out = append(out, fmt.Sprintf("guest did not end with rc=0 (end marker %q)", m))
	}
	if bytes.Contains(console, []byte("--- FAIL")) {
		out = append(out, "a guest test failed")
	}
	for _, name := range required {
		if !bytes.Contains(console, []byte("--- PASS: "+name+" ")) {
			out = append(out, "guest test "+name+" did not pass (skipped or missing)")
		}
	}
	return out
}

// TestGuestOutputCheck feeds guestProblems made-up consoles, so the
// assertions of TestLVMInQemu are known to be able to fail.
func TestGuestOutputCheck(t *testing.T) {
	var b strings.Builder
	b.WriteString("===FORKNODE-GUEST-BEGIN===\n")
	for _, n := range qemuGuestTests {
		b.WriteString("--- PASS: " + n + " (1.00s)\n")
	}
	b.WriteString("FORKNODE-GUEST-RESULT: PASS\n===FORKNODE-GUEST-END rc=0===\n")
	good := b.String()
	if p := guestProblems([]byte(good), qemuGuestTests); len(p) != 0 {
		t.Errorf("a passing console was rejected: %q", p)
	}
	bad := map[string]string{
		"no pass marker": strings.Replace(good, "RESULT: PASS", "RESULT: FAIL", 1),
		"rc 1":           strings.Replace(good, "rc=0", "rc=1", 1),
		"a failure":      good + "--- FAIL: TestX (0.00s)\n",
		"a skip":         strings.Replace(good, "--- PASS: TestLVMSnapshotOverflow", "--- SKIP: TestLVMSnapshotOverflow", 1),
		"empty":          "",
	}
	for name, c := range bad {
		if p := guestProblems([]byte(c), qemuGuestTests); len(p) == 0 {
			t.Errorf("console with %s was accepted", name)
		}
	}
}

// TestQemuHarnessScriptsParse syntax-checks every harness script with the
// shell that runs it (bash on the host, POSIX sh in the guest and VMs).
func TestQemuHarnessScriptsParse(t *testing.T) {
	qdir := filepath.Join(repoRoot(t), "test", "e2e", "qemu")
	scripts, err := filepath.Glob(filepath.Join(qdir, "*.sh"))
	if err != nil {
		t.Fatal(err)
	}
	more, _ := filepath.Glob(filepath.Join(qdir, "scenarios", "*.sh"))
	scripts = append(scripts, more...)
	if len(scripts) < 8 {
		t.Fatalf("found only %d scripts in %s", len(scripts), qdir)
	}
	for _, s := range scripts {
		data, err := os.ReadFile(s)
		if err != nil {
			t.Fatal(err)
		}
		shell := "sh"
		if bytes.HasPrefix(data, []byte("#!/usr/bin/env bash")) {
			shell = "bash"
		}
		if out, err := exec.Command(shell, "-n", s).CombinedOutput(); err != nil {
			t.Errorf("%s -n %s: %v\n%s", shell, filepath.Base(s), err, out)
		}
	}
}

// TestVagrantfileValidates runs `vagrant validate` where Vagrant is
// installed; it is an optional tool, so elsewhere the test skips (also
// under CI).
func TestVagrantfileValidates(t *testing.T) {
	if _, err := exec.LookPath("vagrant"); err != nil {
		t.Skip("vagrant is not installed; the Vagrantfile is checked only where it is")
	}
	cmd := exec.Command("vagrant", "validate")
	cmd.Dir = repoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("vagrant validate: %v\n%s", err, out)
	}
}
