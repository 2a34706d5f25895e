package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/forknode/forknode/internal/api"
	"github.com/forknode/forknode/internal/cluster"
	"github.com/forknode/forknode/internal/cow"
	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/keys"
	"github.com/hashicorp/go-hclog"
)

// The dev cluster: three nodes in one region. dev1 is small, so that once
// the demo's local forks fill it a fork of its volume has to go elsewhere.
var devCapacity = [3]int64{256 << 20, 1 << 30, 1 << 30}

const devRegion = "dev"

// defaultAPIAddr is an agent's API address, and devDefaultBase puts dev's
// first node there too, so that the CLI's default address reaches either.
const (
	defaultAPIAddr = "127.0.0.1:7948"
	devDefaultBase = 7948
	legacyDevBase  = 7400 // the default before 7948
)

// Port layout from --base-port P: APIs on P..P+2 (so the CLI's default
// address is dev1), gossip on P+10.., cluster on P+20...
func devAddrs(base, i int) (api, gossip, clusterAddr string) {
	a := func(p int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)) }
	return a(base + i), a(base + 10 + i), a(base + 20 + i)
}

func runDev(args []string) error {
	fset := newFlagSet("dev", "dev [--dir D] [--base-port P] [--demo]")
	dir := fset.String("dir", "", "state directory (default ./forknode-dev; with --demo a fresh temporary directory)")
	base := fset.Int("base-port", devDefaultBase, "first port: APIs on P..P+2, gossip on P+10.., cluster on P+20..")
	demo := fset.Bool("demo", false, "seed a volume, fork it through every path, verify every fork byte for byte, print a summary, exit")
	logLevel := fset.String("log-level", "warn", "node log level")
	pos, err := parseInterspersed(fset, args)
	if err != nil {
		return err
	}
	if err := wantArgs("dev", pos, 0, "no arguments"); err != nil {
		return err
	}
	if *base < 1 || *base > 65535-22 {
		return usagef("dev: --base-port %d out of range", *base)
	}
	level := hclog.LevelFromString(*logLevel)
	if level == hclog.NoLevel {
		return usagef("dev: --log-level %q: want trace, debug, info, warn or error", *logLevel)
	}
	tempDir := false
	var undo func()
	if *dir == "" && *demo {
		d, err := os.MkdirTemp("", "forknode-demo-")
		if err != nil {
			return err
		}
		*dir, tempDir = d, true
		undo = func() { os.RemoveAll(d) }
	} else {
		if *dir == "" {
			*dir = "forknode-dev"
		}
		if undo, err = makeDevDir(*dir); err != nil {
			return err
		}
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: "dev", Level: level, Output: os.Stderr})
	km, err := devKey(filepath.Join(*dir, "cluster.key"))
	if err != nil {
		undo()
		return err
	}
	// Raft remembers its peers' addresses, so a directory goes on with the
	// ports it was made with unless --base-port says otherwise (an older
	// release defaulted to 7400).
	portFile := filepath.Join(*dir, "base-port")
	explicit := false
	fset.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "base-port" })
	if raw, err := os.ReadFile(portFile); err == nil && !explicit {
		if p, err := strconv.Atoi(strings.TrimSpace(string(raw))); err == nil && p >= 1 && p <= 65535-22 {
			*base = p
		}
	} else if errors.Is(err, fs.ErrNotExist) && !explicit && cluster.HasRaftLog(filepath.Join(*dir, "dev1")) {
		*base = legacyDevBase // made by a release that kept no port file
	}
	nodes, err := startDev(*dir, *base, km, logger)
	if err != nil {
		undo()
		return err
	}

	closeAll := func() {
		for i := len(nodes) - 1; i >= 0; i-- {
			if err := nodes[i].Close(); err != nil {
				logger.Warn("close", "node", nodes[i].Name(), "error", err)
			}
		}
	}
	fmt.Printf("forknode dev cluster in %s (key fingerprint %s)\n", *dir, km.Fingerprint())
	for i, n := range nodes {
		fmt.Printf("  %s  api http://%s  capacity %s  volumes %s\n", n.Name(), n.APIAddr(), humanSize(devCapacity[i]),
			filepath.Join(*dir, n.Name(), "volumes"))
	}
	token, note, err := devToken(nodes[0], km, time.Now())
	if err != nil {
		closeAll()
		undo()
		if !explicit {
			return fmt.Errorf("%w (a directory made on other ports needs them again: --base-port P)", err)
		}
		return err
	}
	// Recorded once the cluster works on these ports.
	if err := os.WriteFile(portFile, []byte(strconv.Itoa(*base)+"\n"), 0o600); err != nil {
		logger.Warn("record the dev ports", "file", portFile, "error", err)
	}
	if note != "" {
		fmt.Printf("\n%s\n", note)
	}
	fmt.Printf("\nexport FORKNODE_ADDR=http://%s FORKNODE_TOKEN=%s\n\n", nodes[0].APIAddr(), token)

	if *demo {
		err := runDemo(nodes, token)
		// Shutdown chatter (peers leaving, connections dropping) is not
		// what the demo shows; keep errors only.
		logger.SetLevel(hclog.Off)
		closeAll()
		if err == nil && tempDir {
			os.RemoveAll(*dir)
		} else if err != nil {
			fmt.Printf("state kept in %s\n", *dir)
		}
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	fmt.Println("running; Ctrl-C to stop")
	<-sig
	fmt.Println("stopping")
	logger.SetLevel(hclog.Off) // peers leaving one by one is expected noise
	closeAll()
	return nil
}

