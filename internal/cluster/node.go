package cluster

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/forknode/forknode/internal/cow"
	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/keys"
	"github.com/hashicorp/go-hclog"
	sockaddr "github.com/hashicorp/go-sockaddr"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// Node is one forknode agent: gossip, raft, the HTTP API and the executor.
type Node struct {
	cfg    Config
	logger hclog.Logger

	lock    *DataDirLock
	fsm     *fsm.FSM
	raft    *raft.Raft
	store   *raftboltdb.BoltStore
	trans   *raft.NetworkTransport
	gossip  *gossip
	mux     *mux
	apiLn   net.Listener
	httpSrv *http.Server
	exec    *executor

	// lagWarned: members already warned about for running older catalog
	// rules, with the version warned about. Only the leader loop uses it.
	lagWarned map[string]uint32
	claimed   claimer // the backend's storage, bound to this node
	// reconciles counts the leader's reconcile passes (tests wait on it).
	reconciles atomic.Int64
	// sweeps counts the leader's completed janitor sweeps (tests wait on it).
	sweeps atomic.Int64

	hasState    bool
	clusterAddr string
	apiAddr     string

	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	closeErr error
	once     sync.Once
}

// New starts a node. It returns once every listener is up; joining and
// bootstrapping continue in the background.
func New(cfg Config) (*Node, error) {
	if cfg.Name == "" || cfg.DataDir == "" || cfg.Backend == nil || cfg.Keys == nil {
		cfg.DataDirLock.Release()
		return nil, fmt.Errorf("cluster: name, data dir, backend and key are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Region == "" {
		cfg.Region = "default"
	}
	if cfg.ForkRetention == 0 {
		cfg.ForkRetention = DefaultForkRetention
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = 30 * time.Second
		if cfg.Fast {
			cfg.SweepInterval = 200 * time.Millisecond
		}
	}
	if cfg.CapacityInterval <= 0 {
		cfg.CapacityInterval = 30 * time.Second
		if cfg.Fast {
			cfg.CapacityInterval = 200 * time.Millisecond
		}
	}
	if cfg.DeadHostTimeout == 0 {
		cfg.DeadHostTimeout = 15 * time.Second
		if cfg.Fast {
			cfg.DeadHostTimeout = 3 * time.Second
		}
	}
	lock := cfg.DataDirLock
	if lock == nil {
		var err error
		if lock, err = LockDataDir(cfg.DataDir); err != nil {
			return nil, err
		}
	}
	n := &Node{cfg: cfg, logger: cfg.Logger.With("node", cfg.Name), lock: lock, lagWarned: map[string]uint32{}}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	ok := false
	defer func() {
		if !ok {
			n.shutdown(false)
		}
	}()
	// A backend whose storage could be shared by mistake (a directory)
	// is bound to this node before the executor takes anything there it
	// does not know for a stray.
	if c, isClaimer := cfg.Backend.(claimer); isClaimer {
		if err := c.Claim(cfg.Name); err != nil {
			return nil, err
		}
		n.claimed = c
	}

	srvTLS, cliTLS, err := cfg.Keys.TLS(cfg.Name)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.ClusterAddr)
	if err != nil {
		return nil, fmt.Errorf("cluster port: %w", err)
	}
	n.clusterAddr, err = advertisable(ln.Addr().String(), cfg.AdvertiseIP)
	if err != nil {
		ln.Close()
		return nil, err
	}
	n.mux = newMux(ln, srvTLS, cliTLS, n.logger.Named("mux"))

	n.apiLn, err = net.Listen("tcp", cfg.APIAddr)
	if err != nil {
		return nil, fmt.Errorf("api port: %w", err)
	}
	n.apiAddr, err = advertisable(n.apiLn.Addr().String(), cfg.AdvertiseIP)
	if err != nil {
		return nil, err
	}
	if cfg.APITLS {
		apiTLS, err := cfg.Keys.APIServerTLS(cfg.Name)
		if err != nil {
			return nil, fmt.Errorf("api tls: %w", err)
		}
		n.apiLn = tls.NewListener(n.apiLn, apiTLS)
	}

	n.fsm = fsm.New(n.logger.Named("fsm"))
	if err := n.setupRaft(); err != nil {
		return nil, err
	}

	feat := cfg.Backend.Features()
	capa, err := cfg.Backend.Capacity(n.ctx)
	if err != nil {
		return nil, fmt.Errorf("backend capacity: %w", err)
	}
	meta := nodeMeta{
		Region: cfg.Region, ClusterAddr: n.clusterAddr, APIAddr: n.apiAddr,
		Backend: feat.Backend, CanClone: feat.Clone, Budget: capa.Budget,
		SnapPermille: feat.SnapshotPermille, SnapMin: feat.SnapshotMin, SnapGrain: feat.SnapshotGrain,
		Bootstrapped: n.hasState, Version: n.catalogVersion(),
	}
	n.gossip, err = newGossip(cfg, meta, n.logger)
	if err != nil {
		return nil, err
	}

	n.exec = newExecutor(n)
	n.mux.handle(protoForward, n.serveForward)
	n.mux.handle(protoTransfer, n.exec.serveTransfer)

	n.httpSrv = &http.Server{
		Handler:           n.httpHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	n.goFn(func() { n.mux.serve() })
	n.goFn(func() {
		if err := n.httpSrv.Serve(n.apiLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.logger.Error("api server stopped", "error", err)
		}
	})
	n.goFn(n.joinLoop)
	n.goFn(n.reconnectLoop)
	n.goFn(n.bootstrapLoop)
	n.goFn(n.leaderLoop)
	n.goFn(n.capacityLoop)
	n.goFn(n.exec.run)
	if n.exec.pacer != nil {
		n.goFn(func() { n.exec.pacer.Run(n.ctx) })
	}
	ok = true
	n.logger.Info("node started", "cluster_addr", n.clusterAddr, "api_addr", n.apiAddr,
		"gossip_addr", cfg.GossipAddr, "region", cfg.Region, "backend", feat.Backend, "clone", feat.Clone,
		"key", cfg.Keys.Fingerprint())
	return n, nil
}

func (n *Node) goFn(fn func()) {
	n.wg.Add(1)
	go func() { defer n.wg.Done(); fn() }()
}

func (n *Node) setupRaft() error {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(n.cfg.Name)
	rc.Logger = n.logger.Named("raft")
	if n.cfg.Fast {
		rc.HeartbeatTimeout = 100 * time.Millisecond
		rc.ElectionTimeout = 100 * time.Millisecond
		rc.LeaderLeaseTimeout = 100 * time.Millisecond
		rc.CommitTimeout = 5 * time.Millisecond
	}
	store, err := raftboltdb.NewBoltStore(filepath.Join(n.cfg.DataDir, "raft.db"))
	if err != nil {
		return fmt.Errorf("raft store: %w", err)
	}
	n.store = store
	snaps, err := raft.NewFileSnapshotStoreWithLogger(n.cfg.DataDir, 2, n.logger.Named("snapshots"))
	if err != nil {
		return fmt.Errorf("raft snapshots: %w", err)
	}
	advertise, err := net.ResolveTCPAddr("tcp", n.clusterAddr)
	if err != nil {
		return err
	}
	n.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  newRaftLayer(n.mux, advertise),
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  n.logger.Named("raft-net"),
	})
	n.hasState, err = raft.HasExistingState(store, store, snaps)
	if err != nil {
		return fmt.Errorf("raft state: %w", err)
	}
	r, err := raft.NewRaft(rc, n.fsm, store, store, snaps, n.trans)
	if err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	n.raft = r
	return nil
}

