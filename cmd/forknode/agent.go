package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/forknode/forknode/internal/cluster"
	"github.com/forknode/forknode/internal/cow"
	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/pace"
	"github.com/hashicorp/go-hclog"
)

// defaultRateLimit caps one node's fork I/O (streams sent and received,
// local copies). 100 MiB/s is under a gigabit link and a small share of an
// SSD's bandwidth: a fork of a production volume must never starve
// production itself. It is a ceiling: pacing (--pace, on by default) runs
// forks slower while the host is busy. Raise it (or 0 for unlimited and no
// pacing) on dedicated replication hosts.
const defaultRateLimit = 100 << 20

type agentFlags struct {
	name, dataDir, gossipAddr, clusterAddr, apiAddr, join, region, advertise string
	bootstrapExpect                                                          int
	backend, volumeDir, vg, thinPool                                         string
	overprovision                                                            float64
	capacity, rateLimit, paceFloor                                           int64
	keyFile, codec, logLevel                                                 string
	logJSON, pace, apiTLS, leaveOnStop                                       bool
	paceProbe                                                                string
	nice                                                                     int
	forkRetention, sweepInterval                                             time.Duration
}

// forkRetention maps the flag (0: forever) onto cluster.Config (< 0: forever).
func forkRetention(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

func runAgent(args []string) error {
	host, _ := os.Hostname()
	var f agentFlags
	fs := newFlagSet("agent", "agent --key FILE [flags]")
	fs.StringVar(&f.name, "name", host, "node name (unique in the cluster; its catalog host id)")
	fs.StringVar(&f.dataDir, "data-dir", "/var/lib/forknode", "raft log, snapshots and (file backend) volumes")
	fs.StringVar(&f.gossipAddr, "gossip-addr", ":7946", "gossip bind address (TCP and UDP)")
	fs.StringVar(&f.clusterAddr, "cluster-addr", ":7947", "mTLS address for raft, forwarding and block streams")
	fs.IntVar(&f.nice, "nice", 10, "CPU niceness of the agent (0 keeps it): fork work yields to the databases on this host")
	fs.StringVar(&f.advertise, "advertise", "", "IP peers use to reach this node when an address binds all interfaces (default: the host's private IP)")
	fs.StringVar(&f.apiAddr, "api-addr", defaultAPIAddr, "HTTP API address")
	fs.BoolVar(&f.apiTLS, "api-tls", false, "serve the API over TLS with this node's certificate from the cluster CA (clients: https:// and --ca)")
	fs.StringVar(&f.join, "join", "", "comma-separated gossip addresses of existing members")
	fs.IntVar(&f.bootstrapExpect, "bootstrap-expect", 1, "servers to wait for before bootstrapping a new cluster (0: never bootstrap, only join one through --join)")
	fs.StringVar(&f.region, "region", "default", "region of this host")
	fs.StringVar(&f.backend, "backend", "file", "storage backend: file or lvm")
	fs.StringVar(&f.volumeDir, "volume-dir", "", "file backend: directory of volume images (default DATA_DIR/volumes)")
	fs.StringVar(&f.vg, "vg", "", "lvm backend: volume group")
	fs.StringVar(&f.thinPool, "thin-pool", "", "lvm backend: thin pool LV (default: the VG's only thin pool, else thick)")
	fs.Float64Var(&f.overprovision, "overprovision", 1, "lvm backend: thin budget = pool size x this ratio")
	sizeVar(fs, &f.capacity, "capacity", 0, "file backend: capacity budget, e.g. 10GiB (0: free space of the volume dir)")
	sizeVar(fs, &f.rateLimit, "rate-limit", defaultRateLimit, "fork I/O bytes/s of this node (streams sent and received, local copies), e.g. 100MiB (0: unlimited, no pacing)")
	fs.BoolVar(&f.pace, "pace", true, "run forks below --rate-limit while this host's CPUs are saturated or its disk queues (see README, Pacing)")
	sizeVar(fs, &f.paceFloor, "pace-floor", 0, "the slowest pacing may run forks, e.g. 20MiB (0: an eighth of --rate-limit)")
	fs.StringVar(&f.paceProbe, "pace-probe", "", "file on the volumes' disk, or an empty block device there, that pacing times small synchronous writes in (default VOLUME_DIR/.forknode-ioprobe; lvm: the LV VG/forknode-ioprobe, made at first start)")
	fs.StringVar(&f.keyFile, "key", "", "cluster key file (required; create one with: forknode keygen)")
	fs.StringVar(&f.codec, "codec", "auto", "stream compression: zstd, s2 or auto")
	durationVar(fs, &f.sweepInterval, "sweep-interval", 30*time.Second, "how often the leader deletes expired volumes and prunes old forks")
	durationVar(fs, &f.forkRetention, "fork-retention", cluster.DefaultForkRetention, "how long the catalog keeps finished forks before the leader prunes them, e.g. 7d (0: forever); volumes go by their own --ttl")
	fs.BoolVar(&f.leaveOnStop, "leave-on-stop", false, "on SIGTERM/SIGINT leave the cluster for good (decommission); by default a stopped node stays a voter and rejoins when restarted")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: trace, debug, info, warn, error")
	fs.BoolVar(&f.logJSON, "log-json", false, "log as JSON lines")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("agent", pos, 0, "no arguments"); err != nil {
		return err
	}
	if f.keyFile == "" {
		return usagef("agent: --key FILE is required: agents refuse to run without the cluster key. Create one with `forknode keygen -o cluster.key` and give every node a copy")
	}
	switch f.codec {
	case "zstd", "s2", "auto":
	default:
		return usagef("agent: --codec %q: want zstd, s2 or auto", f.codec)
	}
	if f.name == "" {
		return usagef("agent: --name is empty (and the hostname is unknown)")
	}
	// The catalog refuses such a host record at apply, which would leave
	// the node running but never a host: refuse it here instead.
	if err := fsm.ValidateNodeName("--name", f.name); err != nil {
		return usagef("agent: %v (letters, digits, and _ . - after the first)", strings.TrimPrefix(err.Error(), fsm.ErrInvalid.Error()+": "))
	}
	if err := fsm.ValidateNodeName("--region", f.region); err != nil {
		return usagef("agent: %v", strings.TrimPrefix(err.Error(), fsm.ErrInvalid.Error()+": "))
	}
	if f.bootstrapExpect < 1 && f.join == "" && !cluster.HasRaftLog(f.dataDir) {
		return usagef("agent: --bootstrap-expect %d never bootstraps a cluster and there is no --join to find one: give --join ADDR, or --bootstrap-expect 1 for a new single-node cluster", f.bootstrapExpect)
	}
	if f.rateLimit < 0 || f.capacity < 0 || f.paceFloor < 0 {
		return usagef("agent: --rate-limit, --pace-floor and --capacity must not be negative")
	}
	if f.sweepInterval < 100*time.Millisecond {
		return usagef("agent: --sweep-interval %s: want at least 100ms", f.sweepInterval)
	}
	if f.forkRetention < 0 {
		return usagef("agent: --fork-retention %s is negative; 0 keeps finished forks forever", f.forkRetention)
	}
	if f.rateLimit > 0 && f.paceFloor > f.rateLimit {
		return usagef("agent: --pace-floor %d is above --rate-limit %d", f.paceFloor, f.rateLimit)
	}
	level := hclog.LevelFromString(f.logLevel)
	if level == hclog.NoLevel {
		return usagef("agent: --log-level %q: want trace, debug, info, warn or error", f.logLevel)
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: "forknode", Level: level, JSONFormat: f.logJSON, Output: os.Stderr})
	if err := renice(f.nice); err != nil {
		logger.Warn("could not lower the agent's priority", "error", err)
	}

	km, err := loadKey(f.keyFile)
	if err != nil {
		return err
	}
	if mode, loose := looseKeyMode(f.keyFile); loose {
		logger.Warn("the cluster key file is readable by other users: it holds the cluster CA's private key and gossip key; chmod 600 it",
			"file", f.keyFile, "mode", fmt.Sprintf("%04o", mode))
	}
	if !f.apiTLS && !loopbackAddr(f.apiAddr) {
		logger.Warn("the API listens beyond loopback without --api-tls: bearer tokens and volume data cross the network in clear",
			"api_addr", f.apiAddr)
	}
	// Lock the data dir before the backend opens: the LVM backend's start-up
	// recovery acts on markers that a running agent on this dir owns.
	lock, err := cluster.LockDataDir(f.dataDir)
	if err != nil {
		return err
	}
	be, err := openBackend(f, logger)
	if err != nil {
		lock.Release()
		return err
	}
	probe := paceProbe(f, be, logger)
	if f.paceProbe != "" && f.pace && f.rateLimit > 0 {
		// Named by the operator: refused, it is an error, not a quiet
		// fall-back to pacing on CPU alone.
		p, err := pace.OpenFileProbe(probe)
		if err != nil {
			lock.Release()
			return usagef("agent: --pace-probe %s: %v", probe, err)
		}
		p.Close()
	}
	var join []string
	for _, a := range strings.Split(f.join, ",") {
		if a = strings.TrimSpace(a); a != "" {
			join = append(join, a)
		}
	}
	node, err := cluster.New(cluster.Config{
		Name: f.name, DataDir: f.dataDir, DataDirLock: lock, Region: f.region,
		GossipAddr: f.gossipAddr, ClusterAddr: f.clusterAddr, APIAddr: f.apiAddr, AdvertiseIP: f.advertise, APITLS: f.apiTLS,
		Join: join, BootstrapExpect: f.bootstrapExpect,
		Backend: be, Keys: km, Logger: logger,
		RateLimit: f.rateLimit, StreamCodec: f.codec,
		Pace: f.pace, PaceProbe: probe, PaceFloor: f.paceFloor,
		ForkRetention: forkRetention(f.forkRetention), SweepInterval: f.sweepInterval,
	})
	if err != nil {
		return fmt.Errorf("start node: %w", err)
	}
	logger.Info("agent running", "api", node.APIAddr(), "name", f.name)

	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	s := <-sig
	go func() {
		// A second signal skips the graceful stop.
		<-sig
		logger.Warn("second signal: exiting now")
		os.Exit(1)
	}()
	if f.leaveOnStop {
		logger.Info("leaving the cluster for good (--leave-on-stop)", "signal", s.String())
		return node.Close()
	}
	logger.Info("stopping; this node stays a cluster member and rejoins when restarted (remove it for good with --leave-on-stop, or forknode node rm)", "signal", s.String())
	return node.Stop()
}

