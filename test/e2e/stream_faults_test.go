package e2e

// Acceptance tests for cross-host fork streams under faults: a stream forced
// by a full host, link cuts mid-transfer (3 s, and 8 s: under the dead-host
// timeout), the source killed mid-transfer, the target killed and
// restarted mid-transfer, and bytes flipped in flight. Agents are separate processes in network
// namespaces with file backends; volume bytes are compared as image files
// in the hosts' volume directories.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/api"
	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/testutil"
)

// TestStreamForcedByFullHost: the source host's budget is full, so a plain
// fork (no --via, no --host) must leave it over the stream, and the copy
// must equal the source byte for byte.
func TestStreamForcedByFullHost(t *testing.T) {
	const srcSize, capacity = 64 * mib, 160 * mib
	c := startFaultCluster(t, faultOpts{nodes: 3, extra: func(i int) []string {
		if i == 0 {
			return []string{"--capacity", fmt.Sprintf("%dMiB", capacity/mib)}
		}
		return []string{"--capacity", "1GiB"}
	}})
	src := c.createVolume("full-src", srcSize, 0)
	c.fillImage(0, src.ID, srcSize, 1, nil)
	// n0 is now full for a fork. Without reflink a fork's snapshot is a
	// full copy, which the catalog reserves on the source: leave room for
	// the stream's snapshot, but not for a local fork and its snapshot.
	st, err := c.client(0).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	leave := int64(srcSize)
	for _, h := range st.Hosts {
		if h.ID == "n0" && h.CanClone {
			leave = 0
		}
	}
	c.createVolume("full-filler", capacity-srcSize-leave, 0)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// With its own cap, under the nodes' idle pace (a quarter of 100 MiB/s).
	const forkRate = 16 * mib
	out, err := c.cli(ctx, 0, "fork", "full-src", "full-far", "--rate-limit", "16MiB", "--wait", "--json")
	if err != nil {
		t.Fatalf("fork: %v: %s", err, out)
	}
	var f api.Fork
	if err := json.Unmarshal([]byte(out), &f); err != nil {
		t.Fatalf("fork --json: %v: %s", err, out)
	}
	out, err = c.cli(ctx, 1, "forks", "show", f.ID, "--json")
	if err != nil {
		t.Fatalf("forks show: %v: %s", err, out)
	}
	if err := json.Unmarshal([]byte(out), &f); err != nil {
		t.Fatalf("forks show --json: %v: %s", err, out)
	}
	if f.Path != fsm.PathStream || f.State != fsm.ForkReady || f.SourceHost != "n0" || f.TargetHost == "n0" {
		t.Fatalf("fork of a volume on a full host: path=%s state=%s %s→%s (%s), want a ready stream off n0",
			f.Path, f.State, f.SourceHost, f.TargetHost, f.Error)
	}
	// 64 MiB of random data at 16 MiB/s: 4 s, less what the first burst
	// and the stream's window let through.
	if took := time.Duration(f.FinishedAt - f.CreatedAt); f.RateLimit != forkRate || took < 3*time.Second {
		t.Errorf("fork with --rate-limit 16MiB: rate_limit %d, took %s; want %d and at least 3s", f.RateLimit, took, int64(forkRate))
	}
	ti := c.indexOf(f.TargetHost)
	ftSameImage(t, c.imgPath(0, src.ID), c.imgPath(ti, f.TargetVolume))
	if st, ok := c.streamComplete(ti, f.ID); ok {
		t.Logf("%s", st.Line)
	} else {
		t.Errorf("no `stream complete` log line for %s on %s", f.ID, f.TargetHost)
	}
}

// slowStreamCluster is three nodes whose n0 streams at 20 MiB/s, with a
// source volume of size random bytes on n0.
func slowStreamCluster(t *testing.T, size int64, namespaces int) (*faultCluster, *api.Volume) {
	c := startFaultCluster(t, faultOpts{nodes: 3, namespaces: namespaces, extra: func(i int) []string {
		a := []string{"--capacity", "2GiB"}
		if i == 0 {
			// Fixed, not paced: the faults are timed by this rate.
			a = append(a, "--rate-limit", "20MiB", "--pace=false")
		}
		return a
	}})
	src := c.createVolume("slow-src", size, 0)
	c.fillImage(0, src.ID, size, 2, nil)
	return c, src
}

