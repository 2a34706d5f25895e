package e2e

// Helpers for the stream-fault and security acceptance tests
// (stream_faults_test.go, security_test.go): a small cluster of agents in
// namespaces with per-node flags, direct access to each node's file-backend
// volume directory, log scraping, and listening sockets inside a namespace.
// They build on netns_test.go (namespaces, agents, dialing) without changing it.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/api"
	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/keys"
	"github.com/forknode/forknode/internal/testutil"
)

// faultCluster is n agents (node i in namespace host i) sharing one key.
// The env may hold more namespaces than agents (proxies, foreign agents).
type faultCluster struct {
	t      *testing.T
	env    *netEnv
	bin    string
	dir    string
	logs   string
	key    string
	token  string
	n      int
	args   [][]string
	agents []*agentProc
	// apiTLS verifies agents started with --api-tls (nil: plain HTTP).
	apiTLS *tls.Config
}

// faultOpts configures startFaultCluster.
type faultOpts struct {
	nodes      int                  // agents (bootstrap-expect = nodes)
	namespaces int                  // namespaces (≥ nodes); extras stay empty
	extra      func(i int) []string // per-node extra agent flags
	apiTLS     bool                 // agents serve the API with --api-tls
}

func startFaultCluster(t *testing.T, o faultOpts) *faultCluster {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireCmd(t, "ip", "nsenter")
	if o.namespaces < o.nodes {
		o.namespaces = o.nodes
	}
	start := time.Now()
	c := &faultCluster{t: t, bin: forknodeBin(t), dir: t.TempDir(), logs: t.TempDir(), n: o.nodes}
	c.env = newNetEnv(t, o.namespaces)
	c.key = filepath.Join(c.dir, "cluster.key")
	if out, err := runRoot(c.bin, "keygen", "-o", c.key); err != nil {
		t.Fatalf("keygen: %v: %s", err, out)
	}
	tok, err := runRoot(c.bin, "token", "--key", c.key)
	if err != nil {
		t.Fatalf("token: %v: %s", err, tok)
	}
	c.token = strings.TrimSpace(tok)
	if o.apiTLS {
		m, err := keys.Load(c.key)
		if err != nil {
			t.Fatal(err)
		}
		if c.apiTLS, err = keys.APIClientTLS(m.CAPEM()); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < o.nodes; i++ {
		h := c.env.hosts[i]
		args := []string{
			"--name", c.name(i), "--data-dir", c.dataDir(i),
			"--gossip-addr", h.IP + ":7946", "--cluster-addr", h.IP + ":7947", "--api-addr", h.IP + ":7948",
			"--bootstrap-expect", strconv.Itoa(o.nodes), "--region", "r1",
			"--key", c.key, "--log-level", "debug",
		}
		// Every node names all the others, as in a real deployment, so
		// that a node restarted with the same flags finds its peers
		// (joining retries until one answers).
		var join []string
		for k := 0; k < o.nodes; k++ {
			if k != i {
				join = append(join, c.gossipAddr(k))
			}
		}
		if len(join) > 0 {
			args = append(args, "--join", strings.Join(join, ","))
		}
		if o.extra != nil {
			args = append(args, o.extra(i)...)
		}
		if o.apiTLS {
			args = append(args, "--api-tls")
		}
		c.args = append(c.args, args)
		c.agents = append(c.agents, h.StartAgent(c.bin, c.logs, args...))
	}
	c.waitUp(60 * time.Second)
	t.Logf("%d-node cluster up after %s", o.nodes, time.Since(start).Round(time.Millisecond))
	return c
}

func (c *faultCluster) name(i int) string { return fmt.Sprintf("n%d", i) }
func (c *faultCluster) ip(i int) string   { return c.env.hosts[i].IP }
func (c *faultCluster) apiAddr(i int) string {
	if c.apiTLS != nil {
		return "https://" + c.ip(i) + ":7948"
	}
	return "http://" + c.ip(i) + ":7948"
}
func (c *faultCluster) gossipAddr(i int) string  { return c.ip(i) + ":7946" }
func (c *faultCluster) clusterAddr(i int) string { return c.ip(i) + ":7947" }
func (c *faultCluster) dataDir(i int) string     { return filepath.Join(c.dir, c.name(i)) }
func (c *faultCluster) volDir(i int) string      { return filepath.Join(c.dataDir(i), "volumes") }
func (c *faultCluster) imgPath(i int, id string) string {
	return filepath.Join(c.volDir(i), id+".img")
}

// client talks to node i from inside its own namespace.
func (c *faultCluster) client(i int) *api.Client {
	cl := c.env.hosts[i].APIClient(c.t, c.apiAddr(i), c.token)
	if c.apiTLS != nil {
		tr := c.env.hosts[i].Transport()
		tr.TLSClientConfig = c.apiTLS
		cl.SetTransport(tr)
	}
	return cl
}

// waitUp waits for an agreed leader and all nodes alive in the catalog.
func (c *faultCluster) waitUp(timeout time.Duration) {
	c.t.Helper()
	ctx := context.Background()
	testutil.Eventually(c.t, timeout, "agreed leader and all hosts alive", func() bool {
		leader := ""
		for i := 0; i < c.n; i++ {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			st, err := c.client(i).Status(cctx)
			cancel()
			if err != nil || st.Leader == "" || (leader != "" && st.Leader != leader) {
				time.Sleep(100 * time.Millisecond)
				return false
			}
			leader = st.Leader
			if i == 0 {
				alive := 0
				for _, h := range st.Hosts {
					if h.Alive {
						alive++
					}
				}
				if alive != c.n {
					time.Sleep(100 * time.Millisecond)
					return false
				}
			}
		}
		return true
	})
}

// restart starts node i again with its original flags (same data dir).
func (c *faultCluster) restart(i int) {
	c.agents[i] = c.env.hosts[i].StartAgent(c.bin, c.logs, c.args[i]...)
}

// cli runs the forknode CLI in node i's namespace against node i.
func (c *faultCluster) cli(ctx context.Context, i int, args ...string) (string, error) {
	args = append(args, "--addr", c.apiAddr(i), "--token-file", c.key)
	return c.env.hosts[i].Exec(ctx, c.bin, args...)
}

// createVolume makes a ready volume of size bytes on node host.
func (c *faultCluster) createVolume(name string, size int64, host int) *api.Volume {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	v, err := c.client(host).CreateVolume(ctx, api.CreateVolumeRequest{Name: name, Size: size, Host: c.name(host)}, true)
	if err != nil || v.State != fsm.VolumeReady {
		c.t.Fatalf("create volume %s on %s: %v %+v", name, c.name(host), err, v)
	}
	return v
}

// fillImage writes size bytes of seeded pseudo-random data (incompressible)
// straight into a volume's image file on node i. The volume is not attached
// and no fork of it runs, so the file is the volume. block, if non-nil,
// may overwrite each 1 MiB block before it is written (markers).
func (c *faultCluster) fillImage(i int, id string, size int64, seed uint64, block func(n int, b []byte)) {
	c.t.Helper()
	f, err := os.OpenFile(c.imgPath(i, id), os.O_WRONLY, 0)
	if err != nil {
		c.t.Fatalf("open image: %v", err)
	}
	defer f.Close()
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), 0xfa, 0x17})
	buf := make([]byte, mib)
	for off, n := int64(0), 0; off < size; off, n = off+mib, n+1 {
		_, _ = r.Read(buf)
		if block != nil {
			block(n, buf)
		}
		if _, err := f.WriteAt(buf[:min(mib, size-off)], off); err != nil {
			c.t.Fatalf("write image: %v", err)
		}
	}
	if err := f.Sync(); err != nil {
		c.t.Fatalf("fsync image: %v", err)
	}
}

