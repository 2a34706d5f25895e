package e2e

// Helpers for the PostgreSQL tier (pg_test.go): loop-mounted volume
// filesystems per host, agents that share the test's mount namespace, real
// PostgreSQL servers on forknode volumes, a gap-free ledger workload, and a
// leak check that compares every host's catalog with what is really on
// disk.
//
// Why nsenter and not `ip netns exec` for these agents: `ip netns exec`
// unshares a new mount namespace for the command, and on this machine the
// root mount is private (no "shared:" tag in /proc/self/mountinfo), so a
// mount made by the test after the agent started (PostgreSQL's data mount on
// an attached volume) is invisible to the agent. The file backend looks a
// source device up in /proc/self/mountinfo to FIFREEZE it during a live
// snapshot; an agent in another mount namespace would not find the mount
// and would only flush the loop device of a live, mounted filesystem.
// `nsenter --net=/var/run/netns/NS` switches only the network namespace, so
// the agent sees the test's mounts. nsenter does not fork when it enters no
// PID namespace: the PID we get is the agent's.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/api"
	"github.com/forknode/forknode/internal/testutil"
)

// pgBinDir holds the PostgreSQL 15 server binaries (Debian layout).
const pgBinDir = "/usr/lib/postgresql/15/bin"

func pgTool(name string) string { return filepath.Join(pgBinDir, name) }

// requirePG skips (or fails under CI=true) when the tier cannot run.
func requirePG(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireCmd(t, "ip", "nsenter", "losetup", "mount", "umount", "mkfs.xfs", "mkfs.ext4",
		pgTool("postgres"), pgTool("initdb"), pgTool("pg_amcheck"), pgTool("pg_checksums"),
		pgTool("pgbench"), pgTool("psql"), pgTool("pg_isready"))
}

// run runs a command in the test's own namespaces and returns its combined
// output; the error carries the output.
func pgRun(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// pgBaseDir makes a directory the postgres user can traverse (t.TempDir is
// 0700 root) and removes it at the end.
func pgBaseDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "fnpg-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// ---- loop-mounted filesystems ----------------------------------------------

// pgLoopFS is a filesystem on a sparse image file on a loop device, mounted
// at Mnt. Everything is undone in t.Cleanup, pass or fail.
type pgLoopFS struct {
	Img, Dev, Mnt string
}

// newPGLoopFS creates and mounts a size-byte filesystem of type fstype
// ("xfs" with reflink, or "ext4").
func newPGLoopFS(t *testing.T, dir, name string, size int64, fstype string) *pgLoopFS {
	t.Helper()
	ctx := context.Background()
	fs := &pgLoopFS{Img: filepath.Join(dir, name+".fsimg"), Mnt: filepath.Join(dir, name)}
	f, err := os.Create(fs.Img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		t.Fatal(err)
	}
	f.Close()
	out, err := pgRun(ctx, "losetup", "--find", "--show", fs.Img)
	if err != nil {
		t.Fatal(err)
	}
	fs.Dev = strings.TrimSpace(out)
	t.Cleanup(func() { fs.teardown(t) })
	switch fstype {
	case "xfs":
		_, err = pgRun(ctx, "mkfs.xfs", "-q", "-f", "-m", "reflink=1", fs.Dev)
	case "ext4":
		_, err = pgRun(ctx, "mkfs.ext4", "-q", "-F", fs.Dev)
	default:
		err = fmt.Errorf("unknown fs type %q", fstype)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(fs.Mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := pgRun(ctx, "mount", fs.Dev, fs.Mnt); err != nil {
		t.Fatal(err)
	}
	return fs
}

// teardown unmounts whatever still uses loop devices backed by files under
// the filesystem (volumes the agents attached, PostgreSQL mounts on them),
// detaches those devices, then unmounts and detaches the filesystem.
func (fs *pgLoopFS) teardown(t *testing.T) {
	for _, l := range pgLoopsUnder(fs.Mnt) {
		for _, m := range l.Mounts {
			pgUmount(m)
		}
		if out, err := exec.Command("losetup", "-d", l.Dev).CombinedOutput(); err != nil {
			t.Logf("cleanup: losetup -d %s: %v %s", l.Dev, err, out)
		}
	}
	if pgIsMountpoint(fs.Mnt) {
		if err := pgUmount(fs.Mnt); err != nil {
			t.Logf("cleanup: %v", err)
		}
	}
	if fs.Dev != "" {
		if out, err := exec.Command("losetup", "-d", fs.Dev).CombinedOutput(); err != nil {
			t.Logf("cleanup: losetup -d %s: %v %s", fs.Dev, err, out)
		}
	}
	os.Remove(fs.Img)
}

// umount unmounts mnt, retrying briefly (a process may just be exiting),
// then lazily.
func pgUmount(mnt string) error {
	var last error
	for i := 0; i < 20; i++ {
		out, err := exec.Command("umount", mnt).CombinedOutput()
		if err == nil {
			return nil
		}
		last = fmt.Errorf("umount %s: %v: %s", mnt, err, bytes.TrimSpace(out))
		time.Sleep(100 * time.Millisecond)
	}
	if out, err := exec.Command("umount", "-l", mnt).CombinedOutput(); err != nil {
		return fmt.Errorf("%v; umount -l: %v: %s", last, err, bytes.TrimSpace(out))
	}
	return nil
}

// pgMountEntry is one line of /proc/self/mountinfo.
type pgMountEntry struct {
	MajMin, Point, Source string
}

func pgMounts() []pgMountEntry {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []pgMountEntry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 {
			continue
		}
		e := pgMountEntry{MajMin: fields[2], Point: pgUnescapeOctal(fields[4])}
		for i, fl := range fields {
			if fl == "-" && i+2 < len(fields) {
				e.Source = fields[i+2]
			}
		}
		out = append(out, e)
	}
	return out
}

func pgUnescapeOctal(s string) string {
	re := regexp.MustCompile(`\\[0-7]{3}`)
	return re.ReplaceAllStringFunc(s, func(m string) string {
		v, _ := strconv.ParseUint(m[1:], 8, 8)
		return string([]byte{byte(v)})
	})
}

func pgIsMountpoint(p string) bool {
	for _, m := range pgMounts() {
		if m.Point == p {
			return true
		}
	}
	return false
}

// pgLoopInfo is a loop device bound to a file, with its mount points.
type pgLoopInfo struct {
	Dev, Backing string
	Mounts       []string
}

// pgLoopsUnder lists loop devices whose backing file lies under dir, read
// from sysfs (the same source `losetup -a` reads).
func pgLoopsUnder(dir string) []pgLoopInfo {
	dir = filepath.Clean(dir) + "/"
	paths, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	ms := pgMounts()
	var out []pgLoopInfo
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		backing := strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
		if !strings.HasPrefix(backing, dir) {
			continue
		}
		name := filepath.Base(filepath.Dir(filepath.Dir(p)))
		l := pgLoopInfo{Dev: "/dev/" + name, Backing: backing}
		if mm, err := os.ReadFile(filepath.Join("/sys/block", name, "dev")); err == nil {
			want := strings.TrimSpace(string(mm))
			for _, m := range ms {
				if m.MajMin == want {
					l.Mounts = append(l.Mounts, m.Point)
				}
			}
		}
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Dev < out[j].Dev })
	return out
}

