package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/api"
	"github.com/forknode/forknode/internal/testutil"
)

const (
	mib = int64(1) << 20
	// Every volume that carries data in this test has this size and the
	// pattern of patternBlock.
	dataSize = 32 * mib
	// The capacity race forks raceSize volumes onto n2, whose budget has
	// room for exactly raceFit of them.
	raceSize = 16 * mib
	raceFit  = 5
)

// testCluster is three agents, one per namespace, sharing one key.
type testCluster struct {
	t      *testing.T
	env    *netEnv
	bin    string
	dir    string
	key    string
	token  string
	agents []*agentProc
}

func (c *testCluster) name(i int) string { return fmt.Sprintf("n%d", i) }
func (c *testCluster) apiAddr(i int) string {
	return "http://" + c.env.hosts[i].IP + ":7948"
}
func (c *testCluster) gossipAddr(i int) string { return c.env.hosts[i].IP + ":7946" }

func (c *testCluster) index(name string) int {
	for i := range c.env.hosts {
		if c.name(i) == name {
			return i
		}
	}
	c.t.Fatalf("unknown node %q", name)
	return -1
}

func (c *testCluster) agentArgs(i int, join []int) []string {
	h := c.env.hosts[i]
	capacity := "2GiB"
	if i == 2 {
		capacity = fmt.Sprintf("%dMiB", raceFit*raceSize/mib+raceSize/mib/2)
	}
	args := []string{
		"--name", c.name(i), "--data-dir", filepath.Join(c.dir, c.name(i)),
		"--gossip-addr", h.IP + ":7946", "--cluster-addr", h.IP + ":7947", "--api-addr", h.IP + ":7948",
		"--bootstrap-expect", "3", "--region", "r1", "--capacity", capacity,
		"--key", c.key, "--log-level", "debug", "--sweep-interval", "500ms",
	}
	var j []string
	for _, o := range join {
		j = append(j, c.gossipAddr(o))
	}
	if len(j) > 0 {
		args = append(args, "--join", strings.Join(j, ","))
	}
	return args
}

// client talks to node `to` from inside node `from`'s namespace.
func (c *testCluster) client(from, to int) *api.Client {
	return c.env.hosts[from].APIClient(c.t, c.apiAddr(to), c.token)
}

// cli runs the forknode CLI inside node i's namespace against node i.
func (c *testCluster) cli(ctx context.Context, i int, args ...string) (string, error) {
	args = append(args, "--addr", c.apiAddr(i), "--token-file", c.key)
	return c.env.hosts[i].Exec(ctx, c.bin, args...)
}

