package main

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"testing"

	"github.com/forknode/forknode/internal/testutil"
)

// freeBase finds a base port whose dev layout (P..P+22) is free right now.
func freeBase(t *testing.T) int {
	for try := 0; try < 50; try++ {
		base := 20000 + rand.IntN(30000)
		ok := true
		for i := 0; i < 3 && ok; i++ {
			a, g, c := devAddrs(base, i)
			for _, addr := range []string{a, g, c} {
				l, err := net.Listen("tcp", addr)
				if err != nil {
					ok = false
					break
				}
				l.Close()
			}
		}
		if ok {
			return base
		}
	}
	t.Fatal("no free port range for the dev cluster")
	return 0
}

// The demo is the whole system on one machine: three nodes, file backends,
// every fork path the filesystem allows, each fork verified byte for byte.
func TestDevDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster")
	}
	base := freeBase(t)
	code, out, errOut := capture(t, "dev", "--demo", "--dir", t.TempDir(), "--base-port", fmt.Sprint(base))
	if code != 0 {
		t.Fatalf("dev --demo exited %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	for _, want := range []string{"export FORKNODE_ADDR=", "demo-copy", "demo-stream", "demo-replica", "all forks verified"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(out, "ok: verified byte for byte") < 4 {
		t.Errorf("fewer than 4 verified forks:\n%s", out)
	}
}

// On XFS with reflink the demo also takes the O(1) clone path.
func TestDevDemoXFSClone(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster")
	}
	testutil.RequireRoot(t)
	testutil.RequireCmd(t, "mkfs.xfs")
	dir := testutil.LoopFS(t, "xfs", 2<<30, "-m", "reflink=1")
	code, out, errOut := capture(t, "dev", "--demo", "--dir", dir, "--base-port", fmt.Sprint(freeBase(t)))
	if code != 0 {
		t.Fatalf("dev --demo on XFS exited %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	if strings.Count(out, "ok: verified byte for byte") != 5 || strings.Contains(out, "skipped") {
		t.Errorf("want all 5 paths incl. clone verified:\n%s", out)
	}
}

func TestDemoPattern(t *testing.T) {
	zero := func(b []byte) bool {
		for _, x := range b {
			if x != 0 {
				return false
			}
		}
		return true
	}
	for i := 0; i < 8; i++ {
		b, write := demoPattern(i)
		switch i % 4 {
		case 0:
			if write || !zero(b) {
				t.Errorf("block %d: want an unwritten hole", i)
			}
		case 1:
			if !write || zero(b[:demoBlock/2]) || zero(b[demoBlock/2:]) {
				t.Errorf("block %d: want full data", i)
			}
		case 2:
			if !write || !zero(b) {
				t.Errorf("block %d: want written zeros", i)
			}
		case 3:
			if !write || zero(b[:demoBlock/2]) || !zero(b[demoBlock/2:]) {
				t.Errorf("block %d: want half data", i)
			}
		}
	}
	a, _ := demoPattern(5)
	b, _ := demoPattern(5)
	if string(a) != string(b) {
		t.Error("pattern is not deterministic")
	}
}
