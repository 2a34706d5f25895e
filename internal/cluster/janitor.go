package cluster

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/forknode/forknode/internal/cow"
	"github.com/forknode/forknode/internal/fsm"
)

// The leader's housekeeping of the catalog, run every SweepInterval: it
// deletes volumes whose expiry has passed and prunes forks finished longer
// ago than ForkRetention. Both read the leader's clock here, outside the
// FSM; the commands they send carry the decisions, so replicas stay equal.

// maxExpiriesPerSweep bounds one sweep's deletes, so a backlog (a leader
// that was down for a day) drains over a few sweeps.
const maxExpiriesPerSweep = 32

// janitor carries what one leadership term remembers between sweeps. A
// sweep runs in its own goroutine, one at a time, so a slow host (a
// check-remove to a dead host takes its dial timeout) never holds up the
// leader's membership reconcile.
type janitor struct {
	running atomic.Bool
	last    time.Time // written by the leader loop only
	// held are expired volumes kept because they are attached: warned
	// about once per term, retried every sweep. Used by the sweep only.
	held map[string]bool
}

func newJanitor() *janitor { return &janitor{held: map[string]bool{}} }

// maybeSweep starts a sweep if one is due and none is running.
func (n *Node) maybeSweep(j *janitor) {
	now := time.Now()
	if !j.last.IsZero() && now.Sub(j.last) < n.cfg.SweepInterval || !j.running.CompareAndSwap(false, true) {
		return
	}
	j.last = now
	go func() {
		defer j.running.Store(false)
		n.sweep(j, now)
	}()
}

// sweep runs one pass of both duties.
func (n *Node) sweep(j *janitor, now time.Time) {
	ctx, cancel := context.WithTimeout(n.ctx, 30*time.Second)
	defer cancel()
	n.expireVolumes(ctx, j, now)
	n.pruneForks(ctx, now)
	n.sweeps.Add(1)
}

// expiredVolumes lists ready volumes whose expiry is at or before now and
// that no fork in flight reads or writes (those wait for the fork), in id
// order.
func expiredVolumes(s *fsm.State, now int64) []fsm.Volume {
	busy := map[string]bool{}
	for _, f := range s.ActiveForks() {
		busy[f.SourceVolume] = true
		busy[f.TargetVolume] = true
	}
	var out []fsm.Volume
	for _, v := range s.Volumes() {
		if v.ExpiresAt > 0 && v.ExpiresAt <= now && v.State == fsm.VolumeReady && !busy[v.ID] {
			out = append(out, v)
		}
	}
	return out
}

// expireVolumes starts the delete of up to maxExpiriesPerSweep expired
// volumes. Attached ones are checked again every sweep but do not count
// against the bound, so they cannot starve the others.
func (n *Node) expireVolumes(ctx context.Context, j *janitor, now time.Time) {
	var due []fsm.Volume
	n.fsm.View(func(s *fsm.State) { due = expiredVolumes(s, now.UnixNano()) })
	deleted := 0
	for _, v := range due {
		if deleted == maxExpiriesPerSweep || ctx.Err() != nil {
			return
		}
		log := n.logger.With("volume", v.ID, "name", v.Name, "host", v.Host,
			"expired_at", time.Unix(0, v.ExpiresAt).UTC().Format(time.RFC3339))
		_, err := startDelete(ctx, n, v, 5*time.Second)
		switch {
		case err == nil:
			deleted++
			delete(j.held, v.ID)
			log.Info("volume expired: deleting it")
		case errors.Is(err, cow.ErrBusy):
			if !j.held[v.ID] {
				j.held[v.ID] = true
				log.Warn("volume expired but is attached: it will be deleted once detached", "error", err)
			}
		case errors.Is(err, fsm.ErrNotFound), errors.Is(err, fsm.ErrConflict):
			// Gone or changed meanwhile (deleted by hand, a fork started).
		default:
			log.Warn("deleting expired volume failed; retrying next sweep", "error", err)
		}
	}
}

// pruneForks drops finished forks older than ForkRetention, when there is
// one: an empty prune would still be a raft write per sweep.
func (n *Node) pruneForks(ctx context.Context, now time.Time) {
	if n.cfg.ForkRetention < 0 {
		return
	}
	before := now.Add(-n.cfg.ForkRetention).UnixNano()
	count := 0
	n.fsm.View(func(s *fsm.State) {
		for _, f := range s.Forks() {
			if f.FinishedBefore(before) {
				count++
			}
		}
	})
	if count == 0 {
		return
	}
	cmd := &fsm.PruneForksCmd{Before: before}
	if _, err := n.Apply(ctx, fsm.CmdPruneForks|fsm.IgnoreUnknownFlag, cmd); err != nil {
		n.logger.Warn("pruning finished forks failed; retrying next sweep", "error", err)
		return
	}
	n.logger.Info("pruned finished forks", "count", count, "retention", n.cfg.ForkRetention)
}