// TestStreamLinkCutResumes cuts the source's link mid-transfer twice, for
// ~3 s each time.
//
// The first cut is the plain one: a 3 s outage does not break an
// established TCP connection (the kernel retransmits; the transfer's I/O
// timeout is 30 s), so the stream stalls and goes on. That alone never
// exercises resume, so the second cut also destroys the connections'
// sockets on both sides (`ss -K`), as a longer outage would after the I/O
// timeout: the target must reconnect (failing while the link is down) and
// continue from its durable, acknowledged watermark, re-sending < 10%.
func TestStreamLinkCutResumes(t *testing.T) {
	testutil.RequireCmd(t, "ss")
	const size = 256 * mib
	c, src := slowStreamCluster(t, size, 3)
	f := c.startFork(1, api.CreateForkRequest{Source: "slow-src", Name: "cut-far", Host: "n1", Via: "stream"})
	if f.Path != fsm.PathStream {
		t.Fatalf("path %s, want stream", f.Path)
	}
	a, b := c.env.hosts[0], c.env.hosts[1]
	ctx := context.Background()
	cutLink := func(killSockets bool) {
		t.Helper()
		if err := a.LinkDown(); err != nil {
			t.Fatal(err)
		}
		cut := time.Now()
		defer func() {
			if err := a.LinkUp(); err != nil {
				t.Error(err)
			}
			t.Logf("link restored after %s", time.Since(cut).Round(time.Millisecond))
		}()
		if killSockets {
			// Both ends of every n1→n0:7947 connection (the transfer
			// among them; raft and forwarding redial on their own).
			if out, err := b.Exec(ctx, "ss", "-K", "-t", "dst", a.IP, "dport", "=", ":7947"); err != nil {
				t.Fatalf("ss -K on n1: %v: %s", err, out)
			}
			if out, err := a.Exec(ctx, "ss", "-K", "-t", "dst", b.IP, "sport", "=", ":7947"); err != nil {
				t.Fatalf("ss -K on n0: %v: %s", err, out)
			}
		}
		time.Sleep(3*time.Second - time.Since(cut))
	}

	p := c.waitProgress(1, f.ID, 32*mib, 60*time.Second)
	t.Logf("cut 1 (link only) at %d/%d bytes", p.BytesDone, p.BytesTotal)
	cutLink(false)
	p = c.waitProgress(1, f.ID, p.BytesDone+32*mib, 60*time.Second)
	t.Logf("cut 2 (link and sockets) at %d/%d bytes", p.BytesDone, p.BytesTotal)
	cutLink(true)

	f = c.waitFinished(1, f.ID, 120*time.Second)
	if f.State != fsm.ForkReady {
		t.Fatalf("fork after link cuts: %s (%s), want ready", f.State, f.Error)
	}
	ftSameImage(t, c.imgPath(0, src.ID), c.imgPath(1, f.TargetVolume))
	st, ok := c.streamComplete(1, f.ID)
	if !ok {
		t.Fatalf("no `stream complete` log line for %s on n1", f.ID)
	}
	t.Logf("%s", st.Line)
	for _, l := range c.logLines(1, "transfer interrupted") {
		t.Logf("n1: %s", l)
	}
	if st.Bytes != size {
		t.Errorf("stream moved %d bytes, want %d", st.Bytes, size)
	}
	if st.Reconnects < 1 {
		t.Errorf("reconnects=%d: the second cut did not make the target reconnect", st.Reconnects)
	}
	if st.Resent*10 >= size {
		t.Errorf("resent=%d bytes, want < 10%% of %d: the stream did not resume from its acknowledged offset", st.Resent, size)
	}
	// The source's side: a second session that started where the target's
	// acknowledged watermark was, not at 0.
	var resumes []int64
	for _, l := range c.logLines(0, "streaming:") {
		if m := ftResumeRE.FindStringSubmatch(l); m != nil && strings.Contains(l, f.ID) {
			n, _ := strconv.ParseInt(m[1], 10, 64)
			resumes = append(resumes, n)
		}
	}
	t.Logf("n0 served sessions resuming at %v", resumes)
	if len(resumes) < 2 || resumes[len(resumes)-1] < p.BytesDone {
		t.Errorf("source sessions resumed at %v; want a last one at or past %d (acknowledged before the cut)", resumes, p.BytesDone)
	}
	ftNoPrefixReread(t, c, 0, f.ID)
}