// pgSHA256File hashes a whole file (an image, holes read as zeros).
func pgSHA256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, 1<<20)); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// ---- the cluster -----------------------------------------------------------

// pgHostSpec describes one host's volume filesystem.
type pgHostSpec struct {
	FS       string // xfs or ext4
	FSSize   int64  // bytes of the loop filesystem
	Capacity string // --capacity
}

// pgCluster is three agents in network namespaces, started with nsenter so
// they share the test's mount namespace, each with its --volume-dir on its
// own loop-mounted filesystem.
type pgCluster struct {
	*testCluster
	base      string
	logs      string
	specs     []pgHostSpec
	fss       []*pgLoopFS
	volDirs   []string
	rateLimit string
	extraArgs []string // appended to every agent's flags (benchmarks)
}

// startPGCluster builds the binary, the filesystems, the namespaces and
// the agents, and waits for a leader and three live hosts.
func startPGCluster(t *testing.T, specs []pgHostSpec, rateLimit string) *pgCluster {
	t.Helper()
	begin := time.Now()
	bin := forknodeBin(t)
	base := pgBaseDir(t)
	c := &pgCluster{base: base, specs: specs, rateLimit: rateLimit, logs: filepath.Join(base, "logs")}
	if err := os.MkdirAll(c.logs, 0o755); err != nil {
		t.Fatal(err)
	}
	// Filesystems first: their cleanups then run after the agents are
	// killed (t.Cleanup is LIFO).
	for i, s := range specs {
		fs := newPGLoopFS(t, base, fmt.Sprintf("h%d", i), s.FSSize, s.FS)
		c.fss = append(c.fss, fs)
		vd := filepath.Join(fs.Mnt, "vols")
		if err := os.MkdirAll(vd, 0o750); err != nil {
			t.Fatal(err)
		}
		c.volDirs = append(c.volDirs, vd)
	}
	c.testCluster = &testCluster{t: t, bin: bin, dir: filepath.Join(base, "state")}
	c.keepLogsOnFailure(t)
	c.env = newNetEnv(t, len(specs))
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c.key = filepath.Join(c.dir, "cluster.key")
	if out, err := runRoot(bin, "keygen", "-o", c.key); err != nil {
		t.Fatalf("keygen: %v: %s", err, out)
	}
	tok, err := runRoot(bin, "token", "--key", c.key)
	if err != nil {
		t.Fatalf("token: %v", err)
	}
	c.token = strings.TrimSpace(tok)
	for i := range specs {
		c.agents = append(c.agents, c.startAgent(i, true))
	}
	c.waitHealthy(t, 60*time.Second)
	t.Logf("pg cluster up after %s (volume dirs %v)", time.Since(begin).Round(time.Millisecond), c.volDirs)
	return c
}

