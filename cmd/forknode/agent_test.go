package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// An operator's --pace-probe that names someone's file stops the agent at
// start (and leaves the file alone) instead of pacing on CPU alone.
func TestAgentRefusesForeignPaceProbe(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "k")
	if code, _, errOut := capture(t, "keygen", "-o", key); code != 0 {
		t.Fatalf("keygen: %s", errOut)
	}
	notes := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(notes, []byte("remember the milk\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := capture(t, "agent", "--key", key, "--name", "x", "--data-dir", filepath.Join(dir, "d"),
		"--volume-dir", filepath.Join(dir, "v"), "--gossip-addr", "127.0.0.1:0", "--cluster-addr", "127.0.0.1:0",
		"--api-addr", "127.0.0.1:0", "--bootstrap-expect", "1", "--pace-probe", notes)
	if code != 2 || !strings.Contains(errOut, "--pace-probe "+notes) || !strings.Contains(errOut, "holds data a probe did not write") {
		t.Fatalf("agent with a foreign probe: code %d\n%s", code, errOut)
	}
	if b, _ := os.ReadFile(notes); string(b) != "remember the milk\n" {
		t.Fatalf("the file was changed: %q", b)
	}
}
