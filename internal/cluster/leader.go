package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/forknode/forknode/internal/fsm"
	"github.com/hashicorp/raft"
)

// leaderLoop runs the leader's duties while this node leads: Barrier first
// (so the catalog is current), then reconcile gossip membership into raft
// servers and catalog hosts, on every gossip event and on a timer (a dropped
// event is covered by the next tick), and the janitor's sweep (janitor.go)
// every SweepInterval.
func (n *Node) leaderLoop() {
	for {
		select {
		case <-n.ctx.Done():
			return
		case isLeader := <-n.raft.LeaderCh():
			if isLeader {
				n.lead()
			}
		}
	}
}

func (n *Node) lead() {
	n.logger.Info("acquired leadership")
	n.gossip.setMeta(func(m *nodeMeta) { m.Bootstrapped = true })
	interval := time.Second
	if n.cfg.Fast {
		interval = 100 * time.Millisecond
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	barrierDone := false
	deadSince := map[string]time.Time{}
	jan := newJanitor()
	for n.raft.State() == raft.Leader {
		if !barrierDone {
			if err := n.raft.Barrier(10 * time.Second).Error(); err != nil {
				n.logger.Warn("leader barrier failed", "error", err)
			} else {
				barrierDone = true
			}
		}
		if barrierDone {
			n.reconcile(deadSince)
			n.maybeSweep(jan)
		}
		select {
		case <-n.ctx.Done():
			return
		case <-n.gossip.events:
		case <-tick.C:
		}
	}
	n.logger.Info("lost leadership")
}

// reconcile makes raft servers and catalog hosts follow gossip:
//   - an alive member that is not a raft server is added (idempotently: the
//     same id with a new address gets the new address in place);
//   - a member older than the catalog's rules is added to neither raft
//     nor the hosts, and the catalog version rises to what every raft
//     server supports;
//   - a member that left gracefully, or announced it is leaving, is removed
//     from raft (and not re-added while the announcement holds);
//   - a dead or stopped member stays a server until removed explicitly:
//     removing it needs quorum and it may come back;
//   - a server that gossips older catalog rules than the recorded ones (a
//     rollback) keeps its vote, but its host counts as down: no work;
//   - a leader on older rules than the recorded ones hands leadership over;
//   - hosts are upserted from gossip metadata and marked alive or not;
//   - forks touching a host dead for longer than DeadHostTimeout fail, so a
//     fork never hangs on a lost host.
func (n *Node) reconcile(deadSince map[string]time.Time) {
	ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
	defer cancel()
	defer n.reconciles.Add(1)
	members := n.gossip.snapshot()

	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		n.logger.Warn("raft configuration", "error", err)
		return
	}
	servers := map[string]raft.ServerAddress{}
	for _, s := range cf.Configuration().Servers {
		servers[string(s.ID)] = s.Address
	}
	var recorded, active uint32
	n.fsm.View(func(s *fsm.State) { recorded, active = s.RecordedCatalogVersion(), s.CatalogVersion() })
	if own := n.catalogVersion(); own < active {
		// This build applies older rules than the catalog records: another
		// server should lead.
		n.logger.Error("this node runs older catalog rules than the cluster records: handing leadership over; upgrade it",
			"catalog_version", active, "supported", own)
		if err := n.raft.LeadershipTransfer().Error(); err != nil {
			n.logger.Warn("leadership transfer", "error", err)
		}
		return
	}
	// A member older than the catalog's rules would apply the log
	// differently from the others: it joins neither raft nor the hosts.
	// One that is a voter already (a stopped node restarted on an older
	// build: a rollback) keeps its vote, since removing it automatically
	// can cost the quorum (with another server down, or one gossip has not
	// yet seen down), which is worse than one replica's own copy of the
	// catalog disagreeing; its host counts as down, so it gets no work.
	lagging := func(m member) bool {
		if m.meta.catalogVersion() >= active {
			delete(n.lagWarned, m.name)
			return false
		}
		if n.lagWarned[m.name] != m.meta.catalogVersion() {
			n.lagWarned[m.name] = m.meta.catalogVersion()
			if _, voter := servers[m.name]; voter {
				n.logger.Error("raft server runs older catalog rules than the cluster (rolled back?): it gets no work, and its copy of the catalog may disagree with the others; upgrade it, or stop it and run forknode node rm",
					"server", m.name, "member_catalog_version", m.meta.catalogVersion(), "catalog_version", active)
			} else {
				n.logger.Warn("member runs older catalog rules than the cluster: not adding it; upgrade it",
					"member", m.name, "member_catalog_version", m.meta.catalogVersion(), "catalog_version", active)
			}
		}
		return true
	}
	for _, m := range members {
		addr := raft.ServerAddress(m.meta.ClusterAddr)
		cur, known := servers[m.name]
		leaving := n.gossip.isLeaving(m)
		switch {
		case m.state == "alive" && !leaving && m.meta.ClusterAddr != "" && lagging(m):
			// kept out until upgraded, or a voter kept without work (above)
		case m.state == "alive" && !leaving && m.meta.ClusterAddr != "" && (!known || cur != addr):
			// AddVoter of a known voter changes its address in place.
			// Removing it first would be worse twice over: a leader that
			// removes itself shuts its raft down, and with another server
			// down the re-add could not reach a quorum.
			if known {
				n.logger.Info("server address changed", "server", m.name, "old", cur, "new", addr)
			} else {
				n.logger.Info("adding raft voter", "server", m.name, "addr", addr)
			}
			if err := n.raft.AddVoter(raft.ServerID(m.name), addr, 0, 0).Error(); err != nil {
				n.logger.Warn("add voter", "server", m.name, "error", err)
			}
		case (m.state == "left" || leaving) && known && m.name != n.cfg.Name:
			n.logger.Info("removing raft server that left", "server", m.name, "state", m.state)
			if err := n.raft.RemoveServer(raft.ServerID(m.name), 0, 0).Error(); err != nil {
				n.logger.Warn("remove server", "server", m.name, "error", err)
			}
		}
	}

	// Catalog hosts.
	var hosts map[string]fsm.Host
	var figures bool
	n.fsm.View(func(s *fsm.State) {
		figures = s.KeepsSnapshotFigures()
		hosts = map[string]fsm.Host{}
		for _, h := range s.Hosts() {
			hosts[h.ID] = h
		}
	})
	now := time.Now()
	for _, m := range members {
		alive := m.state == "alive" || m.state == "suspect"
		if m.meta.ClusterAddr == "" {
			continue
		}
		want := fsm.Host{ID: m.name, Region: m.meta.Region, RaftAddr: m.meta.ClusterAddr,
			APIAddr: m.meta.APIAddr, XferAddr: m.meta.ClusterAddr, Backend: m.meta.Backend,
			CanClone: m.meta.CanClone, Budget: m.meta.Budget, Alive: alive}
		if figures { // sent once every replica keeps them: see fsm.KeepsSnapshotFigures
			want.SnapshotPermille, want.SnapshotMin, want.SnapshotGrain = m.meta.SnapPermille, m.meta.SnapMin, m.meta.SnapGrain
		}
		have, ok := hosts[m.name]
		if !alive && !ok {
			continue // never re-add a host that is gone (left, or removed while dead)
		}
		if lagging(m) {
			if !ok {
				continue
			}
			// On older rules: no new work goes there, and its forks fail
			// as a dead host's would.
			alive, want.Alive = false, false
		}
		if !ok || have.Region != want.Region || have.RaftAddr != want.RaftAddr || have.APIAddr != want.APIAddr ||
			have.Backend != want.Backend || have.CanClone != want.CanClone || have.Budget != want.Budget ||
			have.SnapshotPermille != want.SnapshotPermille || have.SnapshotMin != want.SnapshotMin || have.SnapshotGrain != want.SnapshotGrain {
			if _, err := n.Apply(ctx, fsm.CmdUpsertHost, &fsm.UpsertHostCmd{Host: want}); err != nil {
				n.logger.Warn("upsert host", "host", m.name, "error", err)
				continue
			}
		} else if have.Alive != alive {
			if _, err := n.Apply(ctx, fsm.CmdSetHostAlive, &fsm.SetHostAliveCmd{ID: m.name, Alive: alive}); err != nil {
				n.logger.Warn("set host alive", "host", m.name, "error", err)
			}
		}
		if alive {
			delete(deadSince, m.name)
		} else if _, ok := deadSince[m.name]; !ok {
			deadSince[m.name] = now
		}
	}
	// A host in the catalog that gossip never saw since this leader started
	// (e.g. it died while there was no leader) counts as dead from now.
	for id := range hosts {
		found := false
		for _, m := range members {
			if m.name == id {
				found = true
			}
		}
		if !found {
			if _, ok := deadSince[id]; !ok {
				deadSince[id] = now
			}
			if hosts[id].Alive {
				_, _ = n.Apply(ctx, fsm.CmdSetHostAlive, &fsm.SetHostAliveCmd{ID: id, Alive: false})
			}
		}
	}

	n.raiseCatalogVersion(ctx, members, recorded)

	// Fail forks stuck on a dead host.
	var stuck []fsm.Fork
	n.fsm.View(func(s *fsm.State) {
		for _, f := range s.Forks() {
			if f.Finished() {
				continue
			}
			for _, h := range []string{f.SourceHost, f.TargetHost} {
				if t, ok := deadSince[h]; ok && now.Sub(t) > n.cfg.DeadHostTimeout {
					f.Error = fmt.Sprintf("host %s unreachable for %s", h, now.Sub(t).Round(time.Second))
					stuck = append(stuck, f)
					break
				}
			}
		}
	})
	for _, f := range stuck {
		n.logger.Warn("failing fork on dead host", "fork", f.ID, "reason", f.Error)
		_, err := n.Apply(ctx, fsm.CmdFinishFork, &fsm.FinishForkCmd{ForkID: f.ID, OK: false, Error: f.Error})
		if err != nil && !errors.Is(err, fsm.ErrNotFound) {
			n.logger.Warn("fail fork", "fork", f.ID, "error", err)
		}
	}
}

// raiseCatalogVersion records the lowest catalog version that every raft
// server gossips, when that is above the recorded one. A server whose
// version gossip has not told yet holds the version where it is. The
// configuration is read again here: a server added earlier in this pass,
// judged against the old version, must count.
func (n *Node) raiseCatalogVersion(ctx context.Context, members []member, recorded uint32) {
	cf := n.raft.GetConfiguration()
	if cf.Error() != nil || len(cf.Configuration().Servers) == 0 {
		return
	}
	servers := cf.Configuration().Servers
	byName := map[string]member{}
	for _, m := range members {
		byName[m.name] = m
	}
	lowest := ^uint32(0)
	for _, s := range servers {
		m, ok := byName[string(s.ID)]
		if !ok {
			return
		}
		lowest = min(lowest, m.meta.catalogVersion())
	}
	if lowest <= recorded {
		return
	}
	if _, err := n.Apply(ctx, fsm.CmdSetCatalogVersion, &fsm.SetCatalogVersionCmd{Version: lowest}); err != nil {
		n.logger.Warn("recording the catalog version", "version", lowest, "error", err)
		return
	}
	n.logger.Info("catalog version raised", "from", recorded, "to", lowest)
}
