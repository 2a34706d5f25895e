package cluster

import (
	"time"

	"github.com/forknode/forknode/internal/cow"
	"github.com/forknode/forknode/internal/fsm"
)

// capacityLoop keeps the budget this node advertises current. The disk
// under a file backend is shared with whatever else writes there, and a
// VG or thin pool can be extended or shared with other users, so the
// figure measured at start goes stale. A changed budget travels in gossip
// metadata; the leader's reconcile writes it to the catalog, where the
// planner reads it. Small moves are not reported, so that a disk that
// other programs write to all the time does not cost a catalog entry per
// tick.
func (n *Node) capacityLoop() {
	t := time.NewTicker(n.cfg.CapacityInterval)
	defer t.Stop()
	failing, lowData := false, false
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		c, err := n.cfg.Backend.Capacity(n.ctx)
		if err != nil {
			if !failing && n.ctx.Err() == nil {
				n.logger.Warn("measuring capacity failed; the catalog keeps the last budget", "error", err)
			}
			failing = true
			continue
		}
		failing = false
		// A node whose raft log cannot grow lags the catalog and would sit
		// on work placed on it: below the reserve it takes no new work,
		// until it has twice the reserve (no flapping around the line). A
		// failed measurement keeps the last state.
		free, ferr := n.dataDirFree()
		switch {
		case ferr != nil:
		case free < DataDirReserve:
			if !lowData {
				n.logger.Error("the data directory's disk is nearly full (raft log and snapshots live there): advertising no capacity, so no new volumes or forks are placed here, until it has room again",
					"data_dir", n.cfg.DataDir, "free", free, "reserve", int64(DataDirReserve))
			}
			lowData = true
		case lowData && free >= 2*DataDirReserve:
			n.logger.Info("the data directory has room again", "data_dir", n.cfg.DataDir, "free", free)
			lowData = false
		}
		if lowData {
			c.Budget = 0
		}
		var old int64
		moved := false
		n.gossip.setMeta(func(m *nodeMeta) {
			old = m.Budget
			if moved = budgetMoved(old, c.Budget); moved {
				m.Budget = c.Budget
			}
		})
		if !moved {
			continue
		}
		var used int64
		n.fsm.View(func(s *fsm.State) { used = s.Used(n.cfg.Name) })
		if used > c.Budget {
			// Nothing is taken away: the volumes keep their space, and the
			// planner places no more here until the budget is back.
			n.logger.Warn("capacity budget fell below what this host's volumes were promised",
				"old", old, "new", c.Budget, "provisioned", used)
		} else {
			n.logger.Info("capacity budget changed", "old", old, "new", c.Budget, "provisioned", used)
		}
	}
}

// DataDirReserve is the free space (for unprivileged writes) below which
// the data directory's filesystem makes the node take no new work; it is a
// trigger, not a reservation: volumes already promised on the same disk
// may still use it.
const DataDirReserve = 64 << 20

// dataDirFree measures the data directory's free space (Config's test
// hook stands in for a disk that fills).
func (n *Node) dataDirFree() (int64, error) {
	if n.cfg.dataDirFree != nil {
		return n.cfg.dataDirFree()
	}
	return cow.FreeBytes(n.cfg.DataDir)
}

// budgetMoved reports a change worth a catalog entry: any change to or
// from zero, else at least 16 MiB and at least 1/256 of the old budget.
func budgetMoved(old, cur int64) bool {
	if old == cur {
		return false
	}
	if old == 0 || cur == 0 {
		return true
	}
	d := max(cur-old, old-cur)
	return d >= 16<<20 && d >= old/256
}