func (c *pgCluster) pgAgentArgs(i int, join bool) []string {
	h := c.env.hosts[i]
	args := []string{
		"--name", c.name(i), "--data-dir", filepath.Join(c.dir, c.name(i)), "--volume-dir", c.volDirs[i],
		"--gossip-addr", h.IP + ":7946", "--cluster-addr", h.IP + ":7947", "--api-addr", h.IP + ":7948",
		"--bootstrap-expect", strconv.Itoa(len(c.specs)), "--region", "r1", "--capacity", c.specs[i].Capacity,
		"--key", c.key, "--log-level", "debug",
	}
	if c.rateLimit != "" {
		// A test that names a rate times its faults by it: keep it fixed.
		args = append(args, "--rate-limit", c.rateLimit, "--pace=false")
	}
	args = append(args, c.extraArgs...)
	if join {
		var j []string
		for o := range c.env.hosts {
			if o != i {
				j = append(j, c.gossipAddr(o))
			}
		}
		args = append(args, "--join", strings.Join(j, ","))
	}
	return args
}

// startAgent starts (or restarts, on the same data dir) agent i.
func (c *pgCluster) startAgent(i int, join bool) *agentProc {
	return c.env.hosts[i].StartAgent(c.bin, c.logs, c.pgAgentArgs(i, join)...)
}

// restart starts agent i again after it was killed.
func (c *pgCluster) restart(i int) {
	c.agents[i] = c.startAgent(i, true)
}

// pgLogExcerpt returns the head and the tail of an agent log, leaving out
// the per-request API lines (the tests poll, and those would crowd out
// everything else).
func pgLogExcerpt(path string, head, tail int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var keep []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.Contains(l, "forknode.http: request:") {
			keep = append(keep, l)
		}
	}
	s := strings.Join(keep, "\n")
	if len(s) <= head+tail {
		return s
	}
	return s[:head] + "\n...\n" + s[len(s)-tail:]
}

// keepLogsOnFailure copies the agents' logs out of the test's directory
// (which is removed) when the test failed, and says where.
func (c *pgCluster) keepLogsOnFailure(t *testing.T) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		dst, err := os.MkdirTemp("", "fnpg-logs-")
		if err != nil {
			return
		}
		ents, _ := os.ReadDir(c.logs)
		for _, e := range ents {
			if b, err := os.ReadFile(filepath.Join(c.logs, e.Name())); err == nil {
				_ = os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644)
			}
		}
		t.Logf("agent logs kept in %s", dst)
	})
}

// cli runs the forknode CLI in host i's network namespace against node i.
// It uses nsenter like the agents: `ip netns exec` would copy the test's
// mounts into a new mount namespace, and while such a CLI runs (fork
// --wait) it pins every filesystem mounted at that moment, so an umount in
// the test would leave the filesystem alive and its loop device busy.
func (c *pgCluster) cli(ctx context.Context, i int, args ...string) (string, error) {
	args = append(args, "--addr", c.apiAddr(i), "--token-file", c.key)
	return pgRun(ctx, "nsenter", append([]string{"--net=/var/run/netns/" + c.env.hosts[i].NS, c.bin}, args...)...)
}

