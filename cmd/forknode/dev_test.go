package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/api"
	"github.com/forknode/forknode/internal/cluster"
	"github.com/forknode/forknode/internal/keys"
	"github.com/forknode/forknode/internal/testutil"
	"github.com/hashicorp/go-hclog"
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
	dir := t.TempDir()
	// A second run on the same dir starts over from the first one's state,
	// on the ports the dir was made with (raft remembers its peers'
	// addresses) though --base-port is not given again.
	for run := 1; run <= 2; run++ {
		args := []string{"dev", "--demo", "--dir", dir}
		if run == 1 {
			args = append(args, "--base-port", fmt.Sprint(base))
		}
		code, out, errOut := capture(t, args...)
		if code != 0 {
			t.Fatalf("run %d: dev --demo exited %d\nstdout:\n%s\nstderr:\n%s", run, code, out, errOut)
		}
		for _, want := range []string{fmt.Sprintf("export FORKNODE_ADDR=http://127.0.0.1:%d ", base), "demo-copy", "demo-stream", "demo-replica", "all forks verified"} {
			if !strings.Contains(out, want) {
				t.Errorf("run %d: output lacks %q:\n%s", run, want, out)
			}
		}
		if strings.Count(out, "ok: verified byte for byte") < 4 {
			t.Errorf("run %d: fewer than 4 verified forks:\n%s", run, out)
		}
		if removed := strings.Contains(out, "removed the volumes of an earlier demo"); removed != (run == 2) {
			t.Errorf("run %d: removal of an earlier demo's volumes reported: %v\n%s", run, removed, out)
		}
	}
}

// A start that fails (a port taken) takes back what it created in the dir,
// and only that.
func TestDevFailedStartCleansUp(t *testing.T) {
	base := freeBase(t)
	apiAddr, _, _ := devAddrs(base, 0)
	l, err := net.Listen("tcp", apiAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	root := t.TempDir()
	fresh := filepath.Join(root, "a", "b")
	empty := filepath.Join(root, "empty")
	used := filepath.Join(root, "used")
	for _, d := range []string{empty, used} {
		if err := os.Mkdir(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(used, "keep"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{fresh, empty, used} {
		code, _, errOut := capture(t, "dev", "--dir", dir, "--base-port", fmt.Sprint(base))
		if code != 1 || !strings.Contains(errOut, "try --base-port") {
			t.Fatalf("dev --dir %s with its port taken: %d %s", dir, code, errOut)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "a")); !os.IsNotExist(err) {
		t.Errorf("a dir the failed start created is still there: %v", err)
	}
	if entries, _ := os.ReadDir(empty); len(entries) != 0 {
		t.Errorf("an empty dir kept %d entries", len(entries))
	}
	if _, err := os.Stat(filepath.Join(used, "keep")); err != nil {
		t.Errorf("a file that was there before went: %v", err)
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

// startDevCluster starts dev's three nodes in a new directory on free
// ports. stop closes them, once, and runs at the end of the test anyway.
func startDevCluster(t *testing.T) (dir string, base int, km *keys.Material, nodes []*cluster.Node, stop func()) {
	t.Helper()
	base = freeBase(t)
	dir = t.TempDir()
	km, err := devKey(filepath.Join(dir, "cluster.key"))
	if err != nil {
		t.Fatal(err)
	}
	nodes, err = startDev(dir, base, km, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err) // startDev closed what it had started
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			for i := len(nodes) - 1; i >= 0; i-- {
				nodes[i].Close()
			}
		})
	}
	t.Cleanup(stop)
	return dir, base, km, nodes, stop
}

// After `forknode token revoke cluster` in a dev directory, dev prints a
// token it issued instead of the revoked one, and the demo runs with it.
func TestDevAfterClusterTokenRevoked(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster twice")
	}
	dir, base, km, nodes, closeAll := startDevCluster(t)
	tok, note, err := devToken(nodes[0], km, time.Now())
	if err != nil || tok != km.APIToken() || note != "" {
		t.Fatalf("before revocation: token is the cluster token %v, note %q, err %v", tok == km.APIToken(), note, err)
	}
	c, err := api.NewClient(nodes[1].APIAddr(), km.APIToken())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.RevokeToken(context.Background(), keys.ClusterTokenID, 0); err != nil {
		t.Fatal(err)
	}
	tok, note, err = devToken(nodes[0], km, time.Now())
	if err != nil || tok == km.APIToken() || !strings.Contains(note, "revoked") {
		t.Fatalf("after revocation: token is the cluster token %v, note %q, err %v", tok == km.APIToken(), note, err)
	}
	if cl, err := nodes[2].VerifyToken(tok); err != nil || cl.Scope != keys.ScopeAdmin {
		t.Fatalf("dev's issued token: %+v %v", cl, err)
	}
	closeAll()

	// A restart learns of the revocation from its log, and the demo works.
	code, out, errOut := capture(t, "dev", "--demo", "--dir", dir, "--base-port", fmt.Sprint(base))
	if code != 0 {
		t.Fatalf("dev --demo after revoking the cluster token exited %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	if !strings.Contains(out, "cluster token is revoked") || strings.Contains(out, "FORKNODE_TOKEN="+km.APIToken()) {
		t.Errorf("dev printed the revoked cluster token or no note:\n%s", out)
	}
}

// A host name the cluster does not have, wherever a command takes one, is
// refused with the names it has (under the API's not_found code, exit 1),
// so the typo and its fix are in one message.
func TestUnknownHostListsHosts(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster")
	}
	_, _, km, nodes, _ := startDevCluster(t)
	c, err := api.NewClient(nodes[0].APIAddr(), km.APIToken())
	if err != nil {
		t.Fatal(err)
	}
	if err := waitCluster(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FORKNODE_ADDR", nodes[0].APIAddr())
	t.Setenv("FORKNODE_TOKEN", km.APIToken())
	if code, out, errOut := capture(t, "volume", "create", "db", "--size", "1MiB", "--wait"); code != 0 {
		t.Fatalf("volume create db: exit %d\n%s%s", code, out, errOut)
	}
	const hosts = `"nosuch" (hosts: dev1, dev2, dev3)`
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"volume", "create", "pr", "--size", "1MiB", "--host", "nosuch"}, "not found: volume pr: host " + hosts},
		{[]string{"fork", "db", "pr", "--host", "nosuch"}, "not found: target host " + hosts},
		{[]string{"fork", "db", "pr", "--via", "stream", "--host", "nosuch", "--wait"}, "not found: target host " + hosts},
		{[]string{"node", "rm", "nosuch"}, `not found: no node named "nosuch" (not a raft server, a catalog host or a gossip member; nodes: dev1, dev2, dev3)`},
	} {
		code, out, errOut := capture(t, tc.args...)
		if code != 1 || out != "" || !strings.Contains(errOut, "forknode: "+tc.msg+"\n") {
			t.Errorf("forknode %v: exit %d, want 1 with %q\nstdout: %s\nstderr: %s", tc.args, code, tc.msg, out, errOut)
		}
		code, out, _ = capture(t, append(tc.args, "--json")...)
		var e jsonError
		if err := json.Unmarshal([]byte(out), &e); code != 1 || err != nil || e.Code != api.CodeNotFound || e.Status != 404 || !strings.Contains(e.Error, tc.msg) {
			t.Errorf("forknode %v --json: exit %d, %+v, %v\n%s", tc.args, code, e, err, out)
		}
	}
}
