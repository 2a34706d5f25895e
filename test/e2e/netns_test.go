package e2e

// Helpers for whole-binary tests of hosts in network namespaces.
//
// Topology: one hub namespace holding a bridge, and N host namespaces, each
// with a veth pair whose other end is enslaved to the hub's bridge. Hosts
// get 10.213.0.(10+i)/24. Everything lives inside namespaces this test run
// created (names start with fn<pid>), nothing is added to the root
// namespace, and t.Cleanup kills the agents it started (by PID) and deletes
// every namespace, pass or fail.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/api"
	"golang.org/x/sys/unix"
)

var (
	binDir   string
	binOnce  sync.Once
	binPath  string
	binError error
)

func TestMain(m *testing.M) {
	d, err := os.MkdirTemp("", "forknode-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: temp dir:", err)
		os.Exit(1)
	}
	binDir = d
	code := m.Run()
	os.RemoveAll(d)
	os.Exit(code)
}

// forknodeBin builds ./cmd/forknode once per test binary (lazily, so tiers
// that skip do not pay for the build) and returns its path.
func forknodeBin(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(goBin); err != nil {
			goBin = "go"
		}
		out := filepath.Join(binDir, "forknode")
		cmd := exec.Command(goBin, "build", "-o", out, "github.com/forknode/forknode/cmd/forknode")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			binError = fmt.Errorf("go build ./cmd/forknode: %v\n%s", err, b)
			return
		}
		binPath = out
	})
	if binError != nil {
		t.Fatal(binError)
	}
	return binPath
}

// netEnv is one test's set of namespaces.
type netEnv struct {
	t      *testing.T
	prefix string
	hub    string
	hosts  []*nsHost
}

// nsHost is one host namespace.
type nsHost struct {
	env   *netEnv
	Index int
	NS    string
	IP    string
	Dev   string // interface inside NS

	mu     sync.Mutex
	agents []*agentProc
}

// agentProc is a forknode agent started in a namespace.
type agentProc struct {
	Cmd  *exec.Cmd
	Log  string
	Args []string
	done chan struct{}
	err  error
}

var nsSeq struct {
	sync.Mutex
	n int
}

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// newNetEnv creates the hub and n hosts.
func newNetEnv(t *testing.T, n int) *netEnv {
	t.Helper()
	nsSeq.Lock()
	nsSeq.n++
	seq := nsSeq.n
	nsSeq.Unlock()
	e := &netEnv{t: t, prefix: fmt.Sprintf("fn%d-%d", os.Getpid(), seq)}
	e.hub = e.prefix + "-hub"
	t.Cleanup(e.teardown)
	must := func(args ...string) {
		t.Helper()
		if err := ipCmd(args...); err != nil {
			t.Fatal(err)
		}
	}
	must("netns", "add", e.hub)
	must("-n", e.hub, "link", "set", "lo", "up")
	must("-n", e.hub, "link", "add", "br0", "type", "bridge")
	must("-n", e.hub, "link", "set", "br0", "up")
	for i := 0; i < n; i++ {
		h := &nsHost{env: e, Index: i, NS: fmt.Sprintf("%s-h%d", e.prefix, i), IP: fmt.Sprintf("10.213.0.%d", 10+i), Dev: "eth0"}
		peer := fmt.Sprintf("vh%d", i)
		must("netns", "add", h.NS)
		e.hosts = append(e.hosts, h)
		must("-n", h.NS, "link", "set", "lo", "up")
		// Both ends are created inside our namespaces: nothing ever appears
		// in the root namespace.
		must("-n", h.NS, "link", "add", h.Dev, "type", "veth", "peer", "name", peer, "netns", e.hub)
		must("-n", e.hub, "link", "set", peer, "master", "br0")
		must("-n", e.hub, "link", "set", peer, "up")
		must("-n", h.NS, "addr", "add", h.IP+"/24", "dev", h.Dev)
		must("-n", h.NS, "link", "set", h.Dev, "up")
	}
	return e
}

func (e *netEnv) teardown() {
	for _, h := range e.hosts {
		h.killAll()
	}
	for _, h := range e.hosts {
		if err := ipCmd("netns", "del", h.NS); err != nil {
			e.t.Logf("cleanup: %v", err)
		}
	}
	if err := ipCmd("netns", "del", e.hub); err != nil {
		e.t.Logf("cleanup: %v", err)
	}
}