// joinLoop joins the gossip pool, retrying until one address answers.
func (n *Node) joinLoop() {
	if len(n.cfg.Join) == 0 {
		return
	}
	backoff := 100 * time.Millisecond
	for {
		cnt, err := n.gossip.join(n.cfg.Join)
		if err == nil || cnt > 0 {
			n.logger.Info("joined gossip pool", "contacted", cnt)
			return
		}
		if strings.Contains(err.Error(), "no installed keys could decrypt") {
			// memberlist's words for "the peer's gossip key is another".
			n.logger.Warn("gossip join failed: the peers use another cluster key (their gossip cannot be decrypted with this node's --key); give every node the same key file, retrying",
				"addrs", n.cfg.Join, "fingerprint", n.cfg.Keys.Fingerprint(), "error", err, "in", backoff)
		} else {
			n.logger.Warn("gossip join failed, retrying", "addrs", n.cfg.Join, "error", err, "in", backoff)
		}
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(backoff):
		}
		if backoff < 5*time.Second {
			backoff *= 2
		}
	}
}

// reconnectLoop heals gossip after a partition. memberlist marks members
// across a cut link as dead and never contacts them again, so once the link
// is back both sides would go on believing the other dead (and the leader
// would fail their forks). While any member is dead, this retries a join to
// its last address and to the configured --join addresses: a successful
// push/pull exchange refutes the stale state on both sides.
func (n *Node) reconnectLoop() {
	interval := 2 * time.Second
	if n.cfg.Fast {
		interval = 200 * time.Millisecond
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		var addrs []string
		for _, m := range n.gossip.snapshot() {
			if m.state == "dead" && m.name != n.cfg.Name && m.addr != "" {
				addrs = append(addrs, m.addr)
			}
		}
		if len(addrs) == 0 {
			continue
		}
		addrs = append(addrs, n.cfg.Join...)
		if cnt, err := n.gossip.join(addrs); cnt > 0 {
			n.logger.Debug("gossip reconnect", "contacted", cnt, "error", err)
		}
	}
}

