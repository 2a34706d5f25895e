package cluster

import (
	"time"

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
	failing := false
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