// healthy waits for an agreed leader and every host alive in the catalog.
func (c *pgCluster) healthy(timeout time.Duration) error {
	all := make([]int, len(c.env.hosts))
	for i := range all {
		all[i] = i
	}
	deadline := time.Now().Add(timeout)
	if _, err := c.leader(all, timeout); err != nil {
		return err
	}
	last := ""
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		st, err := c.client(0, 0).Status(ctx)
		cancel()
		if err == nil && len(st.Hosts) == len(c.env.hosts) {
			var dead []string
			for _, h := range st.Hosts {
				if !h.Alive {
					dead = append(dead, h.ID)
				}
			}
			if len(dead) == 0 {
				return nil
			}
			last = fmt.Sprintf("hosts not alive in the catalog: %v", dead)
		} else {
			last = fmt.Sprintf("status: %v", err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s: %s", timeout, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// waitHealthy is healthy or the test stops.
func (c *pgCluster) waitHealthy(t testing.TB, timeout time.Duration) {
	t.Helper()
	if err := c.healthy(timeout); err != nil {
		t.Fatal(err)
	}
}

// healOrRestart waits for the cluster to be whole again; when it is not
// within timeout, that is an error, and the hosts the catalog still
// shows dead are restarted so that the next case starts from a whole
// cluster.
func (c *pgCluster) healOrRestart(t testing.TB, timeout time.Duration) {
	t.Helper()
	err := c.healthy(timeout)
	if err == nil {
		return
	}
	t.Errorf("the cluster did not heal by itself: %v", err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	st, serr := c.client(0, 0).Status(ctx)
	cancel()
	if serr != nil {
		t.Fatalf("status: %v", serr)
	}
	for _, h := range st.Hosts {
		if !h.Alive {
			i := c.index(h.ID)
			t.Logf("restarting %s", h.ID)
			c.agents[i].Kill(syscall.SIGKILL)
			c.restart(i)
		}
	}
	c.waitHealthy(t, 60*time.Second)
}

// detach detaches a volume through node via, retrying while the backend
// says busy (a loop device another process holds open for a moment).
func (c *pgCluster) detach(ctx context.Context, via int, vol string) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := c.client(via, via).Detach(ctx, vol)
		if err == nil || !strings.Contains(err.Error(), "busy") || time.Now().After(deadline) {
			return err
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// leaderIndex returns the index of the agreed leader.
func (c *pgCluster) leaderIndex(t testing.TB) int {
	t.Helper()
	all := make([]int, len(c.env.hosts))
	for i := range all {
		all[i] = i
	}
	l, err := c.leader(all, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return c.index(l)
}

// ensureLeaderNot moves leadership off host i (kill -9, re-election,
// restart), so that a later fault on i hits only the role the test names.
func (c *pgCluster) ensureLeaderNot(t testing.TB, i int) {
	t.Helper()
	for attempt := 0; attempt < 5; attempt++ {
		if c.leaderIndex(t) != i {
			return
		}
		var others []int
		for o := range c.env.hosts {
			if o != i {
				others = append(others, o)
			}
		}
		c.agents[i].Kill(syscall.SIGKILL)
		if _, err := c.leader(others, 30*time.Second, c.name(i)); err != nil {
			t.Fatal(err)
		}
		c.restart(i)
		c.waitHealthy(t, 60*time.Second)
	}
	t.Fatalf("host %s keeps winning the election", c.name(i))
}

// forkJSON runs `forknode fork ... --wait --json` through the CLI inside
// host via and decodes the final fork.
func (c *pgCluster) forkJSON(ctx context.Context, via int, args ...string) (*api.Fork, string, error) {
	out, err := c.cli(ctx, via, append(append([]string{"fork"}, args...), "--wait", "--json")...)
	if err != nil {
		return nil, out, err
	}
	// --wait --json prints the final fork last; take the last JSON object.
	dec := json.NewDecoder(strings.NewReader(out))
	var last *api.Fork
	for {
		var f api.Fork
		if err := dec.Decode(&f); err != nil {
			break
		}
		last = &f
	}
	if last == nil || last.ID == "" {
		return nil, out, fmt.Errorf("no fork in CLI output: %s", out)
	}
	return last, out, nil
}

// volumeImage is the image file of a volume on host i.
func (c *pgCluster) volumeImage(i int, volID string) string {
	return filepath.Join(c.volDirs[i], volID+".img")
}

// leaks compares, on every host, the catalog with the volume directory,
// the loop devices and the mounts; allowAttached names volume ids that may
// be attached. It returns "" when nothing leaked.
func (c *pgCluster) leaks(ctx context.Context, allowAttached map[string]bool) string {
	var problems []string
	vols, err := c.client(0, 0).Volumes(ctx)
	if err != nil {
		return "list volumes: " + err.Error()
	}
	forks, err := c.client(0, 0).Forks(ctx)
	if err != nil {
		return "list forks: " + err.Error()
	}
	for _, f := range forks {
		if !f.Finished() {
			problems = append(problems, fmt.Sprintf("fork %s (%s) still %s", f.ID, f.Name, f.State))
		}
	}
	for i := range c.env.hosts {
		want := map[string]bool{}
		for _, v := range vols {
			if v.Host != c.name(i) {
				continue
			}
			if v.State != "ready" {
				problems = append(problems, fmt.Sprintf("%s: volume %s (%s) is %s", c.name(i), v.ID, v.Name, v.State))
			}
			want[v.ID] = true
		}
		ents, err := os.ReadDir(c.volDirs[i])
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		have := map[string]bool{}
		for _, e := range ents {
			n := e.Name()
			switch {
			case n == ".forknode-volumes": // the directory's marker (internal/cow)
			case strings.HasPrefix(n, "snap_"):
				problems = append(problems, fmt.Sprintf("%s: leftover snapshot file %s", c.name(i), n))
			case strings.HasSuffix(n, ".img"):
				id := strings.TrimSuffix(n, ".img")
				have[id] = true
				if !want[id] {
					problems = append(problems, fmt.Sprintf("%s: image %s is not in the catalog", c.name(i), n))
				}
			case strings.HasSuffix(n, ".json"):
				if id := strings.TrimSuffix(n, ".json"); !want[id] {
					problems = append(problems, fmt.Sprintf("%s: metadata %s is not in the catalog", c.name(i), n))
				}
			default:
				problems = append(problems, fmt.Sprintf("%s: stray file %s", c.name(i), n))
			}
		}
		for id := range want {
			if !have[id] {
				problems = append(problems, fmt.Sprintf("%s: catalog volume %s has no image", c.name(i), id))
			}
		}
		for _, l := range pgLoopsUnder(c.volDirs[i]) {
			id := strings.TrimSuffix(filepath.Base(l.Backing), ".img")
			if !allowAttached[id] {
				problems = append(problems, fmt.Sprintf("%s: loop device %s -> %s (mounts %v)", c.name(i), l.Dev, l.Backing, l.Mounts))
			}
		}
	}
	sort.Strings(problems)
	return strings.Join(problems, "; ")
}

// waitNoLeaks polls leaks until it is empty.
func (c *pgCluster) waitNoLeaks(t testing.TB, timeout time.Duration, allowAttached map[string]bool) {
	t.Helper()
	if !c.checkNoLeaks(t, timeout, allowAttached) {
		t.FailNow()
	}
}

// checkNoLeaks is waitNoLeaks that records the failure and goes on.
func (c *pgCluster) checkNoLeaks(t testing.TB, timeout time.Duration, allowAttached map[string]bool) bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		p := c.leaks(ctx, allowAttached)
		cancel()
		if p == "" {
			return true
		}
		if time.Now().After(deadline) {
			t.Errorf("leaks %s after the hosts reconciled: %s", timeout, p)
			return false
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// restartLeaky restarts every host whose volume dir disagrees with the
// catalog (its restart reconciliation removes what the catalog does not
// know) and reports whether that cleaned up.
func (c *pgCluster) restartLeaky(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	p := c.leaks(ctx, nil)
	cancel()
	for i := range c.env.hosts {
		if strings.Contains(p, c.name(i)+":") {
			t.Logf("restarting %s to let its reconciliation remove the leftovers", c.name(i))
			c.agents[i].Kill(syscall.SIGKILL)
			c.restart(i)
		}
	}
	c.waitHealthy(t, 60*time.Second)
	if c.checkNoLeaks(t, 30*time.Second, nil) {
		t.Logf("a restart of the leaky hosts cleaned up")
	}
}

// writeRandom fills a volume (through an attach on its host) with
// incompressible data, so that a stream of it is slow and real.
func (c *pgCluster) writeRandom(t testing.TB, via int, vol string, size int64, seed uint64) {
	t.Helper()
	writeVolume(t, c.client(via, via), vol, func(f *os.File) error {
		r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 0xfe})
		buf := make([]byte, 4<<20)
		for off := int64(0); off < size; off += int64(len(buf)) {
			r.Read(buf)
			if _, err := f.WriteAt(buf, off); err != nil {
				return err
			}
		}
		return nil
	})
}

// ---- PostgreSQL ------------------------------------------------------------

var pgCred struct {
	once     sync.Once
	uid, gid uint32
	err      error
}

func pgPostgresCred() (*syscall.Credential, error) {
	pgCred.once.Do(func() {
		u, err := user.Lookup("postgres")
		if err != nil {
			pgCred.err = fmt.Errorf("user postgres: %w", err)
			return
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		pgCred.uid, pgCred.gid = uint32(uid), uint32(gid)
	})
	if pgCred.err != nil {
		return nil, pgCred.err
	}
	return &syscall.Credential{Uid: pgCred.uid, Gid: pgCred.gid}, nil
}

// pgAsPostgres runs a PostgreSQL tool as the postgres user.
func pgAsPostgres(ctx context.Context, dir string, name string, args ...string) (string, error) {
	cred, err := pgPostgresCred()
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + dir, "LC_ALL=C"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// pgChownPostgres gives a directory to the postgres user.
func pgChownPostgres(dir string) error {
	cred, err := pgPostgresCred()
	if err != nil {
		return err
	}
	return os.Chown(dir, int(cred.Uid), int(cred.Gid))
}

// pgMount mounts dev at mnt (created) and returns the data directory
// inside it; with create it makes the ext4 filesystem first.
func pgMount(ctx context.Context, dev, mnt string, create bool) (string, error) {
	if create {
		if _, err := pgRun(ctx, "mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev); err != nil {
			return "", err
		}
	}
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return "", err
	}
	if _, err := pgRun(ctx, "mount", dev, mnt); err != nil {
		return "", err
	}
	data := filepath.Join(mnt, "pgdata")
	if create {
		if err := os.Mkdir(data, 0o700); err != nil {
			return "", err
		}
		if err := pgChownPostgres(data); err != nil {
			return "", err
		}
	}
	return data, nil
}

// pgServer is a postmaster we started (as postgres) and stop by PID.
type pgServer struct {
	Data, Sock, Log string
	Port            int
	cmd             *exec.Cmd
	done            chan struct{}
	err             error
	started         time.Time
}

// pgInitDB runs initdb with data checksums in data (owned by postgres).
func pgInitDB(ctx context.Context, data string) error {
	_, err := pgAsPostgres(ctx, filepath.Dir(data), pgTool("initdb"), "-D", data, "--data-checksums",
		"-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale", "C", "--no-sync")
	return err
}

// pgStart starts postgres on data, listening only on a unix socket in
// sockDir (made and given to postgres). Extra settings come as "k=v". It
// returns once the server accepts connections.
func pgStart(t testing.TB, data, sockDir string, port int, settings ...string) (*pgServer, error) {
	t.Helper()
	cred, err := pgPostgresCred()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(sockDir, 0o755); err != nil {
		return nil, err
	}
	if err := pgChownPostgres(sockDir); err != nil {
		return nil, err
	}
	p := &pgServer{Data: data, Sock: sockDir, Port: port, Log: filepath.Join(sockDir, "postgres.log"), done: make(chan struct{})}
	lf, err := os.OpenFile(p.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	args := []string{"-D", data, "-p", strconv.Itoa(port), "-k", sockDir,
		"-c", "listen_addresses=", "-c", "log_line_prefix=%m [%p] ", "-c", "shared_buffers=32MB",
		"-c", "max_connections=30"}
	for _, s := range settings {
		args = append(args, "-c", s)
	}
	cmd := exec.Command(pgTool("postgres"), args...)
	cmd.Dir = sockDir
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true}
	p.started = time.Now()
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, err
	}
	p.cmd = cmd
	go func() {
		p.err = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		// Whatever happened, no postmaster outlives the test.
		if !p.Exited() {
			_ = p.cmd.Process.Signal(syscall.SIGQUIT)
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
				_ = p.cmd.Process.Kill()
				<-p.done
			}
		}
	})
	deadline := time.Now().Add(90 * time.Second)
	for {
		if p.Exited() {
			return p, fmt.Errorf("postgres on %s exited during start: %v\n%s", data, p.err, p.LogTail(4<<10))
		}
		if _, err := pgRun(context.Background(), pgTool("pg_isready"), "-q", "-h", sockDir, "-p", strconv.Itoa(port)); err == nil {
			return p, nil
		}
		if time.Now().After(deadline) {
			return p, fmt.Errorf("postgres on %s not ready after 90s\n%s", data, p.LogTail(4<<10))
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// Exited reports whether the postmaster ended.
func (p *pgServer) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop is a fast shutdown (SIGINT to the postmaster's PID, exactly what
// `pg_ctl stop -m fast` sends): sessions are cut, a shutdown checkpoint is
// written, and the data directory is left clean.
func (p *pgServer) Stop() error {
	if p.Exited() {
		return fmt.Errorf("postgres on %s already exited: %v", p.Data, p.err)
	}
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		_ = p.cmd.Process.Signal(syscall.SIGQUIT)
		<-p.done
		return fmt.Errorf("postgres on %s: fast shutdown took over 60s", p.Data)
	}
	if p.err != nil {
		return fmt.Errorf("postgres on %s: %v\n%s", p.Data, p.err, p.LogTail(2<<10))
	}
	return nil
}

// LogTail returns the end of the server log.
func (p *pgServer) LogTail(n int) string {
	b, _ := os.ReadFile(p.Log)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Psql runs one SQL string and returns the unaligned, tuples-only output.
func (p *pgServer) Psql(ctx context.Context, sql string) (string, error) {
	out, err := pgRun(ctx, pgTool("psql"), "-X", "-h", p.Sock, "-p", strconv.Itoa(p.Port), "-U", "postgres",
		"-d", "postgres", "-Atq", "-v", "ON_ERROR_STOP=1", "-c", sql)
	return strings.TrimSpace(out), err
}

// Int runs a query returning one integer.
func (p *pgServer) Int(ctx context.Context, sql string) (int64, error) {
	out, err := p.Psql(ctx, sql)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q: not an integer: %q", sql, out)
	}
	return v, nil
}

var pgLogTS = regexp.MustCompile(`^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) (\w+) `)

// RecoveryTime is the time from the first log line of this start ("starting
// PostgreSQL") to "database system is ready to accept connections", read
// from the server's own millisecond timestamps, plus whether the log shows
// WAL redo (crash recovery).
func (p *pgServer) RecoveryTime() (time.Duration, bool, error) {
	b, err := os.ReadFile(p.Log)
	if err != nil {
		return 0, false, err
	}
	var start, ready time.Time
	redo := false
	for _, line := range strings.Split(string(b), "\n") {
		m := pgLogTS.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		ts, err := time.Parse("2006-01-02 15:04:05.000", m[1])
		if err != nil {
			continue
		}
		switch {
		case strings.Contains(line, "starting PostgreSQL"):
			start, ready, redo = ts, time.Time{}, false
		case strings.Contains(line, "redo starts at"):
			redo = true
		case strings.Contains(line, "database system is ready to accept connections"):
			ready = ts
		}
	}
	if start.IsZero() || ready.IsZero() {
		return 0, redo, errors.New("no start/ready lines in the postgres log")
	}
	return ready.Sub(start), redo, nil
}

var pgRedoRe = regexp.MustCompile(`redo (starts|done) at ([0-9A-F]+)/([0-9A-F]+)`)

// RedoBytes is how much WAL the last crash recovery replayed, from the
// "redo starts at" and "redo done at" LSNs in the server log.
func (p *pgServer) RedoBytes() (int64, error) {
	b, err := os.ReadFile(p.Log)
	if err != nil {
		return 0, err
	}
	var start, done int64 = -1, -1
	for _, m := range pgRedoRe.FindAllStringSubmatch(string(b), -1) {
		hi, _ := strconv.ParseInt(m[2], 16, 64)
		lo, _ := strconv.ParseInt(m[3], 16, 64)
		lsn := hi<<32 | lo
		if m[1] == "starts" {
			start, done = lsn, -1
		} else {
			done = lsn
		}
	}
	if start < 0 || done < start {
		return 0, errors.New("no redo start/done LSNs in the postgres log")
	}
	return done - start, nil
}

// ---- the workload ----------------------------------------------------------

// pgLedgerAccounts and pgLedgerBalance define the money invariant: the sum of
// balances is always pgLedgerAccounts*pgLedgerBalance.
const (
	pgLedgerAccounts = 100
	pgLedgerBalance  = 1000
)

const pgLedgerSchema = `
CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 100) g;
CREATE TABLE ledger_seq (one int PRIMARY KEY CHECK (one = 1), n bigint NOT NULL);
INSERT INTO ledger_seq VALUES (1, 0);
CREATE TABLE ledger (n bigint PRIMARY KEY, src int NOT NULL, dst int NOT NULL, amount int NOT NULL,
  at timestamptz NOT NULL DEFAULT now());
`

// pgLedgerScript is one pgbench transaction: take the next sequence number
// under the counter's row lock (so numbers are gap-free: a rolled-back
// transaction rolls the counter back too) and move money between two
// accounts. The counter row lock serialises ledger transactions, so they
// cannot deadlock on the accounts.
const pgLedgerScript = `\set a random(1, 100)
\set b random(1, 100)
\set amt random(1, 50)
BEGIN;
UPDATE ledger_seq SET n = n + 1 WHERE one = 1 RETURNING n AS seq \gset
INSERT INTO ledger (n, src, dst, amount) VALUES (:seq, :a, :b, :amt);
UPDATE accounts SET balance = balance - :amt WHERE id = :a;
UPDATE accounts SET balance = balance + :amt WHERE id = :b;
END;
`

// pgSetupWorkload creates the pgbench tables (scale) and the ledger.
func pgSetupWorkload(ctx context.Context, p *pgServer, scale int) error {
	if _, err := pgRun(ctx, pgTool("pgbench"), "-i", "-q", "-s", strconv.Itoa(scale), "-h", p.Sock, "-p", strconv.Itoa(p.Port), "-U", "postgres", "postgres"); err != nil {
		return err
	}
	_, err := p.Psql(ctx, pgLedgerSchema)
	return err
}

// load is a running pgbench (tpcb-like plus the ledger script).
type pgLoad struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan struct{}
	err  error
}

// startPGLoad runs pgbench with clients clients for at most maxDur; Stop
// ends it early. ledger adds the ledger script (weight 1) to tpcb-like.
func startPGLoad(t testing.TB, p *pgServer, dir string, clients int, maxDur time.Duration, ledger bool) (*pgLoad, error) {
	args := []string{"-n", "-c", strconv.Itoa(clients), "-j", "1", "-T", strconv.Itoa(int(maxDur.Seconds())),
		"-h", p.Sock, "-p", strconv.Itoa(p.Port), "-U", "postgres", "-b", "tpcb-like@1"}
	if ledger {
		script := filepath.Join(dir, "ledger.sql")
		if err := os.WriteFile(script, []byte(pgLedgerScript), 0o644); err != nil {
			return nil, err
		}
		args = append(args, "-f", script+"@1")
	}
	args = append(args, "postgres")
	l := &pgLoad{done: make(chan struct{})}
	l.cmd = exec.Command(pgTool("pgbench"), args...)
	l.cmd.Stdout, l.cmd.Stderr = &l.out, &l.out
	if err := l.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		l.err = l.cmd.Wait()
		close(l.done)
	}()
	t.Cleanup(func() { l.Stop() })
	return l, nil
}

// Stop interrupts pgbench (by PID) and waits for it.
func (l *pgLoad) Stop() {
	select {
	case <-l.done:
		return
	default:
	}
	_ = l.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-l.done:
	case <-time.After(10 * time.Second):
		_ = l.cmd.Process.Kill()
		<-l.done
	}
}

// Wait waits for pgbench to end by itself and returns its output.
func (l *pgLoad) Wait() (string, error) {
	<-l.done
	return l.out.String(), l.err
}

// Running reports whether pgbench is still running.
func (l *pgLoad) Running() bool {
	select {
	case <-l.done:
		return false
	default:
		return true
	}
}

var pgTPSRe = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)

// pgParseTPS reads pgbench's tps line.
func pgParseTPS(out string) (float64, error) {
	m := pgTPSRe.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no tps line in pgbench output: %s", out)
	}
	return strconv.ParseFloat(m[1], 64)
}

// pgCheckLedger verifies the invariants on a server: the ledger has no gaps
// (count = max = counter) and the money is all there. It returns max(n).
func pgCheckLedger(ctx context.Context, p *pgServer) (int64, error) {
	out, err := p.Psql(ctx, `SELECT count(*), coalesce(max(n),0), coalesce(min(n),0), (SELECT n FROM ledger_seq), (SELECT sum(balance) FROM accounts), (SELECT count(*) FROM accounts) FROM ledger`)
	if err != nil {
		return 0, err
	}
	f := strings.Split(out, "|")
	if len(f) != 6 {
		return 0, fmt.Errorf("ledger check: unexpected output %q", out)
	}
	v := make([]int64, len(f))
	for i := range f {
		if v[i], err = strconv.ParseInt(f[i], 10, 64); err != nil {
			return 0, fmt.Errorf("ledger check: %q: %w", out, err)
		}
	}
	count, maxN, minN, seq, sum, naccts := v[0], v[1], v[2], v[3], v[4], v[5]
	switch {
	case count != maxN || (count > 0 && minN != 1):
		return maxN, fmt.Errorf("ledger has gaps: count %d, min %d, max %d", count, minN, maxN)
	case seq != maxN:
		return maxN, fmt.Errorf("ledger counter %d != max(n) %d", seq, maxN)
	case naccts != pgLedgerAccounts || sum != pgLedgerAccounts*pgLedgerBalance:
		return maxN, fmt.Errorf("money not conserved: %d accounts, sum %d, want %d", naccts, sum, pgLedgerAccounts*pgLedgerBalance)
	}
	return maxN, nil
}

// pgLedgerSeq reads the committed counter (the highest committed n).
func pgLedgerSeq(ctx context.Context, p *pgServer) (int64, error) {
	return p.Int(ctx, "SELECT n FROM ledger_seq")
}