// bootstrapLoop bootstraps raft once BootstrapExpect members are alive and
// none of them already belongs to a bootstrapped cluster. Every node does
// the same with the same member list, which raft accepts.
func (n *Node) bootstrapLoop() {
	if n.hasState {
		return
	}
	expect := n.cfg.BootstrapExpect
	if expect <= 0 {
		return // joins an existing cluster: the leader adds it
	}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		if leader, _ := n.raft.LeaderWithID(); leader != "" {
			n.gossip.setMeta(func(m *nodeMeta) { m.Bootstrapped = true })
			return
		}
		var servers []raft.Server
		other := false
		for _, m := range n.gossip.snapshot() {
			if m.state != "alive" {
				continue
			}
			if m.name != n.cfg.Name && m.meta.Bootstrapped {
				other = true
			}
			servers = append(servers, raft.Server{ID: raft.ServerID(m.name), Address: raft.ServerAddress(m.meta.ClusterAddr)})
		}
		if other {
			// An existing cluster will add us through its leader's reconcile.
			continue
		}
		if len(servers) < expect {
			continue
		}
		n.logger.Info("bootstrapping raft", "servers", len(servers))
		f := n.raft.BootstrapCluster(raft.Configuration{Servers: servers})
		if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			n.logger.Error("bootstrap failed", "error", err)
			continue
		}
		n.gossip.setMeta(func(m *nodeMeta) { m.Bootstrapped = true })
		return
	}
}

// Close leaves the cluster gracefully: gossip leave (so the leader removes
// this server from raft), then stops everything.
func (n *Node) Close() error {
	n.once.Do(func() { n.closeErr = n.shutdown(true) })
	return n.closeErr
}

// Stop stops the node but keeps it a member: it hands leadership over
// and shuts down without leaving, so the cluster counts it as a voter that
// is down, as after a crash, and it takes its place again when restarted.
// That is what a restart for maintenance or an upgrade wants: a node that
// left must be re-added by a leader, and with one more node down there
// may be none (two of three voters up still make a quorum only if the
// restarted one is still a voter). Close is for leaving for good.
func (n *Node) Stop() error {
	n.once.Do(func() { n.closeErr = n.shutdownMode(true, false) })
	return n.closeErr
}

func (n *Node) shutdown(graceful bool) error { return n.shutdownMode(graceful, graceful) }

// shutdownMode stops the node; handOver transfers leadership first, leave
// leaves gossip and raft (Close), else the node just stops (Stop, crash).
func (n *Node) shutdownMode(handOver, leave bool) error {
	graceful := leave
	var errs []error
	if handOver && n.raft != nil && n.raft.State() == raft.Leader && n.gossip != nil {
		// Hand leadership over first, so the cluster keeps a leader.
		if err := n.raft.LeadershipTransfer().Error(); err != nil {
			n.logger.Debug("leadership transfer", "error", err)
		}
	}
	if n.gossip != nil {
		if graceful {
			// Announce the leave first, so the leader removes this server
			// from raft instead of keeping it as a dead voter.
			n.gossip.setMeta(func(m *nodeMeta) { m.Leaving = true })
			// Gossip alone can lose the intent (metadata and leave travel
			// separately), leaving a dead voter that costs the cluster its
			// fault tolerance; so ask the leader directly as well.
			if n.raft != nil && n.raft.State() != raft.Leader {
				if err := n.leaveRaft(3 * time.Second); err != nil {
					n.logger.Warn("leave request to the leader failed; relying on gossip", "error", err)
				}
			}
			if err := n.gossip.leave(2 * time.Second); err != nil {
				errs = append(errs, err)
			}
		} else {
			_ = n.gossip.ml.Shutdown()
		}
	}
	if n.cancel != nil {
		n.cancel()
	}
	if n.httpSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_ = n.httpSrv.Shutdown(ctx)
		cancel()
	} else if n.apiLn != nil {
		n.apiLn.Close()
	}
	if n.exec != nil {
		n.exec.stop()
	}
	if n.raft != nil {
		if err := n.raft.Shutdown().Error(); err != nil {
			errs = append(errs, err)
		}
	}
	if n.mux != nil {
		n.mux.close()
	}
	if n.trans != nil {
		n.trans.Close()
	}
	n.wg.Wait()
	if n.store != nil {
		if err := n.store.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if n.claimed != nil {
		n.claimed.Unclaim()
	}
	n.lock.Release() // last: the raft log is closed
	return errors.Join(errs...)
}

