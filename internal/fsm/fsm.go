package fsm

// CONTRACT STUB: the fsm implementer replaces these bodies. Signatures are
// the contract used by internal/cluster; keep them (add more if needed).

import (
	"io"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// Encode builds a log entry: one type byte, then the JSON body.
func Encode(t CommandType, body any) ([]byte, error) { panic("unimplemented") }

// FSM is the replicated catalog. It implements raft.FSM.
type FSM struct{}

func New(logger hclog.Logger) *FSM { panic("unimplemented") }

// Apply returns ApplyResult for every entry.
func (f *FSM) Apply(l *raft.Log) any               { panic("unimplemented") }
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) { panic("unimplemented") }
func (f *FSM) Restore(rc io.ReadCloser) error      { panic("unimplemented") }

// View runs fn with a read lock held on the current state. fn must not keep
// the *State after returning.
func (f *FSM) View(fn func(s *State)) { panic("unimplemented") }

// Watch returns a channel that is closed at the next applied change (or
// restore). Executors wait on it instead of polling.
func (f *FSM) Watch() <-chan struct{} { panic("unimplemented") }

// State is the catalog. Accessors return copies, sorted by id where lists.
type State struct{}

func (s *State) Host(id string) (Host, bool)             { panic("unimplemented") }
func (s *State) Hosts() []Host                           { panic("unimplemented") }
func (s *State) Volume(id string) (Volume, bool)         { panic("unimplemented") }
func (s *State) VolumeByName(name string) (Volume, bool) { panic("unimplemented") }
func (s *State) Volumes() []Volume                       { panic("unimplemented") }
func (s *State) Fork(id string) (Fork, bool)             { panic("unimplemented") }
func (s *State) Forks() []Fork                           { panic("unimplemented") }

// Used is the sum of sizes of the host's volumes that are not failed (a
// creating volume is a reservation). Free is Budget-Used, never negative.
func (s *State) Used(hostID string) int64 { panic("unimplemented") }
func (s *State) Free(hostID string) int64 { panic("unimplemented") }

// PlanFork is the pure planner. Apply(CmdCreateFork) calls it; the API may call
// it for a dry run.
func PlanFork(s *State, req ForkRequest) (Plan, error) { panic("unimplemented") }