// probeLVer is the LVM backend's side of the pacing probe.
type probeLVer interface {
	EnsureProbeLV(ctx context.Context) (string, error)
}

// paceProbe picks the probe: --pace-probe when given; on LVM, an LV of its
// own in the VG (made on first start), since the PVs carry no file system;
// else paceProbePath's file.
func paceProbe(f agentFlags, be cow.Backend, logger hclog.Logger) string {
	pl, ok := be.(probeLVer)
	if f.paceProbe != "" || !f.pace || f.rateLimit == 0 || !ok {
		return paceProbePath(f)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	path, err := pl.EnsureProbeLV(ctx)
	if err == nil {
		// The LV is the agent's own: an older release's, or one a crash
		// left half-zeroed, is readied for the probe's check.
		err = pace.ReclaimProbeDevice(path)
	}
	if err != nil {
		fallback := paceProbePath(f)
		logger.Warn("no probe LV for pacing: timing writes to DATA_DIR's disk instead, which may not be the VG's; give --pace-probe",
			"error", err, "probe", fallback)
		return fallback
	}
	return path
}

// paceProbePath is where the I/O probe lives: beside the volumes, so it
// queues behind the same disk as the database's commits.
func paceProbePath(f agentFlags) string {
	switch {
	case f.paceProbe != "":
		return f.paceProbe
	case f.backend == "file" && f.volumeDir != "":
		return filepath.Join(f.volumeDir, cow.ProbeFileName)
	case f.backend == "file":
		return filepath.Join(f.dataDir, "volumes", cow.ProbeFileName)
	}
	return filepath.Join(f.dataDir, cow.ProbeFileName)
}

func openBackend(f agentFlags, logger hclog.Logger) (cow.Backend, error) {
	switch f.backend {
	case "file":
		dir := f.volumeDir
		if dir == "" {
			dir = filepath.Join(f.dataDir, "volumes")
		}
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("volume dir: %w", err)
		}
		b, err := cow.OpenFileBackend(dir, f.capacity, f.name, logger.Named("file"))
		if err != nil {
			return nil, fmt.Errorf("file backend in %s: %w", dir, err)
		}
		return b, nil
	case "lvm":
		if f.vg == "" {
			return nil, usagef("agent: --backend lvm needs --vg")
		}
		b, err := cow.NewLVMBackend(f.vg, cow.LVMOptions{ThinPool: f.thinPool, Overprovision: f.overprovision, StateDir: f.dataDir, Logger: logger.Named("lvm")})
		if err != nil {
			return nil, fmt.Errorf("lvm backend on VG %s: %w", f.vg, err)
		}
		return b, nil
	}
	return nil, usagef("agent: --backend %q: want file or lvm", f.backend)
}