// Name is the node's name (its raft id and catalog host id).
func (n *Node) Name() string { return n.cfg.Name }

// Region of this node.
func (n *Node) Region() string { return n.cfg.Region }

// Backend is this node's storage.
func (n *Node) Backend() cow.Backend { return n.cfg.Backend }

// APIAddr is the bound HTTP API address.
func (n *Node) APIAddr() string { return n.apiAddr }

// ClusterAddr is the bound cluster (mTLS) address.
func (n *Node) ClusterAddr() string { return n.clusterAddr }

// GossipAddr is the bound gossip address.
func (n *Node) GossipAddr() string {
	ln := n.gossip.ml.LocalNode()
	return net.JoinHostPort(ln.Addr.String(), fmt.Sprint(ln.Port))
}

// catalogVersion is the newest catalog version this node applies (the
// build's, or a test's stand-in for an older or newer build).
func (n *Node) catalogVersion() uint32 {
	if n.cfg.catalogVersion != 0 {
		return n.cfg.catalogVersion
	}
	return fsm.CatalogVersion
}

// APIToken is the cluster's own bearer token (see keys.Material.APIToken).
func (n *Node) APIToken() string { return n.cfg.Keys.APIToken() }

// claimer is a backend whose storage is bound to one node while it runs
// (cow.FileBackend's volume directory).
type claimer interface {
	Claim(node string) error
	Unclaim()
}

// VerifyToken checks a bearer token against the cluster key and the
// catalog's revocations (this node's copy: a revocation takes effect here
// once replicated, within milliseconds on a healthy cluster).
func (n *Node) VerifyToken(tok string) (keys.TokenClaims, error) {
	c, err := n.cfg.Keys.VerifyToken(tok, time.Now())
	if err != nil {
		return c, err
	}
	revoked := false
	n.fsm.View(func(s *fsm.State) { revoked = s.TokenRevoked(c.ID) })
	if revoked {
		return c, fmt.Errorf("%w: %s", fsm.ErrTokenRevoked, c.ID)
	}
	return c, nil
}

// View reads the local catalog.
func (n *Node) View(fn func(s *fsm.State)) { n.fsm.View(fn) }

// IsLeader reports whether this node leads raft.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Status is this node's view of the cluster.
func (n *Node) Status() StatusInfo {
	st := StatusInfo{Node: n.cfg.Name, Region: n.cfg.Region, RaftState: n.raft.State().String(),
		NodeCatalogVersion: n.gossip.localMeta().catalogVersion()}
	n.fsm.View(func(s *fsm.State) { st.CatalogVersion = s.CatalogVersion() })
	if n.exec.pacer != nil {
		ps := n.exec.pacer.Status()
		st.Pace = &ps
	}
	_, leaderID := n.raft.LeaderWithID()
	st.Leader = string(leaderID)
	voters := map[string]bool{}
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			voters[string(s.ID)] = s.Suffrage == raft.Voter
		}
	}
	for _, m := range n.gossip.snapshot() {
		mi := MemberInfo{Name: m.name, Region: m.meta.Region, GossipAddr: m.addr,
			ClusterAddr: m.meta.ClusterAddr, APIAddr: m.meta.APIAddr, Status: m.state, Voter: voters[m.name],
			CatalogVersion: m.meta.catalogVersion()}
		if m.name == st.Leader {
			st.LeaderAPI = m.meta.APIAddr
		}
		st.Members = append(st.Members, mi)
	}
	return st
}

// NewID returns a random id with prefix ("vol_", "fork_", "req_").
func NewID(prefix string) string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand failed: %v", err)) // the OS is broken
	}
	return prefix + hex.EncodeToString(b[:])
}

// advertisable turns a bound address into one peers can dial: an
// unspecified host (":7947", "0.0.0.0:7947") becomes the advertise IP, or
// the host's private IP as memberlist would pick it.
func advertisable(bound, advertiseIP string) (string, error) {
	host, port, err := net.SplitHostPort(bound)
	if err != nil {
		return "", err
	}
	ip := net.ParseIP(host)
	if ip != nil && !ip.IsUnspecified() {
		return bound, nil
	}
	if advertiseIP == "" {
		advertiseIP, err = sockaddr.GetPrivateIP()
		if err != nil || advertiseIP == "" {
			return "", fmt.Errorf("%s is not an address peers can reach and no private IP was found: set an explicit address or --advertise", bound)
		}
	}
	if net.ParseIP(advertiseIP) == nil {
		return "", fmt.Errorf("advertise address %q is not an IP", advertiseIP)
	}
	return net.JoinHostPort(advertiseIP, port), nil
}
