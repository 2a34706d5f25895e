package fsm

import (
	"errors"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// FSM is the replicated catalog. It implements raft.FSM.
type FSM struct {
	logger hclog.Logger

	mu    sync.RWMutex
	state *State
	watch chan struct{} // closed at the next change, then replaced

	maxResults int
}

var _ raft.FSM = (*FSM)(nil)

func New(logger hclog.Logger) *FSM {
	return NewWithOptions(logger, DefaultMaxResults)
}

// NewWithOptions lets tests shrink the idempotency memory. Every replica of a
// cluster must use the same maxResults, or their results would diverge.
func NewWithOptions(logger hclog.Logger, maxResults int) *FSM {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	if maxResults <= 0 {
		maxResults = DefaultMaxResults
	}
	return &FSM{
		logger:     logger.Named("fsm"),
		state:      newState(maxResults),
		watch:      make(chan struct{}),
		maxResults: maxResults,
	}
}

// Apply returns ApplyResult for every entry. It never panics on bad input:
// a malformed entry yields an ErrInvalid result, an unknown type flagged
// IgnoreUnknownFlag an empty one.
func (f *FSM) Apply(l *raft.Log) any {
	if l == nil {
		return ApplyResult{Err: errors.New("invalid request: nil log entry")}
	}
	return f.applyData(l.Index, l.Data)
}

func (f *FSM) applyData(index uint64, data []byte) ApplyResult {
	t, cmd, err := Decode(data)
	if err != nil {
		f.mu.Lock()
		f.state.applied = index
		f.mu.Unlock()
		if errors.Is(err, ErrUnknownCommand) && data[0]&byte(IgnoreUnknownFlag) != 0 {
			f.logger.Warn("skipping unknown command type", "index", index, "type", data[0])
			return ApplyResult{}
		}
		f.logger.Error("refusing malformed log entry", "index", index, "error", err)
		return ApplyResult{Err: err}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state.applied = index
	res, changed := f.state.apply(t, cmd.(commander))
	if t == CmdSetCatalogVersion && res.Err == nil && f.state.version > CatalogVersion {
		// The leader raises the version only when every server gossips
		// support for it, so this node was not a server then, or lied.
		f.logger.Error("the catalog's rules are newer than this node's: upgrade it, its catalog may now differ from the others'",
			"catalog_version", f.state.version, "supported", CatalogVersion)
	}
	if changed {
		f.notifyLocked()
	}
	if res.Err != nil {
		f.logger.Debug("command refused", "index", index, "type", t, "error", res.Err)
	}
	return res
}

func (f *FSM) notifyLocked() {
	close(f.watch)
	f.watch = make(chan struct{})
}

// View runs fn with a read lock held on the current state. fn must not keep
// the *State after returning.
func (f *FSM) View(fn func(s *State)) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	fn(f.state)
}

// Watch returns a channel that is closed at the next applied change (or
// restore). Executors wait on it instead of polling.
func (f *FSM) Watch() <-chan struct{} {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.watch
}

// AppliedIndex is the raft index of the last entry this FSM has applied
// (restored from snapshots too). raft.AppliedIndex() runs ahead of it: raft
// counts entries once they are queued for the FSM, so a read-your-writes
// barrier must wait on this one.
func (f *FSM) AppliedIndex() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.state.applied
}