// makeDevDir creates dir if needed and returns what undoes a failed start
// in it: a dir this start created goes (with any parents it created), an
// empty one is emptied again, and one that held anything is left alone,
// since what was there is someone's cluster.
func makeDevDir(dir string) (undo func(), err error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	// The topmost directory that does not exist yet: MkdirAll creates it
	// and everything under it.
	created := ""
	for p := abs; ; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			break
		}
		created = p
		if filepath.Dir(p) == p {
			break
		}
	}
	wasEmpty := false
	if created == "" {
		entries, err := os.ReadDir(abs)
		if err != nil {
			return nil, fmt.Errorf("dev dir: %w", err)
		}
		wasEmpty = len(entries) == 0
	}
	if err := os.MkdirAll(abs, 0o750); err != nil {
		return nil, err
	}
	return func() {
		switch {
		case created != "":
			os.RemoveAll(created)
		case wasEmpty:
			entries, _ := os.ReadDir(abs)
			for _, e := range entries {
				os.RemoveAll(filepath.Join(abs, e.Name()))
			}
		}
	}, nil
}

func devKey(path string) (*keys.Material, error) {
	m, err := keys.Load(path)
	if err == nil {
		return m, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if m, err = keys.Generate(); err != nil {
		return nil, err
	}
	return m, m.Write(path)
}

// startDev starts the three nodes; on an error it closes those it started.
func startDev(dir string, base int, km *keys.Material, logger hclog.Logger) (nodes []*cluster.Node, err error) {
	defer func() {
		if err != nil {
			for i := len(nodes) - 1; i >= 0; i-- {
				nodes[i].Close()
			}
			nodes = nil
		}
	}()
	_, firstGossip, _ := devAddrs(base, 0)
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("dev%d", i+1)
		apiAddr, gossipAddr, clusterAddr := devAddrs(base, i)
		volDir := filepath.Join(dir, name, "volumes")
		if err := os.MkdirAll(volDir, 0o750); err != nil {
			return nodes, fmt.Errorf("%s: %w", name, err)
		}
		be, err := cow.OpenFileBackend(volDir, devCapacity[i], name, logger.Named(name))
		if err != nil {
			return nodes, fmt.Errorf("%s: file backend: %w", name, err)
		}
		cfg := cluster.Config{
			Name: name, DataDir: filepath.Join(dir, name), Region: devRegion,
			GossipAddr: gossipAddr, ClusterAddr: clusterAddr, APIAddr: apiAddr,
			BootstrapExpect: 3, Backend: be, Keys: km, Logger: logger.Named(name),
			StreamCodec: "auto", Fast: true,
		}
		if i > 0 {
			cfg.Join = []string{firstGossip}
		}
		n, err := cluster.New(cfg)
		if err != nil {
			return nodes, fmt.Errorf("start %s (ports %s, %s, %s; is another dev cluster running? try --base-port): %w",
				name, apiAddr, gossipAddr, clusterAddr, err)
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}

// devTokenTTL is how long the token dev issues when the cluster token of
// its directory has been revoked stays valid.
const devTokenTTL = 7 * 24 * time.Hour

// devToken is the token dev prints and the demo uses: the cluster token,
// unless `forknode token revoke cluster` retired it in this directory's
// catalog. Then dev issues an admin token (it holds the key) and says so,
// so that a dev directory stays usable after its cluster token is revoked.
// It waits for the catalog to catch up, since a restarted directory learns
// of the revocation only by replaying its log.
func devToken(n *cluster.Node, km *keys.Material, now time.Time) (token, note string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := n.Barrier(ctx); err != nil {
		return "", "", fmt.Errorf("dev: wait for the catalog: %w", err)
	}
	_, err = n.VerifyToken(km.APIToken())
	switch {
	case err == nil:
		return km.APIToken(), "", nil
	case !errors.Is(err, fsm.ErrTokenRevoked):
		return "", "", fmt.Errorf("dev: check the cluster token: %w", err)
	}
	tok, c, err := km.IssueToken(keys.TokenClaims{Name: "forknode-dev", Scope: keys.ScopeAdmin, Expires: now.Add(devTokenTTL).Unix()}, now)
	if err != nil {
		return "", "", fmt.Errorf("dev: issue a token: %w", err)
	}
	return tok, fmt.Sprintf("The cluster token is revoked in this directory; dev issued admin token %s, valid until %s.",
		c.ID, time.Unix(c.Expires, 0).UTC().Format(time.RFC3339)), nil
}

// ---- the demo

const (
	demoBlock = 1 << 20
	demoSize  = 64 << 20
)

// demoPattern is block i of the seed volume: holes, pseudo-random data,
// written zeros and half-filled blocks, so every fork path meets data,
// holes and zero runs.
func demoPattern(i int) (data []byte, write bool) {
	b := make([]byte, demoBlock)
	switch i % 4 {
	case 0: // hole: never written
		return b, false
	case 2: // zeros, written explicitly
		return b, true
	}
	r := rand.New(rand.NewPCG(uint64(i), 0x5eed))
	n := demoBlock
	if i%4 == 3 {
		n = demoBlock / 2
	}
	for j := 0; j < n; j += 8 {
		v := r.Uint64()
		for k := 0; k < 8; k++ {
			b[j+k] = byte(v >> (8 * k))
		}
	}
	return b, true
}

type demoRow struct {
	name, want string
	fork       *api.Fork
	skipped    string
	err        error
}

func runDemo(nodes []*cluster.Node, token string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var clients []*api.Client
	byName := map[string]*cluster.Node{}
	for _, n := range nodes {
		c, err := api.NewClient(n.APIAddr(), token)
		if err != nil {
			return err
		}
		clients = append(clients, c)
		byName[n.Name()] = n
	}
	c := clients[0]

	fmt.Println("waiting for the cluster: leader and 3 live hosts in the catalog...")
	if err := waitCluster(ctx, c); err != nil {
		return err
	}
	if err := clearDemo(ctx, c); err != nil {
		return fmt.Errorf("remove the volumes of an earlier demo in this dir: %w", err)
	}

	src, err := c.CreateVolume(ctx, api.CreateVolumeRequest{Name: "demo-src", App: "demo", Size: demoSize, Host: "dev1"}, true)
	if err != nil {
		return fmt.Errorf("create seed volume: %w", err)
	}
	if src.State != "ready" {
		return fmt.Errorf("seed volume %s is %s, not ready", src.ID, src.State)
	}
	if err := seedVolume(ctx, nodes[0].Backend(), src.ID); err != nil {
		return fmt.Errorf("seed volume %s: %w", src.ID, err)
	}
	fmt.Printf("seeded %s (%s) on dev1: %s, data/holes/zero runs\n\n", src.Name, src.ID, humanSize(src.Size))

	var rows []demoRow
	i := 0
	fork := func(name, want string, req api.CreateForkRequest) {
		// Each fork goes through a different node: followers forward.
		cl := clients[i%len(clients)]
		i++
		row := demoRow{name: name, want: want}
		req.Name = name
		f, err := cl.CreateFork(ctx, req, "")
		if err != nil {
			row.err = fmt.Errorf("create: %w", err)
			rows = append(rows, row)
			return
		}
		fmt.Printf("%s: fork %s via %s, %s -> %s (asked through %s)\n", name, f.ID, f.Path, f.SourceHost, f.TargetHost, cl.BaseURL())
		lastDone := int64(-1)
		final, err := cl.WaitFork(ctx, f.ID, 100*time.Millisecond, func(p api.Fork) {
			if p.State == "running" && p.BytesDone != lastDone {
				lastDone = p.BytesDone
				fmt.Printf("  %s: %s\n", name, progressLine(p))
			}
		})
		row.fork = final
		if err != nil {
			row.err = err
		} else if string(final.Path) != want {
			row.err = fmt.Errorf("planner chose %s, demo expected %s", final.Path, want)
		} else {
			row.err = verifyFork(ctx, nodes[0].Backend(), src.ID, byName[final.TargetHost], final.TargetVolume)
		}
		rows = append(rows, row)
	}

	feat := nodes[0].Backend().Features()
	if feat.Clone {
		fork("demo-clone", "clone", api.CreateForkRequest{Source: "demo-src", Via: "clone"})
	} else {
		fs := feat.Filesystem
		if fs == "" {
			fs = "this"
		}
		reason := fmt.Sprintf("clone unavailable: the %s filesystem under the dev dir has no reflink (FICLONE); use XFS (mkfs.xfs -m reflink=1) or btrfs for O(1) clones", fs)
		fmt.Println(reason)
		rows = append(rows, demoRow{name: "demo-clone", want: "clone", skipped: reason})
	}
	fork("demo-copy", "copy", api.CreateForkRequest{Source: "demo-src", Via: "copy"})
	// This copy joins app "demo" (a fork joins an app only when asked): it
	// is the replica the planner may fork from when dev1 is full.
	fork("demo-stream", "stream", api.CreateForkRequest{Source: "demo-src", Via: "stream", Host: "dev2", App: "demo"})

	// Fill dev1, so the next fork of demo-src cannot stay on its host: the
	// planner forks demo-stream (same app, on dev2) there instead. Without
	// reflink a fork's snapshot is a full copy that the catalog reserves
	// on the source host, and a stream from dev1 (demo-stream3) reads from
	// one: leave room for that snapshot, but not for a fork beside it.
	leave := int64(0)
	if !feat.Clone {
		leave = demoSize
	}
	if free, err := hostFree(ctx, c, "dev1"); err != nil {
		return err
	} else if free-leave >= 4096 {
		fill, err := c.CreateVolume(ctx, api.CreateVolumeRequest{Name: "demo-filler", App: "filler", Size: (free - leave) &^ 4095, Host: "dev1"}, true)
		if err != nil {
			return fmt.Errorf("fill dev1: %w", err)
		}
		if leave > 0 {
			fmt.Printf("filled dev1 with %s (%s), leaving room for one snapshot (%s: a full copy without reflink) but not for a fork beside it\n",
				fill.Name, humanSize(fill.Size), humanSize(leave))
		} else {
			fmt.Printf("filled dev1 with %s (%s)\n", fill.Name, humanSize(fill.Size))
		}
	}
	fork("demo-replica", "replica", api.CreateForkRequest{Source: "demo-src"})
	fork("demo-stream3", "stream", api.CreateForkRequest{Source: "demo-src", Region: devRegion, Host: "dev3"})

	return printDemo(rows)
}

// demoVolumes are the volumes runDemo makes, in the order it makes them.
var demoVolumes = []string{"demo-src", "demo-clone", "demo-copy", "demo-stream", "demo-filler", "demo-replica", "demo-stream3"}

// clearDemo removes what an earlier demo left in a --dir it is run on
// again: the names would clash, and the filler leaves dev1 full. Only the
// demo's own volume names are touched.
func clearDemo(ctx context.Context, c *api.Client) error {
	vols, err := c.Volumes(ctx)
	if err != nil {
		return err
	}
	var old []api.Volume
	for i := len(demoVolumes) - 1; i >= 0; i-- { // forks before their sources
		for _, v := range vols {
			if v.Name == demoVolumes[i] {
				old = append(old, v)
			}
		}
	}
	if len(old) == 0 {
		return nil
	}
	// A fork an interrupted run left in flight holds its volumes.
	forks, err := c.Forks(ctx)
	if err != nil {
		return err
	}
	for _, f := range forks {
		if !f.Finished() && slices.Contains(demoVolumes, f.Name) {
			if _, err := c.CancelFork(ctx, f.ID); err != nil && !api.IsCode(err, api.CodeConflict) {
				return fmt.Errorf("cancel fork %s: %w", f.ID, err)
			}
		}
	}
	var names []string
	for _, v := range old {
		if _, err := c.DeleteVolume(ctx, v.ID); err != nil && !api.IsCode(err, api.CodeNotFound) {
			return fmt.Errorf("volume %s (%s): %w", v.Name, v.ID, err)
		}
		names = append(names, v.Name)
	}
	for _, v := range old {
		if err := waitVolumeGone(ctx, c, v.ID, time.Minute); err != nil {
			return err
		}
	}
	slices.Reverse(names)
	fmt.Printf("removed the volumes of an earlier demo in this dir: %s\n", strings.Join(names, ", "))
	return nil
}

func waitCluster(ctx context.Context, c *api.Client) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := c.Status(ctx)
		if err == nil && st.Leader != "" {
			alive := 0
			for _, h := range st.Hosts {
				if h.Alive {
					alive++
				}
			}
			if alive == 3 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("leader %q, %d hosts in the catalog", st.Leader, len(st.Hosts))
			}
			return fmt.Errorf("cluster not ready after 60s: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func hostFree(ctx context.Context, c *api.Client, host string) (int64, error) {
	st, err := c.Status(ctx)
	if err != nil {
		return 0, err
	}
	for _, h := range st.Hosts {
		if h.ID == host {
			return h.Free, nil
		}
	}
	return 0, fmt.Errorf("host %s not in the catalog", host)
}

func seedVolume(ctx context.Context, b cow.Backend, id string) error {
	dev, err := b.Open(ctx, id, true)
	if err != nil {
		return err
	}
	for i := 0; i < demoSize/demoBlock; i++ {
		data, write := demoPattern(i)
		if !write {
			continue
		}
		if i%4 == 3 {
			data = data[:demoBlock/2]
		}
		if _, err := dev.WriteAt(data, int64(i)*demoBlock); err != nil {
			dev.Close()
			return err
		}
	}
	if err := dev.Sync(); err != nil {
		dev.Close()
		return err
	}
	return dev.Close()
}

// verifyFork reads the source and the fork (each on its own host's
// backend) and compares them with the seed pattern, block by block.
func verifyFork(ctx context.Context, srcBackend cow.Backend, srcID string, target *cluster.Node, targetID string) error {
	if target == nil {
		return fmt.Errorf("target host not in this dev cluster")
	}
	src, err := srcBackend.Open(ctx, srcID, false)
	if err != nil {
		return fmt.Errorf("open source: %w", err)
	}
	defer src.Close()
	dst, err := target.Backend().Open(ctx, targetID, false)
	if err != nil {
		return fmt.Errorf("open fork %s on %s: %w", targetID, target.Name(), err)
	}
	defer dst.Close()
	if dst.Size() != src.Size() {
		return fmt.Errorf("fork is %d bytes, source %d", dst.Size(), src.Size())
	}
	a, b := make([]byte, demoBlock), make([]byte, demoBlock)
	for i := 0; i < demoSize/demoBlock; i++ {
		off := int64(i) * demoBlock
		if _, err := src.ReadAt(a, off); err != nil {
			return fmt.Errorf("read source at %d: %w", off, err)
		}
		if _, err := dst.ReadAt(b, off); err != nil {
			return fmt.Errorf("read fork at %d: %w", off, err)
		}
		want, _ := demoPattern(i)
		if !bytes.Equal(a, want) {
			return fmt.Errorf("source differs from the seed pattern in block %d", i)
		}
		if !bytes.Equal(b, a) {
			for j := range a {
				if a[j] != b[j] {
					return fmt.Errorf("fork differs from source at byte %d", off+int64(j))
				}
			}
		}
	}
	return nil
}

func printDemo(rows []demoRow) error {
	fmt.Println()
	tw := table(os.Stdout)
	fmt.Fprintln(tw, "FORK\tWANTED\tPATH\tHOSTS\tCOPIED\tTOOK\tRESULT")
	failed := 0
	for _, r := range rows {
		path, hosts, size, took := "-", "-", "-", "-"
		if r.fork != nil {
			path = string(r.fork.Path)
			hosts = r.fork.SourceHost + " -> " + r.fork.TargetHost
			size = humanSize(r.fork.BytesTotal)
			took = forkDuration(*r.fork)
		}
		result := "ok: verified byte for byte"
		switch {
		case r.skipped != "":
			result = "skipped: " + r.skipped
		case r.err != nil:
			result = "FAILED: " + r.err.Error()
			failed++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.name, r.want, path, hosts, size, took, result)
	}
	tw.Flush()
	if failed > 0 {
		return fmt.Errorf("demo: %d of %d forks failed", failed, len(rows))
	}
	fmt.Println("\ndemo: all forks verified")
	return nil
}
