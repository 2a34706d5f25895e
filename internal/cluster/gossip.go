package cluster

import (
	"encoding/json"
	"fmt"
	"net"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
)

// nodeMeta is gossiped with every member. memberlist caps metadata at 512
// bytes, so keys are short; encodeMeta refuses anything larger.
type nodeMeta struct {
	Region      string `json:"r"`
	ClusterAddr string `json:"c"`
	APIAddr     string `json:"a"`
	Backend     string `json:"b"`
	CanClone    bool   `json:"k,omitempty"`
	Budget      int64  `json:"g"`
	// The backend's snapshot cost figures (cow.Features), for the catalog.
	SnapPermille int64 `json:"sp,omitempty"`
	SnapMin      int64 `json:"sm,omitempty"`
	SnapGrain    int64 `json:"sg,omitempty"`
	// Bootstrapped is set once the node has raft state or has seen a leader;
	// a new node never bootstraps a fresh cluster while a member says so.
	Bootstrapped bool `json:"s,omitempty"`
	// Leaving is gossiped just before a graceful leave. memberlist's leave
	// event does not reliably tell a leave from a death (v0.5 passes a
	// Node whose State field is stale), so the intent travels in metadata,
	// as Serf does with its leave intents.
	Leaving bool `json:"l,omitempty"`
	// Version is the newest catalog version the node applies
	// (fsm.CatalogVersion); builds from before the field sent none.
	Version uint32 `json:"v,omitempty"`
}

// catalogVersion is the version a member supports: builds that did not
// gossip one apply version 1's rules.
func (m nodeMeta) catalogVersion() uint32 { return max(m.Version, 1) }

func encodeMeta(m nodeMeta) ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(b) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("node metadata is %d bytes, over memberlist's %d", len(b), memberlist.MetaMaxSize)
	}
	return b, nil
}

type member struct {
	name   string
	addr   string
	meta   nodeMeta
	state  string // alive, suspect, dead, left
	since  time.Time
	hasKey bool
}

// gossip wraps memberlist and keeps a table of every member ever seen, with
// its last state, because memberlist.Members() forgets dead ones.
type gossip struct {
	ml     *memberlist.Memberlist
	logger hclog.Logger

	metaMu sync.Mutex
	meta   nodeMeta

	mu      sync.Mutex
	members map[string]*member
	// leaving holds, on the leader, when a node asked to leave (the "leave"
	// forward op). Gossip can still show it alive for a moment, with its
	// old metadata; within leaveMemory it is not re-added to raft.
	leaving map[string]time.Time
	events  chan struct{} // coalesced "something changed" signal
}

// leaveMemory bounds how long a leave request keeps a node out of raft: a
// leaver stops gossiping within seconds, and a node restarted after its
// leave is re-added once this has passed.
const leaveMemory = 10 * time.Second

func newGossip(cfg Config, meta nodeMeta, logger hclog.Logger) (*gossip, error) {
	host, portStr, err := net.SplitHostPort(cfg.GossipAddr)
	if err != nil {
		return nil, fmt.Errorf("gossip address %q: %w", cfg.GossipAddr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("gossip port %q: %w", portStr, err)
	}
	g := &gossip{logger: logger, meta: meta, members: map[string]*member{}, leaving: map[string]time.Time{}, events: make(chan struct{}, 1)}

	var mc *memberlist.Config
	if cfg.Fast {
		mc = memberlist.DefaultLocalConfig()
		mc.ProbeInterval = 100 * time.Millisecond
		mc.ProbeTimeout = 50 * time.Millisecond
		mc.GossipInterval = 20 * time.Millisecond
		mc.SuspicionMult = 2
		mc.PushPullInterval = time.Second
		mc.TCPTimeout = time.Second
		mc.DeadNodeReclaimTime = 100 * time.Millisecond
	} else {
		mc = memberlist.DefaultLANConfig()
		// A node restarted with a new address (DHCP, a new port) may take
		// its name back once the old incarnation is known dead.
		mc.DeadNodeReclaimTime = 10 * time.Second
	}
	mc.Name = cfg.Name
	if host == "" {
		host = "0.0.0.0"
	}
	mc.BindAddr = host
	mc.BindPort = port
	mc.AdvertisePort = port
	if host != "0.0.0.0" && host != "::" {
		mc.AdvertiseAddr = host
	} else if cfg.AdvertiseIP != "" {
		mc.AdvertiseAddr = cfg.AdvertiseIP
	}
	mc.SecretKey = cfg.Keys.GossipKey()
	mc.GossipVerifyIncoming = true
	mc.GossipVerifyOutgoing = true
	mc.Delegate = g
	mc.Events = g
	mc.Logger = nil
	mc.LogOutput = logger.Named("memberlist").StandardWriter(&hclog.StandardLoggerOptions{InferLevels: true})
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("start gossip on %s: %w", cfg.GossipAddr, err)
	}
	g.ml = ml
	return g, nil
}

