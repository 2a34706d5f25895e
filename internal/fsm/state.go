package fsm

import (
	"errors"
	"fmt"
	"sort"
)

// DefaultMaxResults bounds the idempotency memory: the results of the last
// this many RequestIDs, in apply order.
const DefaultMaxResults = 10000

// State is the catalog. Accessors return copies, sorted by id where lists.
// All fields are unexported; the indexes are maintained incrementally by the
// mutation helpers below so that the planner never scans all volumes.
type State struct {
	hosts   map[string]*Host
	volumes map[string]*Volume
	forks   map[string]*Fork

	byName map[string]*Volume            // name -> volume
	byApp  map[string]map[string]*Volume // app -> id -> volume
	byHost map[string]map[string]*Volume // host -> id -> volume
	used   map[string]int64              // host -> bytes reserved (non-failed volumes)
	active map[string]*Fork              // pending or running forks

	applied uint64 // raft index of the last applied entry
	version uint32 // catalog version recorded by CmdSetCatalogVersion (0: none yet)
	// revoked API token ids -> the token's expiry (unix seconds, 0: never).
	revoked map[string]int64

	// Idempotency: RequestID -> first result, plus apply order for eviction.
	results    map[string]*resultRecord
	resOrder   []string
	resStart   int
	maxResults int
}

func newState(maxResults int) *State {
	if maxResults <= 0 {
		maxResults = DefaultMaxResults
	}
	return &State{
		hosts:      map[string]*Host{},
		volumes:    map[string]*Volume{},
		forks:      map[string]*Fork{},
		byName:     map[string]*Volume{},
		byApp:      map[string]map[string]*Volume{},
		byHost:     map[string]map[string]*Volume{},
		used:       map[string]int64{},
		active:     map[string]*Fork{},
		results:    map[string]*resultRecord{},
		revoked:    map[string]int64{},
		maxResults: maxResults,
	}
}

// --- read accessors --------------------------------------------------------

func (s *State) Host(id string) (Host, bool) {
	h, ok := s.hosts[id]
	if !ok {
		return Host{}, false
	}
	return *h, true
}