// ftFileDigest is the SHA-256 of a whole file.
func ftFileDigest(t testing.TB, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	var d [32]byte
	copy(d[:], h.Sum(nil))
	return d
}

// ftSameImage fails the test unless the two image files hold equal bytes.
func ftSameImage(t testing.TB, a, b string) {
	t.Helper()
	sa, err := os.Stat(a)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := os.Stat(b)
	if err != nil {
		t.Fatal(err)
	}
	if sa.Size() != sb.Size() {
		t.Fatalf("%s is %d bytes, %s is %d", a, sa.Size(), b, sb.Size())
	}
	if ftFileDigest(t, a) != ftFileDigest(t, b) {
		t.Fatalf("%s and %s differ", a, b)
	}
}

// ftFilesFor lists the files in dir whose names contain id (image, metadata,
// temp files).
func ftFilesFor(dir, id string) []string {
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		if strings.Contains(e.Name(), id) {
			out = append(out, e.Name())
		}
	}
	return out
}

// startFork asks node via for a fork and returns it.
func (c *faultCluster) startFork(via int, req api.CreateForkRequest) *api.Fork {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f, err := c.client(via).CreateFork(ctx, req, "")
	if err != nil {
		c.t.Fatalf("fork %+v: %v", req, err)
	}
	return f
}