// leader polls the given nodes until they all name the same leader (other
// than exclude: a killed leader is remembered until the survivors elect).
func (c *testCluster) leader(nodes []int, timeout time.Duration, exclude ...string) (string, error) {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		agree := ""
		ok := true
		for _, i := range nodes {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			st, err := c.client(i, i).Status(ctx)
			cancel()
			if err != nil || st.Leader == "" || (agree != "" && st.Leader != agree) || (len(exclude) > 0 && st.Leader == exclude[0]) {
				ok = false
				last = fmt.Sprintf("node %s: err=%v leader=%q", c.name(i), err, leaderOf(st))
				break
			}
			agree = st.Leader
		}
		if ok {
			return agree, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no agreed leader after %s (%s)", timeout, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func leaderOf(st *api.Status) string {
	if st == nil {
		return ""
	}
	return st.Leader
}

// patternBlock is 1 MiB block b of every data volume: pseudo-random data in
// even blocks, zeros in odd ones (so the fork paths meet zero runs).
func patternBlock(b int) []byte {
	out := make([]byte, mib)
	if b%2 == 1 {
		return out
	}
	r := rand.New(rand.NewPCG(uint64(b), 0xf0f0))
	for i := 0; i < len(out); i += 8 {
		v := r.Uint64()
		for k := 0; k < 8; k++ {
			out[i+k] = byte(v >> (8 * k))
		}
	}
	return out
}

// writePattern attaches a volume (through node via), writes the pattern
// into its loop device and detaches it.
func (c *testCluster) writePattern(t testing.TB, via int, vol string) {
	t.Helper()
	writeVolume(t, c.client(via, via), vol, func(f *os.File) error {
		for b := 0; b < int(dataSize/mib); b++ {
			if _, err := f.WriteAt(patternBlock(b), int64(b)*mib); err != nil {
				return err
			}
		}
		return nil
	})
}

// writeVolume attaches vol on its host, lets write fill the block device,
// fsyncs it and detaches.
func writeVolume(t testing.TB, cl *api.Client, vol string, write func(f *os.File) error) {
	t.Helper()
	ctx := context.Background()
	a, err := cl.Attach(ctx, vol)
	if err != nil {
		t.Fatalf("attach %s: %v", vol, err)
	}
	f, err := os.OpenFile(a.Device, os.O_WRONLY, 0)
	if err != nil {
		t.Fatalf("open %s: %v", a.Device, err)
	}
	if err := write(f); err != nil {
		f.Close()
		t.Fatalf("write %s: %v", a.Device, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		t.Fatalf("fsync %s: %v", a.Device, err)
	}
	f.Close()
	if _, err := cl.Detach(ctx, vol); err != nil {
		t.Fatalf("detach %s: %v", vol, err)
	}
}

// checkPattern attaches a volume (through node via, proxied to its host),
// reads its loop device and compares it with the pattern.
func (c *testCluster) checkPattern(t testing.TB, via int, vol string) {
	t.Helper()
	ctx := context.Background()
	cl := c.client(via, via)
	a, err := cl.Attach(ctx, vol)
	if err != nil {
		t.Fatalf("attach %s: %v", vol, err)
	}
	defer func() {
		if _, err := cl.Detach(ctx, vol); err != nil {
			t.Errorf("detach %s: %v", vol, err)
		}
	}()
	f, err := os.Open(a.Device)
	if err != nil {
		t.Fatalf("open %s: %v", a.Device, err)
	}
	defer f.Close()
	buf := make([]byte, mib)
	for b := 0; b < int(dataSize/mib); b++ {
		if _, err := io.ReadFull(io.NewSectionReader(f, int64(b)*mib, mib), buf); err != nil {
			t.Fatalf("read %s (%s on %s) block %d: %v", vol, a.Device, a.Host, b, err)
		}
		if !bytes.Equal(buf, patternBlock(b)) {
			t.Fatalf("volume %s (%s on %s): block %d differs from the source's pattern", vol, a.Device, a.Host, b)
		}
	}
}

func TestClusterNetns(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireCmd(t, "ip", "nsenter")
	start := time.Now()
	bin := forknodeBin(t)
	c := &testCluster{t: t, bin: bin, dir: t.TempDir()}
	c.env = newNetEnv(t, 3)
	c.key = filepath.Join(c.dir, "cluster.key")
	if out, err := runRoot(bin, "keygen", "-o", c.key); err != nil {
		t.Fatalf("keygen: %v: %s", err, out)
	}
	tok, err := runRoot(bin, "token", "--key", c.key)
	if err != nil {
		t.Fatalf("token: %v", err)
	}
	c.token = strings.TrimSpace(tok)

	logs := t.TempDir()
	for i := range c.env.hosts {
		var join []int
		if i > 0 {
			join = []int{0}
		}
		c.agents = append(c.agents, c.env.hosts[i].StartAgent(bin, logs, c.agentArgs(i, join)...))
	}
	ctx := context.Background()

	// Up: an agreed leader and three live hosts in the catalog.
	if _, err := c.leader([]int{0, 1, 2}, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, "three live hosts in the catalog", func() bool {
		st, err := c.client(0, 0).Status(ctx)
		if err != nil || len(st.Hosts) != 3 {
			return false
		}
		for _, h := range st.Hosts {
			if !h.Alive {
				return false
			}
		}
		return true
	})
	t.Logf("cluster up after %s", time.Since(start).Round(time.Millisecond))

	ok := t.Run("volumes and a fork through a follower", func(t *testing.T) {
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		// Through the CLI, inside n1's namespace.
		out, err := c.cli(cctx, 1, "volume", "create", "pg", "--size", "32MiB", "--app", "shop", "--host", "n0", "--wait")
		if err != nil || !strings.Contains(out, "ready") {
			t.Fatalf("volume create: %v: %s", err, out)
		}
		c.writePattern(t, 1, "pg") // attach proxied from n1 to n0
		c.checkPattern(t, 0, "pg")

		lead, err := c.leader([]int{0, 1, 2}, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		follower := (c.index(lead) + 1) % 3
		out, err = c.cli(cctx, follower, "fork", "pg", "pg-f1", "--host", "n1", "--wait")
		if err != nil || !strings.Contains(out, "ready") {
			t.Fatalf("fork through follower %s: %v: %s", c.name(follower), err, out)
		}
		f, err := c.client(follower, follower).Volume(cctx, "pg-f1")
		if err != nil || f.Host != "n1" || f.State != "ready" {
			t.Fatalf("fork volume: %v %+v", err, f)
		}
		c.checkPattern(t, 2, "pg-f1")

		// A second fork, local to the source's host, through the JSON CLI.
		out, err = c.cli(cctx, 2, "fork", "pg", "pg-f2", "--wait", "--json")
		if err != nil {
			t.Fatalf("local fork: %v: %s", err, out)
		}
		var fk api.Fork
		if err := json.Unmarshal([]byte(out), &fk); err != nil || fk.State != "ready" || fk.TargetHost != "n0" {
			t.Fatalf("local fork: %v %+v", err, fk)
		}
		c.checkPattern(t, 2, "pg-f2")
		for _, args := range [][]string{{"status"}, {"volume", "ls"}, {"forks", "ls"}, {"forks", "show", fk.ID}} {
			if out, err := c.cli(cctx, 2, args...); err != nil {
				t.Fatalf("forknode %v: %v: %s", args, err, out)
			}
		}
	})
	if !ok {
		return
	}

	ok = t.Run("a fork with a ttl is deleted when it expires", func(t *testing.T) {
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		out, err := c.cli(cctx, 1, "fork", "pg", "pg-ttl", "--host", "n1", "--ttl", "4s", "--wait")
		if err != nil || !strings.Contains(out, "ready") {
			t.Fatalf("fork --ttl: %v: %s", err, out)
		}
		v, err := c.client(1, 1).Volume(cctx, "pg-ttl")
		if err != nil || v.ExpiresAt == 0 {
			t.Fatalf("ttl fork volume: %v %+v", err, v)
		}
		if out, err := c.cli(cctx, 1, "volume", "ls"); err != nil || !strings.Contains(out, "EXPIRES") || !strings.Contains(out, "in ") {
			t.Fatalf("volume ls shows no expiry: %v: %s", err, out)
		}
		img := filepath.Join(c.dir, "n1", "volumes", v.ID+".img")
		if _, err := os.Stat(img); err != nil {
			t.Fatalf("fork image: %v", err)
		}
		// A second volume gets its expiry later, through another node.
		if _, err := c.cli(cctx, 2, "volume", "create", "scratch", "--size", "4MiB", "--host", "n2", "--wait"); err != nil {
			t.Fatal(err)
		}
		if out, err := c.cli(cctx, 0, "volume", "expire", "scratch", "--in", "2s"); err != nil || !strings.Contains(out, "expires 20") {
			t.Fatalf("volume expire: %v: %s", err, out)
		}
		testutil.Eventually(t, 30*time.Second, "expired volumes deleted, records and data", func() bool {
			_, err1 := c.client(0, 0).Volume(cctx, "pg-ttl")
			_, err2 := c.client(0, 0).Volume(cctx, "scratch")
			_, statErr := os.Stat(img)
			return api.IsCode(err1, api.CodeNotFound) && api.IsCode(err2, api.CodeNotFound) && errors.Is(statErr, os.ErrNotExist)
		})
		if v, err := c.client(0, 0).Volume(cctx, "pg"); err != nil || v.State != "ready" {
			t.Fatalf("the source survived? %v %+v", err, v)
		}
	})
	if !ok {
		return
	}

	ok = t.Run("capacity race", func(t *testing.T) {
		rctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		src, err := c.client(0, 0).CreateVolume(rctx, api.CreateVolumeRequest{Name: "race-src", Size: raceSize, Host: "n0"}, true)
		if err != nil || src.State != "ready" {
			t.Fatalf("race source: %v %+v", err, src)
		}
		type result struct {
			fork *api.Fork
			err  error
		}
		results := make([]result, 20)
		var wg sync.WaitGroup
		for i := range results {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				node := i % 3 // sent through every node
				f, err := c.client(node, node).CreateFork(rctx, api.CreateForkRequest{Source: "race-src", Name: fmt.Sprintf("race-%02d", i), Host: "n2"}, "")
				results[i] = result{f, err}
			}(i)
		}
		wg.Wait()
		var won []*api.Fork
		for i, r := range results {
			switch {
			case r.err == nil:
				if r.fork.TargetHost != "n2" {
					t.Errorf("race-%02d placed on %s, asked for n2", i, r.fork.TargetHost)
				}
				won = append(won, r.fork)
			case api.IsCode(r.err, api.CodeNoRoom):
				if !strings.Contains(r.err.Error(), "room") {
					t.Errorf("race-%02d: unclear no-room message: %v", i, r.err)
				}
			default:
				t.Errorf("race-%02d: unexpected error: %v", i, r.err)
			}
		}
		if len(won) != raceFit {
			t.Fatalf("%d forks placed on n2, want exactly %d", len(won), raceFit)
		}
		// Every node's catalog (read locally, so it may lag by a few ms)
		// must show the five reservations on n2 and never more than a
		// budget.
		for node := 0; node < 3; node++ {
			var lastUsed int64
			testutil.Eventually(t, 5*time.Second, fmt.Sprintf("%s sees %d reserved on n2", c.name(node), raceFit*raceSize), func() bool {
				st, err := c.client(node, node).Status(rctx)
				if err != nil {
					return false
				}
				for _, h := range st.Hosts {
					if h.Used > h.Budget {
						t.Fatalf("%s: host %s over budget: used %d > budget %d", c.name(node), h.ID, h.Used, h.Budget)
					}
					if h.ID == "n2" {
						lastUsed = h.Used
					}
				}
				return lastUsed == raceFit*raceSize
			})
		}
		for _, f := range won {
			if _, err := c.client(2, 2).WaitFork(rctx, f.ID, 200*time.Millisecond, nil); err != nil {
				t.Errorf("race fork %s: %v", f.ID, err)
			}
		}
	})
	if !ok {
		return
	}

	t.Run("bad input", func(t *testing.T) {
		hc := c.env.hosts[0].HTTPClient(10 * time.Second)
		for _, tc := range []struct {
			name, method, path, body, token string
			status                          int
			code                            string
		}{
			{"unknown source", "POST", "/v1/forks", `{"source":"nope","name":"x1"}`, c.token, 404, api.CodeNotFound},
			{"duplicate name", "POST", "/v1/volumes", `{"name":"pg","size":4096}`, c.token, 409, api.CodeExists},
			{"duplicate fork name", "POST", "/v1/forks", `{"source":"pg","name":"pg-f1"}`, c.token, 409, api.CodeExists},
			{"bad name", "POST", "/v1/volumes", `{"name":"Bad Name!","size":4096}`, c.token, 400, api.CodeInvalid},
			{"bad size", "POST", "/v1/volumes", `{"name":"x2","size":1000}`, c.token, 400, api.CodeInvalid},
			{"malformed json", "POST", "/v1/forks", `{"source":`, c.token, 400, api.CodeInvalid},
			{"unknown field", "POST", "/v1/volumes", `{"name":"x3","size":4096,"color":"red"}`, c.token, 400, api.CodeInvalid},
			{"unknown route", "GET", "/v1/nope", "", c.token, 404, api.CodeNotFound},
			{"no token", "GET", "/v1/status", "", "", 401, api.CodeUnauthorized},
			{"wrong token", "POST", "/v1/forks", `{"source":"pg","name":"x4"}`, "0000", 401, api.CodeUnauthorized},
		} {
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			req, _ := http.NewRequest(tc.method, c.apiAddr(1)+tc.path, body)
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var eb api.ErrorBody
			if resp.StatusCode != tc.status || json.Unmarshal(b, &eb) != nil || eb.Code != tc.code || eb.Error == "" {
				t.Errorf("%s: got %d %s, want %d %s with a message", tc.name, resp.StatusCode, b, tc.status, tc.code)
			} else {
				t.Logf("%s: %d %s", tc.name, resp.StatusCode, eb.Error)
			}
		}
	})

	ok = t.Run("node cut off from the leader answers 503 quickly", func(t *testing.T) {
		lead, err := c.leader([]int{0, 1, 2}, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		cut := (c.index(lead) + 2) % 3
		h := c.env.hosts[cut]
		if err := h.LinkDown(); err != nil {
			t.Fatal(err)
		}
		restored := false
		defer func() {
			if !restored {
				h.LinkUp()
			}
		}()
		cl := c.client(cut, cut)
		cl.Timeout = 10 * time.Second
		begin := time.Now()
		_, err = cl.CreateFork(ctx, api.CreateForkRequest{Source: "pg", Name: "cut-off"}, "")
		took := time.Since(begin)
		var ae *api.Error
		if !asAPIError(err, &ae) || ae.Status != 503 {
			t.Fatalf("cut-off node %s: got %v after %s, want 503", c.name(cut), err, took)
		}
		if took > 8*time.Second {
			t.Fatalf("cut-off node answered 503 after %s, want < 8s", took)
		}
		t.Logf("cut-off node %s: %d %s after %s", c.name(cut), ae.Status, ae.Message, took.Round(time.Millisecond))
		if err := h.LinkUp(); err != nil {
			t.Fatal(err)
		}
		restored = true
		// Back on the link, writes through it work again.
		testutil.Eventually(t, 45*time.Second, "writes through the reconnected node", func() bool {
			_, err := cl.CreateVolume(ctx, api.CreateVolumeRequest{Name: "after-cut", Size: mib, Host: c.name(cut)}, false)
			return err == nil || api.IsCode(err, api.CodeExists)
		})
	})
	if !ok {
		return
	}

	t.Run("leader killed, then restarted", func(t *testing.T) {
		lead, err := c.leader([]int{0, 1, 2}, 20*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		li := c.index(lead)
		var survivors []int
		for i := range c.env.hosts {
			if i != li {
				survivors = append(survivors, i)
			}
		}
		killed := time.Now()
		c.agents[li].Kill(syscall.SIGKILL)
		newLead, err := c.leader(survivors, 30*time.Second, lead)
		if err != nil {
			t.Fatalf("after killing leader %s: %v", lead, err)
		}
		if newLead == lead {
			t.Fatalf("survivors still name the killed node %s as leader", lead)
		}
		t.Logf("killed leader %s; new leader %s after %s", lead, newLead, time.Since(killed).Round(time.Millisecond))

		// Forks are still accepted: fork a volume whose host survived.
		source := "pg"
		if lead == "n0" {
			source = "pg-f1" // on n1
		}
		via := survivors[len(survivors)-1]
		fctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		f, err := c.client(via, via).CreateFork(fctx, api.CreateForkRequest{Source: source, Name: "after-failover"}, "failover-1")
		if err != nil {
			t.Fatalf("fork after failover through %s: %v", c.name(via), err)
		}
		if _, err := c.client(via, via).WaitFork(fctx, f.ID, 200*time.Millisecond, nil); err != nil {
			t.Fatalf("fork after failover: %v", err)
		}
		c.checkPattern(t, via, "after-failover")

		// Restart the old leader on its data dir: it rejoins, and its own
		// catalog shows both old volumes and the one made while it was down.
		c.agents[li] = c.env.hosts[li].StartAgent(c.bin, filepath.Dir(c.agents[li].Log), c.agentArgs(li, survivors)...)
		back := c.client(li, li)
		testutil.Eventually(t, 60*time.Second, "restarted node serves the whole catalog", func() bool {
			vols, err := back.Volumes(ctx)
			if err != nil {
				return false
			}
			names := map[string]bool{}
			for _, v := range vols {
				names[v.Name] = true
			}
			return names["pg"] && names["pg-f1"] && names["race-src"] && names["after-failover"]
		})
		if _, err := c.leader([]int{0, 1, 2}, 30*time.Second); err != nil {
			t.Fatalf("after restart: %v", err)
		}
	})
	t.Logf("TestClusterNetns took %s", time.Since(start).Round(time.Millisecond))
}

func asAPIError(err error, target **api.Error) bool { return errors.As(err, target) }

// runRoot runs a command in the root namespace (keygen, token: no network).
func runRoot(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}