func (s *State) Hosts() []Host {
	out := make([]Host, 0, len(s.hosts))
	for _, h := range s.hosts {
		out = append(out, *h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (s *State) Volume(id string) (Volume, bool) {
	v, ok := s.volumes[id]
	if !ok {
		return Volume{}, false
	}
	return *v, true
}

func (s *State) VolumeByName(name string) (Volume, bool) {
	v, ok := s.byName[name]
	if !ok {
		return Volume{}, false
	}
	return *v, true
}

func (s *State) Volumes() []Volume { return sortedVolumes(s.volumes) }

// VolumesByApp returns the app's volumes (any state), sorted by id.
func (s *State) VolumesByApp(app string) []Volume { return sortedVolumes(s.byApp[app]) }

// VolumesOnHost returns the volumes placed on host (any state), sorted by id.
func (s *State) VolumesOnHost(hostID string) []Volume { return sortedVolumes(s.byHost[hostID]) }

func sortedVolumes(m map[string]*Volume) []Volume {
	out := make([]Volume, 0, len(m))
	for _, v := range m {
		out = append(out, *v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (s *State) Fork(id string) (Fork, bool) {
	f, ok := s.forks[id]
	if !ok {
		return Fork{}, false
	}
	return *f, true
}

func (s *State) Forks() []Fork { return sortedForks(s.forks) }

// ActiveForks returns the pending and running forks, sorted by id: what an
// executor has to act on, without scanning finished history.
func (s *State) ActiveForks() []Fork { return sortedForks(s.active) }

func sortedForks(m map[string]*Fork) []Fork {
	out := make([]Fork, 0, len(m))
	for _, f := range m {
		out = append(out, *f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Used is the sum of sizes of the host's volumes that are not failed (a
// creating volume is a reservation), plus the snapshot reservations of
// forks in flight from it. Free is Budget-Used, never negative.
func (s *State) Used(hostID string) int64 { return s.used[hostID] }

func (s *State) Free(hostID string) int64 {
	h, ok := s.hosts[hostID]
	if !ok {
		return 0
	}
	return freeOf(h, s.used[hostID])
}

func freeOf(h *Host, used int64) int64 {
	if f := h.Budget - used; f > 0 {
		return f
	}
	return 0
}

// --- mutation helpers (keep every index in step) ----------------------------
//
// Stored *Host, *Volume and *Fork records are immutable once in the maps:
// every change stores a fresh copy. That makes Snapshot a copy of pointers
// and lets Persist read the records while Apply goes on.

func countsAgainstBudget(st VolumeState) bool { return st != VolumeFailed }

func (s *State) addVolume(v *Volume) {
	s.volumes[v.ID] = v
	s.byName[v.Name] = v
	if v.App != "" {
		addTo(s.byApp, v.App, v)
	}
	addTo(s.byHost, v.Host, v)
	if countsAgainstBudget(v.State) {
		s.used[v.Host] += v.Size
	}
}

func (s *State) removeVolume(v *Volume) {
	delete(s.volumes, v.ID)
	if s.byName[v.Name] == v {
		delete(s.byName, v.Name)
	}
	if v.App != "" {
		removeFrom(s.byApp, v.App, v.ID)
	}
	removeFrom(s.byHost, v.Host, v.ID)
	if countsAgainstBudget(v.State) {
		s.addUsed(v.Host, -v.Size)
	}
}

// replaceVolume swaps the stored record v for nv (same id, name, app, host).
func (s *State) replaceVolume(v, nv *Volume) {
	s.removeVolume(v)
	s.addVolume(nv)
}

// setVolumeState replaces v by a copy in the new state and returns it.
// Records are never changed in place: a snapshot taken earlier shares them
// and may be encoding them right now.
func (s *State) setVolumeState(v *Volume, st VolumeState) *Volume {
	nv := *v
	nv.State = st
	s.replaceVolume(v, &nv)
	return &nv
}

func (s *State) addUsed(host string, delta int64) {
	if u := s.used[host] + delta; u != 0 {
		s.used[host] = u
	} else {
		// Drop zero entries so that incremental and rebuilt indexes compare equal.
		delete(s.used, host)
	}
}

func (s *State) putFork(f *Fork) {
	// An active fork's snapshot reservation counts against its source
	// host until the fork finishes.
	if old := s.active[f.ID]; old != nil && old.SnapshotReserve != 0 {
		s.addUsed(old.SourceHost, -old.SnapshotReserve)
	}
	if (f.State == ForkPending || f.State == ForkRunning) && f.SnapshotReserve != 0 {
		s.addUsed(f.SourceHost, f.SnapshotReserve)
	}
	s.forks[f.ID] = f
	if f.State == ForkPending || f.State == ForkRunning {
		s.active[f.ID] = f
	} else {
		delete(s.active, f.ID)
	}
}

func addTo(idx map[string]map[string]*Volume, key string, v *Volume) {
	m := idx[key]
	if m == nil {
		m = map[string]*Volume{}
		idx[key] = m
	}
	m[v.ID] = v
}

func removeFrom(idx map[string]map[string]*Volume, key, id string) {
	m := idx[key]
	delete(m, id)
	if len(m) == 0 {
		delete(idx, key)
	}
}

// --- idempotency memory ---------------------------------------------------

// resultRecord is a command's result in a replicable form: the value copied,
// the error reduced to its sentinel and message.
type resultRecord struct {
	RequestID string      `json:"request_id"`
	Type      CommandType `json:"type"`
	Host      *Host       `json:"host,omitempty"`
	Volume    *Volume     `json:"volume,omitempty"`
	Fork      *Fork       `json:"fork,omitempty"`
	ErrKind   string      `json:"err_kind,omitempty"`
	ErrMsg    string      `json:"err_msg,omitempty"`
	Digest    string      `json:"digest,omitempty"` // the request's Header.Digest
}

var errKinds = []struct {
	kind string
	err  error
}{
	{"not_found", ErrNotFound},
	{"exists", ErrExists},
	{"invalid", ErrInvalid},
	{"no_room", ErrNoRoom},
	{"conflict", ErrConflict},
	{"upgrade_required", ErrUpgradeRequired}, // append only: kinds are stored in snapshots
	{"token_revoked", ErrTokenRevoked},
}

// appliedError is a domain error rebuilt from a resultRecord: same message,
// same sentinel for errors.Is, on every replica and after a restore.
type appliedError struct {
	sentinel error
	msg      string
}

func (e *appliedError) Error() string { return e.msg }
func (e *appliedError) Unwrap() error { return e.sentinel }

func newRecord(reqID string, t CommandType, val any, err error) *resultRecord {
	r := &resultRecord{RequestID: reqID, Type: t}
	switch v := val.(type) {
	case *Host:
		c := *v
		r.Host = &c
	case *Volume:
		c := *v
		r.Volume = &c
	case *Fork:
		c := *v
		r.Fork = &c
	}
	if err != nil {
		r.ErrMsg = err.Error()
		r.ErrKind = "other"
		for _, k := range errKinds {
			if errors.Is(err, k.err) {
				r.ErrKind = k.kind
				break
			}
		}
	}
	return r
}

// result returns fresh copies, so a caller mutating the value cannot touch
// the remembered result.
func (r *resultRecord) result() ApplyResult {
	var res ApplyResult
	switch {
	case r.Host != nil:
		c := *r.Host
		res.Value = &c
	case r.Volume != nil:
		c := *r.Volume
		res.Value = &c
	case r.Fork != nil:
		c := *r.Fork
		res.Value = &c
	}
	if r.ErrKind != "" {
		var sentinel error
		for _, k := range errKinds {
			if k.kind == r.ErrKind {
				sentinel = k.err
			}
		}
		res.Err = &appliedError{sentinel: sentinel, msg: r.ErrMsg}
	}
	return res
}

func (s *State) remember(r *resultRecord) {
	s.results[r.RequestID] = r
	s.resOrder = append(s.resOrder, r.RequestID)
	for len(s.resOrder)-s.resStart > s.maxResults {
		delete(s.results, s.resOrder[s.resStart])
		s.resOrder[s.resStart] = ""
		s.resStart++
	}
	// Compact once the dead prefix outgrows the live part.
	if s.resStart > s.maxResults {
		s.resOrder = append([]string(nil), s.resOrder[s.resStart:]...)
		s.resStart = 0
	}
}

// rememberedResults returns the records in apply order.
func (s *State) rememberedResults() []*resultRecord {
	out := make([]*resultRecord, 0, len(s.resOrder)-s.resStart)
	for _, id := range s.resOrder[s.resStart:] {
		out = append(out, s.results[id])
	}
	return out
}

// checkIndexes rebuilds every index from the primary maps and compares; used
// by tests and the fuzzer to prove incremental maintenance is right.
func (s *State) checkIndexes() error {
	re := newState(s.maxResults)
	for _, h := range s.hosts {
		re.hosts[h.ID] = h
	}
	for _, v := range s.volumes {
		re.addVolume(v)
	}
	for _, f := range s.forks {
		re.putFork(f)
	}
	if err := sameIndex("byName", len(s.byName), len(re.byName), func() bool {
		for k, v := range re.byName {
			if s.byName[k] != v {
				return false
			}
		}
		return true
	}); err != nil {
		return err
	}
	for name, pair := range map[string][2]map[string]map[string]*Volume{"byApp": {s.byApp, re.byApp}, "byHost": {s.byHost, re.byHost}} {
		a, b := pair[0], pair[1]
		if len(a) != len(b) {
			return fmt.Errorf("%s: %d keys, rebuilt %d", name, len(a), len(b))
		}
		for k, m := range b {
			if len(a[k]) != len(m) {
				return fmt.Errorf("%s[%s]: %d entries, rebuilt %d", name, k, len(a[k]), len(m))
			}
			for id, v := range m {
				if a[k][id] != v {
					return fmt.Errorf("%s[%s][%s] differs", name, k, id)
				}
			}
		}
	}
	if len(s.used) != len(re.used) {
		return fmt.Errorf("used: %v, rebuilt %v", s.used, re.used)
	}
	for k, u := range re.used {
		if s.used[k] != u {
			return fmt.Errorf("used[%s] = %d, rebuilt %d", k, s.used[k], u)
		}
	}
	if len(s.active) != len(re.active) {
		return fmt.Errorf("active forks: %d, rebuilt %d", len(s.active), len(re.active))
	}
	for id := range re.active {
		if s.active[id] == nil {
			return fmt.Errorf("active fork %s missing from index", id)
		}
	}
	if n := len(s.resOrder) - s.resStart; n != len(s.results) || n > s.maxResults {
		return fmt.Errorf("results: order %d, map %d, max %d", n, len(s.results), s.maxResults)
	}
	return nil
}

func sameIndex(name string, a, b int, same func() bool) error {
	if a != b || !same() {
		return fmt.Errorf("%s index differs from rebuilt (%d vs %d entries)", name, a, b)
	}
	return nil
}

// CatalogVersion is the version of the rules the catalog applies: the one
// recorded by the leader, or 1 before any was recorded.
func (s *State) CatalogVersion() uint32 { return max(s.version, 1) }

// RecordedCatalogVersion is the recorded version itself (0: none yet).
func (s *State) RecordedCatalogVersion() uint32 { return s.version }

// TokenRevoked reports whether the API token with id was revoked.
func (s *State) TokenRevoked(id string) bool {
	_, ok := s.revoked[id]
	return ok
}

// RevokedTokens lists revoked token ids with their expiry (unix seconds,
// 0: never), sorted by id.
func (s *State) RevokedTokens() []RevokedToken {
	out := make([]RevokedToken, 0, len(s.revoked))
	for id, exp := range s.revoked {
		out = append(out, RevokedToken{ID: id, Expires: exp})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// RevokedToken is one revocation.
type RevokedToken struct {
	ID      string `json:"id"`
	Expires int64  `json:"expires,omitempty"`
}