// fork reads a fork through node via (nil on error).
func (c *faultCluster) fork(via int, id string) *api.Fork {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	f, err := c.client(via).Fork(ctx, id)
	if err != nil {
		return nil
	}
	return f
}

// waitFinished polls node via until the fork is ready or failed.
func (c *faultCluster) waitFinished(via int, id string, timeout time.Duration) *api.Fork {
	c.t.Helper()
	var last *api.Fork
	testutil.Eventually(c.t, timeout, "fork "+id+" finished", func() bool {
		if f := c.fork(via, id); f != nil {
			last = f
		}
		if last != nil && last.Finished() {
			return true
		}
		time.Sleep(100 * time.Millisecond)
		return false
	})
	return last
}

// waitProgress polls until the fork has done at least done bytes (and is
// still running).
func (c *faultCluster) waitProgress(via int, id string, done int64, timeout time.Duration) *api.Fork {
	c.t.Helper()
	var last *api.Fork
	testutil.Eventually(c.t, timeout, fmt.Sprintf("fork %s past %d bytes", id, done), func() bool {
		if f := c.fork(via, id); f != nil {
			last = f
			if f.Finished() {
				c.t.Fatalf("fork %s finished (%s %s) before the fault could be injected", id, f.State, f.Error)
			}
			if f.BytesDone >= done {
				return true
			}
		}
		time.Sleep(50 * time.Millisecond)
		return false
	})
	return last
}

// logText is everything node i's agents (all restarts) logged.
func (c *faultCluster) logText(i int) string {
	var b bytes.Buffer
	for n := 0; ; n++ {
		data, err := os.ReadFile(filepath.Join(c.logs, fmt.Sprintf("agent-h%d-%d.log", i, n)))
		if err != nil {
			break
		}
		b.Write(data)
	}
	return b.String()
}

// logLines returns node i's log lines containing substr.
func (c *faultCluster) logLines(i int, substr string) []string {
	var out []string
	for _, l := range strings.Split(c.logText(i), "\n") {
		if strings.Contains(l, substr) {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return out
}

var ftStreamCompleteRE = regexp.MustCompile(`stream complete.*fork=(\S+).*bytes=(\d+).*wire=(\d+).*resent=(\d+).*reconnects=(\d+)`)

// streamStats is the target executor's "stream complete" log line.
type streamStats struct {
	Bytes, Wire, Resent int64
	Reconnects          int
	Line                string
}

// streamComplete finds the "stream complete" line for fork id in node i's log.
func (c *faultCluster) streamComplete(i int, id string) (streamStats, bool) {
	for _, line := range strings.Split(c.logText(i), "\n") {
		m := ftStreamCompleteRE.FindStringSubmatch(line)
		if m == nil || m[1] != id {
			continue
		}
		var s streamStats
		s.Bytes, _ = strconv.ParseInt(m[2], 10, 64)
		s.Wire, _ = strconv.ParseInt(m[3], 10, 64)
		s.Resent, _ = strconv.ParseInt(m[4], 10, 64)
		s.Reconnects, _ = strconv.Atoi(m[5])
		s.Line = strings.TrimSpace(line)
		return s, true
	}
	return streamStats{}, false
}

// ftListenNetns opens a listening TCP socket inside namespace ns (the socket
// keeps its namespace after the thread switches back).
func ftListenNetns(ns, addr string) (net.Listener, error) {
	var l net.Listener
	var lerr error
	err := inNetns(ns, func() { l, lerr = net.Listen("tcp", addr) }, func() {
		if l != nil {
			l.Close()
		}
	})
	if err != nil {
		return nil, err
	}
	return l, lerr
}

func (c *faultCluster) indexOf(name string) int {
	for i := 0; i < c.n; i++ {
		if c.name(i) == name {
			return i
		}
	}
	c.t.Fatalf("unknown node %q", name)
	return -1
}

// ftDNATVia makes node from's new connections to node to's cluster port go
// to namespace proxy's port 7947 instead (nft DNAT in from's output hook).
// The table lives in from's namespace and goes with it.
func ftDNATVia(t *testing.T, c *faultCluster, from, to, proxy int) {
	t.Helper()
	rules := fmt.Sprintf(`table ip fnflip {
	chain out {
		type nat hook output priority -100; policy accept;
		ip daddr %s tcp dport 7947 dnat to %s:7947
	}
}
`, c.ip(to), c.env.hosts[proxy].IP)
	rulesFile := filepath.Join(t.TempDir(), "flip.nft")
	if err := os.WriteFile(rulesFile, []byte(rules), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := c.env.hosts[from].Exec(context.Background(), "nft", "-f", rulesFile); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
}