func (g *gossip) signal() {
	select {
	case g.events <- struct{}{}:
	default:
	}
}

func (g *gossip) record(n *memberlist.Node, state string) {
	var meta nodeMeta
	if err := json.Unmarshal(n.Meta, &meta); err != nil {
		g.logger.Warn("member with unreadable metadata", "member", n.Name, "error", err)
	}
	g.mu.Lock()
	m := g.members[n.Name]
	if m == nil {
		m = &member{name: n.Name}
		g.members[n.Name] = m
	}
	if m.state != state {
		m.since = time.Now()
	}
	m.addr = net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
	m.meta = meta
	m.state = state
	g.mu.Unlock()
	g.signal()
}

// Event delegate: never block (memberlist calls these inline).
func (g *gossip) NotifyJoin(n *memberlist.Node)   { g.record(n, "alive") }
func (g *gossip) NotifyUpdate(n *memberlist.Node) { g.record(n, stateName(n.State)) }
func (g *gossip) NotifyLeave(n *memberlist.Node) {
	var meta nodeMeta
	_ = json.Unmarshal(n.Meta, &meta)
	if n.State == memberlist.StateLeft || meta.Leaving {
		g.record(n, "left")
	} else {
		g.record(n, "dead")
	}
}

func stateName(s memberlist.NodeStateType) string {
	switch s {
	case memberlist.StateAlive:
		return "alive"
	case memberlist.StateSuspect:
		return "suspect"
	case memberlist.StateLeft:
		return "left"
	default:
		return "dead"
	}
}

// Delegate: only metadata is used; the catalog travels over raft.
func (g *gossip) NodeMeta(limit int) []byte {
	g.metaMu.Lock()
	defer g.metaMu.Unlock()
	b, err := encodeMeta(g.meta)
	if err != nil || len(b) > limit {
		g.logger.Error("node metadata too large", "error", err)
		return nil
	}
	return b
}
func (g *gossip) NotifyMsg([]byte)                           {}
func (g *gossip) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (g *gossip) LocalState(join bool) []byte                { return nil }
func (g *gossip) MergeRemoteState(buf []byte, join bool)     {}

// localMeta returns this node's own metadata.
func (g *gossip) localMeta() nodeMeta {
	g.metaMu.Lock()
	defer g.metaMu.Unlock()
	return g.meta
}

func (g *gossip) setMeta(fn func(*nodeMeta)) {
	g.metaMu.Lock()
	before := g.meta
	fn(&g.meta)
	changed := before != g.meta
	g.metaMu.Unlock()
	if changed && g.ml != nil {
		if err := g.ml.UpdateNode(2 * time.Second); err != nil {
			g.logger.Warn("gossip metadata update failed", "error", err)
		}
	}
}

// snapshot returns all known members sorted by name. It reads only the
// table fed by the event delegate: the *Node values that
// memberlist.Members() returns are mutated under memberlist's own lock, so
// reading them here would race.
func (g *gossip) snapshot() []member {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]member, 0, len(g.members))
	for _, m := range g.members {
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

func (g *gossip) join(addrs []string) (int, error) { return g.ml.Join(addrs) }

func (g *gossip) leave(timeout time.Duration) error {
	err := g.ml.Leave(timeout)
	if serr := g.ml.Shutdown(); err == nil {
		err = serr
	}
	return err
}

// noteLeaving records a node's own request to leave.
func (g *gossip) noteLeaving(name string) {
	g.mu.Lock()
	g.leaving[name] = time.Now()
	g.mu.Unlock()
	g.signal()
}

// isLeaving reports whether name announced its leave: in its gossiped
// metadata, or by a leave request within leaveMemory.
func (g *gossip) isLeaving(m member) bool {
	if m.meta.Leaving {
		return true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	at, ok := g.leaving[m.name]
	if ok && time.Since(at) > leaveMemory {
		delete(g.leaving, m.name)
		ok = false
	}
	return ok
}

// forget drops a member that was removed for good from the table.
func (g *gossip) forget(name string) {
	g.mu.Lock()
	if m := g.members[name]; m != nil && m.state != "alive" {
		delete(g.members, name)
	}
	g.mu.Unlock()
}
