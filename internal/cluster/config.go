package cluster

// Configuration, sentinel errors and the status types of a node.

import (
	"errors"
	"time"

	"github.com/forknode/forknode/internal/cow"
	"github.com/forknode/forknode/internal/keys"
	"github.com/forknode/forknode/internal/pace"
	"github.com/hashicorp/go-hclog"
)

var (
	// ErrNoLeader: no leader could be reached in time (HTTP 503).
	ErrNoLeader = errors.New("no cluster leader reachable")
	// ErrShutdown: the node is shutting down (HTTP 503).
	ErrShutdown = errors.New("node is shutting down")
	// ErrHostUnreachable: the host holding a volume did not answer (HTTP 503).
	ErrHostUnreachable = errors.New("host unreachable")
)

// Config of one node. Addresses are host:port; port 0 picks a free port
// (tests), and the bound address is what gets advertised.
type Config struct {
	Name    string
	DataDir string
	// DataDirLock, when set, is DataDir's lock taken by the caller
	// (LockDataDir); New then owns it and releases it when the node shuts
	// down or New fails. Unset, New locks DataDir itself.
	DataDirLock *DataDirLock
	Region      string

	GossipAddr  string // memberlist bind (TCP and UDP)
	ClusterAddr string // mTLS port multiplexing raft, forwarding and transfer
	APIAddr     string // HTTP API
	// APITLS serves the API over TLS with the node's certificate (signed by
	// the cluster CA, name keys.ServerName); clients verify it with the CA
	// (`forknode ca`) and still present the token.
	APITLS bool
	// AdvertiseIP replaces an unspecified bind host (":7947") in the
	// addresses given to peers; empty means the host's private IP.
	AdvertiseIP string

	Join            []string // gossip addresses of existing members
	BootstrapExpect int      // servers to wait for before bootstrapping raft

	Backend cow.Backend
	Keys    *keys.Material
	Logger  hclog.Logger

	// RateLimit caps this node's fork I/O in bytes/s: stream sends,
	// stream receives and local copies share it (0 = unlimited, no pacing).
	RateLimit int64
	// Pace lets internal/pace lower the rate below RateLimit while the
	// host's CPUs or disk are busy, and raise it back when they are not.
	Pace bool
	// PaceProbe is the file the I/O probe writes to; it must be on the
	// volumes' disk. Empty: pace on CPU pressure only.
	PaceProbe string
	// PaceFloor is the lowest paced rate (0: RateLimit/8).
	PaceFloor int64
	// StreamCodec: "zstd", "s2" or "auto".
	StreamCodec string

	// Fast shrinks raft and memberlist timings to tens of milliseconds (tests, dev).
	Fast bool

	// streamPatience, when set (tests only), replaces the puller's I/O
	// timeout and give-up time (30 s each) for this node's streams.
	streamPatience time.Duration
	// catalogVersion, when set (tests only), replaces fsm.CatalogVersion
	// in what this node gossips, to stand in for an older or newer build.
	catalogVersion uint32
	// dataDirFree, for tests, replaces measuring the data directory's free
	// space (nil: statfs).
	dataDirFree func() (int64, error)
	// DeadHostTimeout: forks touching a host dead this long are failed.
	DeadHostTimeout time.Duration
	// ForkRetention is how long the catalog keeps a finished fork before the
	// leader prunes it (0: DefaultForkRetention; < 0: forever). Volumes are
	// not affected: they go by their own expiry.
	ForkRetention time.Duration
	// SweepInterval is how often the leader deletes expired volumes and
	// prunes old forks (0: 30 s, or 200 ms with Fast).
	SweepInterval time.Duration
	// CapacityInterval is how often the node measures its backend's
	// capacity again and, when the budget moved, gossips the new figure
	// for the leader to record (0: 30 s, or 200 ms with Fast).
	CapacityInterval time.Duration
}

// DefaultForkRetention keeps a week of fork history.
const DefaultForkRetention = 7 * 24 * time.Hour

// MemberInfo is one gossip member.
type MemberInfo struct {
	Name        string `json:"name"`
	Region      string `json:"region"`
	GossipAddr  string `json:"gossip_addr"`
	ClusterAddr string `json:"cluster_addr"`
	APIAddr     string `json:"api_addr"`
	Status      string `json:"status"` // alive, suspect, dead, left
	Voter       bool   `json:"voter"`
	// CatalogVersion is the newest catalog version the member applies.
	CatalogVersion uint32 `json:"catalog_version"`
}

// StatusInfo is what /v1/status reports from this node's point of view.
type StatusInfo struct {
	Node      string       `json:"node"`
	Region    string       `json:"region"`
	RaftState string       `json:"raft_state"`
	Leader    string       `json:"leader"`
	LeaderAPI string       `json:"leader_api"`
	Members   []MemberInfo `json:"members"`
	// CatalogVersion is the version of the catalog's rules in force (see
	// fsm.CatalogVersion); NodeCatalogVersion the newest this node applies.
	CatalogVersion     uint32 `json:"catalog_version"`
	NodeCatalogVersion uint32 `json:"node_catalog_version"`
	// Pace is this node's fork I/O pacing (absent when not pacing).
	Pace *pace.Status `json:"pace,omitempty"`
}