// Exec runs a command inside the host's namespace and returns its combined
// output.
func (h *nsHost) Exec(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), h.NS, err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// StartAgent runs `forknode agent args...` in the namespace. Its log goes to
// a file under logDir, printed when the test fails.
func (h *nsHost) StartAgent(bin, logDir string, args ...string) *agentProc {
	t := h.env.t
	t.Helper()
	h.mu.Lock()
	n := len(h.agents)
	h.mu.Unlock()
	logPath := filepath.Join(logDir, fmt.Sprintf("agent-h%d-%d.log", h.Index, n))
	lf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	// `nsenter --net` setns()es and then execs the binary: the PID we get is
	// the agent's own, so kill -9 hits the agent. Unlike `ip netns exec` it
	// keeps the test's mount namespace, so the agent sees (and can freeze)
	// filesystems the test mounts later, and holds none of them itself.
	cmd := exec.Command("nsenter", append([]string{"--net=/var/run/netns/" + h.NS, bin, "agent"}, args...)...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		t.Fatalf("start agent in %s: %v", h.NS, err)
	}
	a := &agentProc{Cmd: cmd, Log: logPath, Args: args, done: make(chan struct{})}
	go func() {
		a.err = cmd.Wait()
		lf.Close()
		close(a.done)
	}()
	h.mu.Lock()
	h.agents = append(h.agents, a)
	h.mu.Unlock()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- agent log %s (%s), without API request lines ----\n%s", logPath, h.NS, pgLogExcerpt(logPath, 16<<10, 32<<10))
		}
	})
	return a
}

// Kill sends sig to the agent (by PID) and waits for it to exit.
func (a *agentProc) Kill(sig syscall.Signal) {
	select {
	case <-a.done:
		return
	default:
	}
	_ = a.Cmd.Process.Signal(sig)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		_ = a.Cmd.Process.Kill()
		<-a.done
	}
}

// Exited reports whether the agent process ended.
func (a *agentProc) Exited() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

func (h *nsHost) killAll() {
	h.mu.Lock()
	agents := append([]*agentProc(nil), h.agents...)
	h.mu.Unlock()
	for _, a := range agents {
		a.Kill(syscall.SIGKILL)
	}
}

// LinkDown cuts the host off the bridge; LinkUp restores it.
func (h *nsHost) LinkDown() error { return ipCmd("-n", h.NS, "link", "set", h.Dev, "down") }
func (h *nsHost) LinkUp() error   { return ipCmd("-n", h.NS, "link", "set", h.Dev, "up") }

// DialContext opens a TCP connection from inside the host's namespace.
func (h *nsHost) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	var derr error
	err := inNetns(h.NS, func() {
		var d net.Dialer
		c, derr = d.DialContext(ctx, network, addr)
	}, func() {
		if c != nil {
			c.Close()
		}
	})
	if err != nil {
		return nil, err
	}
	return c, derr
}

// inNetns runs fn on an OS thread switched into namespace ns; sockets fn
// creates keep that namespace after the thread switches back. If switching
// back fails, undo runs (to close what fn made) and the thread stays locked,
// so Go discards it when the goroutine exits.
func inNetns(ns string, fn, undo func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		restored, err := setnsRun(ns, fn)
		if !restored {
			undo()
		} else {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

func setnsRun(ns string, fn func()) (restored bool, err error) {
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return true, err
	}
	defer orig.Close()
	target, err := os.Open(filepath.Join("/var/run/netns", ns))
	if err != nil {
		return true, err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return true, fmt.Errorf("setns %s: %w", ns, err)
	}
	fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		return false, fmt.Errorf("setns back: %w", err)
	}
	return true, nil
}

// HTTPClient is an http.Client whose connections start in this namespace.
func (h *nsHost) HTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: h.Transport()}
}

// Transport dials from inside this namespace.
func (h *nsHost) Transport() *http.Transport {
	return &http.Transport{DialContext: h.DialContext, DisableKeepAlives: true}
}

// APIClient is a typed client for addr, dialing from this namespace.
func (h *nsHost) APIClient(t testing.TB, addr, token string) *api.Client {
	t.Helper()
	c, err := api.NewClient(addr, token)
	if err != nil {
		t.Fatal(err)
	}
	c.SetTransport(h.Transport())
	c.Timeout = 20 * time.Second
	return c
}