var ftPrefixRereadRE = regexp.MustCompile(`\bprefix_reread=(\d+)`)

// ftNoPrefixReread checks that node i's server finished fork id's stream
// without re-reading the snapshot before the resume point: its hashes came
// from the earlier sessions of the same process.
func ftNoPrefixReread(t *testing.T, c *faultCluster, i int, id string) {
	t.Helper()
	found := false
	for _, l := range c.logLines(i, "stream complete") {
		if m := ftPrefixRereadRE.FindStringSubmatch(l); m != nil && strings.Contains(l, id) {
			found = true
			if m[1] != "0" {
				t.Errorf("%s re-read %s bytes of its snapshot for a resumed session: %s", c.name(i), m[1], l)
			}
		}
	}
	if !found {
		t.Errorf("no `stream complete` line with prefix_reread for %s on %s", id, c.name(i))
	}
}

var ftResumeRE = regexp.MustCompile(`\bresume=(\d+)`)

// TestStreamLinkCutUnderDeadTimeout cuts the source's link for 8 s in the
// middle of a stream: long enough for gossip to mark it failed, shorter
// than the 15 s dead-host timeout after which the leader fails its forks.
// Once the link is back the host must be alive again in the catalog and
// the stream must finish: a blip shorter than the dead-host timeout may
// cost a reconnect, not the fork.
func TestStreamLinkCutUnderDeadTimeout(t *testing.T) {
	const size = 256 * mib
	c, src := slowStreamCluster(t, size, 3)
	f := c.startFork(1, api.CreateForkRequest{Source: "slow-src", Name: "blip-far", Host: "n1", Via: "stream"})
	p := c.waitProgress(1, f.ID, 32*mib, 60*time.Second)
	a := c.env.hosts[0]
	if err := a.LinkDown(); err != nil {
		t.Fatal(err)
	}
	t.Logf("cut n0's link at %d/%d bytes", p.BytesDone, p.BytesTotal)
	time.Sleep(8 * time.Second)
	if err := a.LinkUp(); err != nil {
		t.Fatal(err)
	}
	restored := time.Now()
	alive := func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var out []string
		for i := 0; i < c.n; i++ {
			st, err := c.client(i).Status(ctx)
			if err != nil {
				out = append(out, fmt.Sprintf("%s: %v", c.name(i), err))
				continue
			}
			var ms []string
			for _, m := range st.Members {
				ms = append(ms, m.Name+"="+m.Status)
			}
			var hs []string
			for _, h := range st.Hosts {
				hs = append(hs, fmt.Sprintf("%s=%v", h.ID, h.Alive))
			}
			out = append(out, fmt.Sprintf("%s sees members %v, hosts alive %v", c.name(i), ms, hs))
		}
		return strings.Join(out, "; ")
	}
	healed := false
	for time.Since(restored) < 20*time.Second {
		if v := alive(); !strings.Contains(v, "=dead") && !strings.Contains(v, "=false") && !strings.Contains(v, ": ") {
			healed = true
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if !healed {
		t.Errorf("20 s after an 8 s link cut the cluster has not healed: %s", alive())
		for i := 0; i < c.n; i++ {
			for _, l := range c.logLines(i, "as failed") {
				t.Logf("%s: %s", c.name(i), l)
			}
		}
	} else {
		t.Logf("all hosts alive %s after the link came back", time.Since(restored).Round(time.Millisecond))
	}
	f = c.waitFinished(1, f.ID, 90*time.Second)
	if f.State != fsm.ForkReady {
		t.Fatalf("fork across an 8 s link cut (< the 15 s dead-host timeout): %s (%s), want ready", f.State, f.Error)
	}
	ftSameImage(t, c.imgPath(0, src.ID), c.imgPath(1, f.TargetVolume))
	if st, ok := c.streamComplete(1, f.ID); ok {
		t.Logf("%s", st.Line)
	}
}

// TestStreamSourceKilled kills the source agent (SIGKILL) mid-transfer: the
// fork must fail within 60 s, the target must keep nothing of it, and once
// the source restarts its stream snapshot must be released.
func TestStreamSourceKilled(t *testing.T) {
	const size = 200 * mib
	c, src := slowStreamCluster(t, size, 3)
	srcDigest := ftFileDigest(t, c.imgPath(0, src.ID))
	f := c.startFork(1, api.CreateForkRequest{Source: "slow-src", Name: "killed-far", Host: "n1", Via: "stream"})
	c.waitProgress(1, f.ID, 20*mib, 60*time.Second)
	snap := "snap_" + f.TargetVolume
	if got := ftFilesFor(c.volDir(0), snap); len(got) == 0 {
		t.Fatalf("no stream snapshot %s in n0's volume dir mid-transfer", snap)
	}
	if got := ftFilesFor(c.volDir(1), f.TargetVolume); len(got) == 0 {
		t.Fatalf("no target volume %s in n1's volume dir mid-transfer", f.TargetVolume)
	}

	c.agents[0].Kill(syscall.SIGKILL)
	killed := time.Now()
	f = c.waitFinished(1, f.ID, 60*time.Second)
	took := time.Since(killed)
	if f.State != fsm.ForkFailed {
		t.Fatalf("fork with its source killed: %s, want failed", f.State)
	}
	t.Logf("fork failed %s after the kill: %s", took.Round(time.Millisecond), f.Error)

	// The target drops its partial volume (image and metadata).
	testutil.Eventually(t, 30*time.Second, "n1 removes the failed fork's partial volume", func() bool {
		time.Sleep(100 * time.Millisecond)
		return len(ftFilesFor(c.volDir(1), f.TargetVolume)) == 0
	})
	if got := ftFilesFor(c.volDir(1), f.TargetVolume); len(got) != 0 {
		t.Fatalf("n1 still holds %v", got)
	}

	// The source comes back with the same flags and data dir: its snapshot
	// of the failed fork (left behind by the kill) goes, its volume is
	// untouched.
	if got := ftFilesFor(c.volDir(0), snap); len(got) == 0 {
		t.Fatalf("snapshot %s vanished while n0 was down: nothing left to check on restart", snap)
	}
	c.restart(0)
	c.waitUp(60 * time.Second)
	testutil.Eventually(t, 30*time.Second, "restarted n0 releases "+snap, func() bool {
		time.Sleep(100 * time.Millisecond)
		return len(ftFilesFor(c.volDir(0), snap)) == 0
	})
	if ftFileDigest(t, c.imgPath(0, src.ID)) != srcDigest {
		t.Fatal("the source volume changed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	v, err := c.client(0).Volume(ctx, "slow-src")
	if err != nil || v.State != fsm.VolumeReady {
		t.Fatalf("source volume after the restart: %v %+v", err, v)
	}
}

// TestStreamTargetKilledResumes kills the target agent (SIGKILL) in the
// middle of a stream and starts it again on the same data dir, inside the
// dead-host timeout: it must keep its half-made volume, resume from the
// checkpoint it last made durable rather than from zero, and end ready with
// the source's bytes.
func TestStreamTargetKilledResumes(t *testing.T) {
	const size = 256 * mib
	c, src := slowStreamCluster(t, size, 3)
	f := c.startFork(1, api.CreateForkRequest{Source: "slow-src", Name: "tkill-far", Host: "n1", Via: "stream"})
	ckpt := c.checkpointPath(1, f.ID)
	before := c.waitCheckpoint(1, f.ID, 96*mib)
	c.agents[1].Kill(syscall.SIGKILL)
	t.Logf("killed n1 with its checkpoint at %d of %d bytes", before, int64(size))
	if got := ftFilesFor(c.volDir(1), f.TargetVolume); len(got) == 0 {
		t.Fatalf("no half-made target %s on n1 after the kill", f.TargetVolume)
	}
	c.restart(1)

	f = c.waitFinished(0, f.ID, 120*time.Second)
	if f.State != fsm.ForkReady {
		t.Fatalf("fork with its target killed and restarted: %s (%s), want ready", f.State, f.Error)
	}
	ftSameImage(t, c.imgPath(0, src.ID), c.imgPath(1, f.TargetVolume))
	for _, l := range c.logLines(1, "resum") {
		t.Logf("n1: %s", l)
	}
	resumed := c.lastLogInt(1, "stream complete", ftResumedRE, f.ID)
	if resumed < before {
		t.Fatalf("the restarted target resumed at %d, want at least its last checkpoint %d before the kill", resumed, before)
	}
	// The source's side: a session that started at the resume point.
	var resumes []int64
	for _, l := range c.logLines(0, "streaming:") {
		if m := ftResumeRE.FindStringSubmatch(l); m != nil && strings.Contains(l, f.ID) {
			n, _ := strconv.ParseInt(m[1], 10, 64)
			resumes = append(resumes, n)
		}
	}
	if len(resumes) < 2 || resumes[len(resumes)-1] != resumed {
		t.Fatalf("source sessions resumed at %v; want a last one at %d", resumes, resumed)
	}
	ftNoPrefixReread(t, c, 0, f.ID)
	testutil.Eventually(t, 10*time.Second, "n1 drops the checkpoint", func() bool {
		time.Sleep(100 * time.Millisecond)
		_, err := os.Stat(ckpt)
		return os.IsNotExist(err)
	})
}

// TestStreamBothEndsRestarted kills the source and the target agents
// (SIGKILL) in the middle of a stream and starts both again: the cluster
// has no quorum meanwhile, the source keeps its snapshot, the target its
// half-made volume and checkpoint. The restarted source has no hashes of
// what it sent before, so it re-reads that part of its snapshot; the
// target resumes from its checkpoint; the bytes must be equal.
func TestStreamBothEndsRestarted(t *testing.T) {
	const size = 256 * mib
	c, src := slowStreamCluster(t, size, 3)
	f := c.startFork(1, api.CreateForkRequest{Source: "slow-src", Name: "both-far", Host: "n1", Via: "stream"})
	before := c.waitCheckpoint(1, f.ID, 96*mib)
	c.agents[0].Kill(syscall.SIGKILL)
	c.agents[1].Kill(syscall.SIGKILL)
	t.Logf("killed n0 and n1 with n1's checkpoint at %d of %d bytes", before, int64(size))
	c.restart(0)
	c.restart(1)

	f = c.waitFinished(2, f.ID, 120*time.Second)
	if f.State != fsm.ForkReady {
		t.Fatalf("fork with both ends killed and restarted: %s (%s), want ready", f.State, f.Error)
	}
	ftSameImage(t, c.imgPath(0, src.ID), c.imgPath(1, f.TargetVolume))
	resumed := c.lastLogInt(1, "stream complete", ftResumedRE, f.ID)
	if resumed < before {
		t.Fatalf("the restarted target resumed at %d, want at least its checkpoint %d", resumed, before)
	}
	reread := c.lastLogInt(0, "stream complete", ftPrefixRereadRE, f.ID)
	if reread <= 0 {
		t.Fatalf("the restarted source re-read %d bytes of its snapshot before the resume point; it had no hashes, so want > 0", reread)
	}
}

// checkpointPath is fork id's checkpoint file on node i.
func (c *faultCluster) checkpointPath(i int, id string) string {
	return filepath.Join(c.dataDir(i), "streams", id+".json")
}

// waitCheckpoint waits until node i's checkpoint of fork id is at least
// atLeast bytes and returns its offset.
func (c *faultCluster) waitCheckpoint(i int, id string, atLeast int64) int64 {
	c.t.Helper()
	var at int64
	testutil.Eventually(c.t, 60*time.Second, fmt.Sprintf("a checkpoint past %d MiB on %s", atLeast/mib, c.name(i)), func() bool {
		time.Sleep(100 * time.Millisecond)
		raw, err := os.ReadFile(c.checkpointPath(i, id))
		if err != nil {
			return false
		}
		var cp struct{ Durable int64 }
		if json.Unmarshal(raw, &cp) != nil {
			return false
		}
		at = cp.Durable
		return at >= atLeast
	})
	return at
}

// lastLogInt is re's number in the last of node i's log lines that hold
// substr and fork id (-1: none), logging the line.
func (c *faultCluster) lastLogInt(i int, substr string, re *regexp.Regexp, id string) int64 {
	c.t.Helper()
	n := int64(-1)
	for _, l := range c.logLines(i, substr) {
		if m := re.FindStringSubmatch(l); m != nil && strings.Contains(l, id) {
			n, _ = strconv.ParseInt(m[1], 10, 64)
			c.t.Logf("%s: %s", c.name(i), l)
		}
	}
	return n
}

var ftResumedRE = regexp.MustCompile(`\bresumed=(\d+)`)

// flipProxy relays TCP connections to upstream and flips one bit of the
// upstream→client direction in each connection that carries more than
// `after` bytes that way, until maxFlips bits were flipped. Only a block
// stream carries megabytes from the source to the target, so raft and
// forwarding pass untouched.
type flipProxy struct {
	ln       net.Listener
	dial     func(ctx context.Context, network, addr string) (net.Conn, error)
	upstream string
	after    atomic.Int64
	maxFlips atomic.Int32
	flips    atomic.Int32
	conns    atomic.Int32
	wg       sync.WaitGroup

	mu   sync.Mutex
	open map[net.Conn]bool
}

func (p *flipProxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.open == nil {
		p.open = map[net.Conn]bool{}
	}
	if add {
		p.open[c] = true
	} else {
		delete(p.open, c)
	}
}

// close stops accepting and cuts every relayed connection (raft's stay
// open for as long as the agents run).
func (p *flipProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.open {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *flipProxy) serve() {
	for {
		cl, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.conns.Add(1)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.relay(cl)
		}()
	}
}

func (p *flipProxy) relay(cl net.Conn) {
	p.track(cl, true)
	defer func() {
		cl.Close()
		p.track(cl, false)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	up, err := p.dial(ctx, "tcp", p.upstream)
	cancel()
	if err != nil {
		return
	}
	p.track(up, true)
	defer func() {
		up.Close()
		p.track(up, false)
	}()
	go func() {
		_, _ = io.Copy(up, cl)
		up.Close()
	}()
	buf := make([]byte, 32<<10)
	after := p.after.Load()
	var n int64
	flipped := false
	for {
		k, err := up.Read(buf)
		if k > 0 {
			if !flipped && n+int64(k) > after && p.flips.Load() < p.maxFlips.Load() {
				// One bit in the middle of a TLS record: its AEAD tag no
				// longer verifies, so the receiver must drop the
				// connection; it can never see altered plaintext.
				i := int(max(after-n, 0))
				buf[min(i, k-1)] ^= 0x10
				flipped = true
				p.flips.Add(1)
			}
			n += int64(k)
			if _, werr := cl.Write(buf[:k]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// TestStreamTLSCorruption flips bytes of a block stream in flight.
//
// Why this way: the stream runs inside mutual TLS, so a man in the middle
// cannot change plaintext; what it can do is alter ciphertext. The honest
// end-to-end test is therefore: route the target's connections to the
// source's cluster port through a Go proxy (nft DNAT in the target's
// namespace sends n1→n0:7947 to the proxy in its own namespace, which
// relays to n0:7947), flip a bit in the source→target direction mid-stream,
// and check that the corruption only costs a dropped connection: the fork
// either resumes and ends ready with bytes equal to the source, or fails
// and leaves nothing, but never becomes ready with bad data. (Frame-level
// CRC corruption behind TLS is covered in-process by internal/transfer.)
func TestStreamTLSCorruption(t *testing.T) {
	testutil.RequireCmd(t, "nft")
	const size = 64 * mib
	c, src := slowStreamCluster(t, size, 4)
	px := c.env.hosts[3]
	ln, err := ftListenNetns(px.NS, px.IP+":7947")
	if err != nil {
		t.Fatal(err)
	}
	p := &flipProxy{ln: ln, dial: px.DialContext, upstream: c.clusterAddr(0)}
	p.after.Store(4 * mib)
	p.maxFlips.Store(2)
	go p.serve()
	defer p.close()
	ftDNATVia(t, c, 1, 0, 3)

	f := c.startFork(1, api.CreateForkRequest{Source: "slow-src", Name: "flip-far", Host: "n1", Via: "stream"})
	f = c.waitFinished(1, f.ID, 120*time.Second)
	flips := p.flips.Load()
	t.Logf("proxy relayed %d connections, flipped %d bytes; fork %s: %s %s", p.conns.Load(), flips, f.ID, f.State, f.Error)
	if flips == 0 {
		t.Fatal("the proxy flipped nothing: the stream did not go through it")
	}
	switch f.State {
	case fsm.ForkReady:
		ftSameImage(t, c.imgPath(0, src.ID), c.imgPath(1, f.TargetVolume))
		st, ok := c.streamComplete(1, f.ID)
		if !ok {
			t.Fatalf("no `stream complete` log line for %s", f.ID)
		}
		t.Logf("%s", st.Line)
		if st.Reconnects < int(flips) {
			t.Errorf("reconnects=%d after %d flipped bytes: a corrupted connection was not dropped", st.Reconnects, flips)
		}
	case fsm.ForkFailed:
		testutil.Eventually(t, 30*time.Second, "n1 removes the failed fork's volume", func() bool {
			time.Sleep(100 * time.Millisecond)
			return len(ftFilesFor(c.volDir(1), f.TargetVolume)) == 0
		})
	}
	// The target must say why it reconnected: TLS refused the altered
	// record (Go's crypto/tls reports "bad record MAC").
	lines := c.logLines(1, "transfer interrupted")
	for _, l := range lines {
		t.Logf("n1: %s", l)
	}
	if f.State == fsm.ForkReady && !strings.Contains(strings.Join(lines, "\n"), "bad record MAC") {
		t.Errorf("n1 never logged a TLS MAC failure for the flipped bytes")
	}

	// Persistent corruption: every connection is hit before it can carry
	// one whole 1 MiB frame, so no session makes progress. The fork must
	// not become ready with bad data; failing (the puller gives up after
	// 30 s without progress) must leave nothing behind on either host.
	p.flips.Store(0)
	p.after.Store(256 << 10)
	p.maxFlips.Store(1 << 30)
	f = c.startFork(1, api.CreateForkRequest{Source: "slow-src", Name: "flip-far2", Host: "n1", Via: "stream"})
	begin := time.Now()
	f = c.waitFinished(1, f.ID, 90*time.Second)
	t.Logf("persistent corruption: %d flips, fork %s after %s: %s %s", p.flips.Load(), f.State,
		time.Since(begin).Round(time.Millisecond), f.ID, f.Error)
	switch f.State {
	case fsm.ForkReady:
		ftSameImage(t, c.imgPath(0, src.ID), c.imgPath(1, f.TargetVolume))
	case fsm.ForkFailed:
		testutil.Eventually(t, 30*time.Second, "n1 removes the failed fork's volume, n0 its snapshot", func() bool {
			time.Sleep(100 * time.Millisecond)
			return len(ftFilesFor(c.volDir(1), f.TargetVolume)) == 0 && len(ftFilesFor(c.volDir(0), f.TargetVolume)) == 0
		})
	}
}
