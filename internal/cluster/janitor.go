package cluster

import (
	"context"
	"errors"
	"time"

	"github.com/forknode/forknode/internal/cow"
	"github.com/forknode/forknode/internal/fsm"
)

// The leader's housekeeping of the catalog, run every SweepInterval: it
// deletes volumes whose expiry has passed and prunes forks finished longer
// ago than ForkRetention. Both read the leader's clock here, outside the
// FSM; the commands they send carry the decisions, so replicas stay equal.

// maxExpiriesPerSweep bounds one sweep's deletes, so a backlog (a leader
// that was down for a day) drains over a few sweeps instead of holding up
// the leader's loop.
const maxExpiriesPerSweep = 32

// janitor carries what one leadership term remembers between sweeps.
type janitor struct {
	last time.Time
	// held are expired volumes kept because they are attached: warned
	// about once per term, retried every sweep.
	held map[string]bool
}

func newJanitor() *janitor { return &janitor{held: map[string]bool{}} }

// due reports whether a sweep should run now.
func (j *janitor) due(now time.Time, every time.Duration) bool {
	return j.last.IsZero() || now.Sub(j.last) >= every
}

// sweep runs one pass of both duties.
func (n *Node) sweep(j *janitor) {
	now := time.Now()
	j.last = now
	ctx, cancel := context.WithTimeout(n.ctx, 20*time.Second)
	defer cancel()
	n.expireVolumes(ctx, j, now)
	n.pruneForks(ctx, now)
}

// expiredVolumes lists ready volumes whose expiry is at or before now and
// that no fork in flight reads or writes (those wait for the fork).
func expiredVolumes(s *fsm.State, now int64, limit int) []fsm.Volume {
	busy := map[string]bool{}
	for _, f := range s.ActiveForks() {
		busy[f.SourceVolume] = true
		busy[f.TargetVolume] = true
	}
	var out []fsm.Volume
	for _, v := range s.Volumes() {
		if len(out) == limit {
			break
		}
		if v.ExpiresAt > 0 && v.ExpiresAt <= now && v.State == fsm.VolumeReady && !busy[v.ID] {
			out = append(out, v)
		}
	}
	return out
}

func (n *Node) expireVolumes(ctx context.Context, j *janitor, now time.Time) {
	var due []fsm.Volume
	n.fsm.View(func(s *fsm.State) { due = expiredVolumes(s, now.UnixNano(), maxExpiriesPerSweep) })
	for _, v := range due {
		log := n.logger.With("volume", v.ID, "name", v.Name, "host", v.Host,
			"expired_at", time.Unix(0, v.ExpiresAt).UTC().Format(time.RFC3339))
		_, err := startDelete(ctx, n, v, 5*time.Second)
		switch {
		case err == nil:
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
			if finished(f) && f.FinishedAt > 0 && f.FinishedAt < before {
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
