package fsm

import (
	"fmt"
	"slices"
	"strings"
)

// apply runs one decoded command against s. It returns the result and
// whether the catalog changed (watchers are woken only then).
func (s *State) apply(t CommandType, cmd commander) (ApplyResult, bool) {
	h := cmd.header()
	if h.RequestID != "" {
		if r, ok := s.results[h.RequestID]; ok {
			if h.Digest != "" && r.Digest != "" && h.Digest != r.Digest {
				_, key, _ := strings.Cut(h.RequestID, ":") // the API scopes keys as "kind:key"
				return ApplyResult{Err: fmt.Errorf("%w: idempotency key %q was already used for a different request; use a new key",
					ErrConflict, key)}, false
			}
			return r.result(), false
		}
	}
	var (
		val any
		err error
	)
	if need := t.Since(); need > s.CatalogVersion() {
		err = fmt.Errorf("%w: %v needs catalog version %d, the cluster is at %d", ErrUpgradeRequired, t, need, s.CatalogVersion())
	} else if h.TokenID != "" && s.TokenRevoked(h.TokenID) {
		err = fmt.Errorf("%w: %s", ErrTokenRevoked, h.TokenID)
	} else {
		val, err = s.dispatch(cmd)
	}
	_, noop := cmd.(*NoopCmd)
	changed := err == nil && !noop
	if h.RequestID == "" {
		if err != nil {
			return ApplyResult{Err: err}, false
		}
		return ApplyResult{Value: val}, changed
	}
	rec := newRecord(h.RequestID, t, val, err)
	rec.Digest = h.Digest
	s.remember(rec)
	// Return the recorded form, so the first answer and any retry's answer
	// are the same on every replica.
	return rec.result(), changed
}

func (s *State) dispatch(cmd commander) (any, error) {
	switch c := cmd.(type) {
	case *UpsertHostCmd:
		return s.upsertHost(c)
	case *RemoveHostCmd:
		return s.removeHost(c)
	case *SetHostAliveCmd:
		return s.setHostAlive(c)
	case *CreateVolumeCmd:
		return s.createVolume(c)
	case *SetVolumeStateCmd:
		return s.setVolumeStateCmd(c)
	case *DeleteVolumeCmd:
		return s.deleteVolume(c)
	case *CreateForkCmd:
		return s.createFork(c)
	case *ForkProgressCmd:
		return s.forkProgress(c)
	case *FinishForkCmd:
		return s.finishFork(c)
	case *NoopCmd:
		return nil, nil
	case *SetVolumeTTLCmd:
		return s.setVolumeTTL(c)
	case *PruneForksCmd:
		return s.pruneForks(c)
	case *SetCatalogVersionCmd:
		return s.setCatalogVersion(c)
	case *RevokeTokenCmd:
		return s.revokeToken(c)
	}
	return nil, fmt.Errorf("%w: %w %T", ErrInvalid, ErrUnknownCommand, cmd)
}

func hostCopy(h *Host) *Host       { c := *h; return &c }
func volumeCopy(v *Volume) *Volume { c := *v; return &c }
func forkCopy(f *Fork) *Fork       { c := *f; return &c }

// upsertHost registers or updates a host. A new host takes Alive and
// UpdatedAt from the command (UpdatedAt defaulting to the command's time); an
// existing host keeps its own: liveness changes only through SetHostAlive,
// so a re-registration cannot revive a host gossip declared dead.
func (s *State) upsertHost(c *UpsertHostCmd) (any, error) {
	h := c.Host
	if err := ValidateNodeName("host id", h.ID); err != nil {
		return nil, err
	}
	if err := ValidateNodeName("region", h.Region); err != nil {
		return nil, fmt.Errorf("host %s: %w", h.ID, err)
	}
	if h.Budget < 0 {
		return nil, fmt.Errorf("%w: host %s: budget %d is negative", ErrInvalid, h.ID, h.Budget)
	}
	if !s.KeepsSnapshotFigures() {
		// A build before version 4 drops these fields when it decodes
		// the entry (and so from its snapshots): every build stores the
		// record without them until all can keep them.
		h.SnapshotPermille, h.SnapshotMin, h.SnapshotGrain = 0, 0, 0
	}
	if old, ok := s.hosts[h.ID]; ok {
		h.Alive, h.UpdatedAt = old.Alive, old.UpdatedAt
	} else if h.UpdatedAt == 0 {
		h.UpdatedAt = c.Time
	}
	s.hosts[h.ID] = &h
	return hostCopy(&h), nil
}

func (s *State) removeHost(c *RemoveHostCmd) (any, error) {
	h, ok := s.hosts[c.ID]
	if !ok {
		return nil, fmt.Errorf("%w: host %q", ErrNotFound, c.ID)
	}
	if n := len(s.byHost[c.ID]); n > 0 {
		return nil, fmt.Errorf("%w: host %s still holds %d volume(s)", ErrConflict, c.ID, n)
	}
	delete(s.hosts, c.ID)
	return hostCopy(h), nil
}

func (s *State) setHostAlive(c *SetHostAliveCmd) (any, error) {
	h, ok := s.hosts[c.ID]
	if !ok {
		return nil, fmt.Errorf("%w: host %q", ErrNotFound, c.ID)
	}
	nh := *h
	nh.Alive = c.Alive
	nh.UpdatedAt = c.Time
	s.hosts[nh.ID] = &nh
	return hostCopy(&nh), nil
}

func (s *State) createVolume(c *CreateVolumeCmd) (any, error) {
	v := c.Volume
	if err := validateID("volume id", VolumeIDPrefix, v.ID); err != nil {
		return nil, err
	}
	if err := ValidateName("volume name", v.Name); err != nil {
		return nil, err
	}
	if v.App != "" {
		if err := ValidateName("app", v.App); err != nil {
			return nil, err
		}
	}
	if err := validateSize(v.Size); err != nil {
		return nil, fmt.Errorf("volume %s: %w", v.Name, err)
	}
	switch v.State {
	case "":
		v.State = VolumeCreating
	case VolumeCreating, VolumeReady:
	default:
		return nil, fmt.Errorf("%w: volume %s: cannot be created in state %q", ErrInvalid, v.Name, v.State)
	}
	if _, ok := s.volumes[v.ID]; ok {
		return nil, fmt.Errorf("%w: volume id %s", ErrExists, v.ID)
	}
	if old, ok := s.byName[v.Name]; ok {
		return nil, fmt.Errorf("%w: a volume named %q exists (%s)", ErrExists, v.Name, old.ID)
	}
	if v.Host == "" {
		h, err := s.placeVolume(v.Size, c.Region)
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		v.Host = h
	} else {
		h, ok := s.hosts[v.Host]
		if !ok {
			return nil, fmt.Errorf("%w: volume %s: host %q (hosts: %s)", ErrNotFound, v.Name, v.Host, s.knownHosts())
		}
		if !h.Alive {
			return nil, fmt.Errorf("%w: volume %s: host %s is down", ErrConflict, v.Name, v.Host)
		}
		if free := s.Free(h.ID); free < v.Size {
			return nil, fmt.Errorf("%w: volume %s: host %s has %s free, need %s", ErrNoRoom, v.Name, h.ID, FormatBytes(free), FormatBytes(v.Size))
		}
	}
	if err := validateTTL(c.TTL); err != nil {
		return nil, fmt.Errorf("volume %s: %w", v.Name, err)
	}
	if v.CreatedAt == 0 {
		v.CreatedAt = c.Time
	}
	if c.TTL > 0 {
		v.ExpiresAt = expiry(c.Time, c.TTL)
	}
	s.addVolume(&v)
	return volumeCopy(&v), nil
}

// placeVolume picks an alive host with room: the hinted region first, then
// the most free, then the smaller id.
//
// A region no host has is refused, like a fork's --region: it is a typo
// far more often than a wish to place anywhere.
func (s *State) placeVolume(size int64, region string) (string, error) {
	if region != "" && !s.hasRegion(region) {
		return "", fmt.Errorf("%w: no host in region %q", ErrNotFound, region)
	}
	var best *Host
	var bestFree int64
	var most *Host
	var mostFree int64
	for _, h := range s.hosts {
		if !h.Alive {
			continue
		}
		free := s.Free(h.ID)
		if most == nil || free > mostFree || free == mostFree && h.ID < most.ID {
			most, mostFree = h, free
		}
		if free < size {
			continue
		}
		if best == nil || betterPlacement(h, free, best, bestFree, region) {
			best, bestFree = h, free
		}
	}
	if best != nil {
		return best.ID, nil
	}
	if most == nil {
		return "", fmt.Errorf("%w: need %s, no alive host", ErrNoRoom, FormatBytes(size))
	}
	return "", fmt.Errorf("%w: need %s, most free is %s on %s", ErrNoRoom, FormatBytes(size), FormatBytes(mostFree), most.ID)
}

func betterPlacement(h *Host, free int64, b *Host, bfree int64, region string) bool {
	if region != "" {
		hr, br := h.Region == region, b.Region == region
		if hr != br {
			return hr
		}
	}
	if free != bfree {
		return free > bfree
	}
	return h.ID < b.ID
}

func validVolumeState(st VolumeState) bool {
	switch st {
	case VolumeCreating, VolumeReady, VolumeFailed, VolumeDeleting:
		return true
	}
	return false
}

// volumeTransitions lists the state changes SetVolumeState may make. A
// volume is made (creating), then is ready or failed; deleting is final
// (DeleteVolume purges it). Nothing goes back: a late "ready" from a
// create that raced a delete must not undo the delete, and a failed
// volume's space may already be someone else's.
var volumeTransitions = map[VolumeState][]VolumeState{
	VolumeCreating: {VolumeReady, VolumeFailed, VolumeDeleting},
	VolumeReady:    {VolumeDeleting},
	VolumeFailed:   {VolumeDeleting},
}

func (s *State) setVolumeStateCmd(c *SetVolumeStateCmd) (any, error) {
	v, ok := s.volumes[c.ID]
	if !ok {
		return nil, fmt.Errorf("%w: volume %q", ErrNotFound, c.ID)
	}
	if !validVolumeState(c.State) {
		return nil, fmt.Errorf("%w: volume state %q", ErrInvalid, c.State)
	}
	if c.State == v.State {
		return volumeCopy(v), nil // a retry whose first answer was lost
	}
	// A fork in flight reads or writes it: the caller must wait for the fork
	// or cancel it, and the fork's own end (FinishFork) sets its target.
	// Checked here, in the log's order, so a delete can never slip in
	// between a caller's check and a fork starting on the volume.
	if busy := s.activeForkOn(v.ID); busy != nil {
		return nil, fmt.Errorf("%w: volume %s is used by %s fork %s; wait for it or cancel it (forknode forks cancel %s)", ErrConflict, v.ID, busy.State, busy.ID, busy.ID)
	}
	if !slices.Contains(volumeTransitions[v.State], c.State) {
		return nil, fmt.Errorf("%w: volume %s is %s and cannot become %s", ErrConflict, v.ID, v.State, c.State)
	}
	return volumeCopy(s.setVolumeState(v, c.State)), nil
}

// activeForkOn returns the active fork (smallest id, for a deterministic
// message) that reads or writes volume id, or nil.
func (s *State) activeForkOn(id string) *Fork {
	var busy *Fork
	for _, f := range s.active {
		if (f.SourceVolume == id || f.TargetVolume == id) && (busy == nil || f.ID < busy.ID) {
			busy = f
		}
	}
	return busy
}

// deleteVolume purges the record of a volume being deleted or failed (its
// host removed the data first). A volume an active fork reads from or
// writes to is refused: finish or fail the fork first.
func (s *State) deleteVolume(c *DeleteVolumeCmd) (any, error) {
	v, ok := s.volumes[c.ID]
	if !ok {
		return nil, fmt.Errorf("%w: volume %q", ErrNotFound, c.ID)
	}
	if busy := s.activeForkOn(v.ID); busy != nil {
		return nil, fmt.Errorf("%w: volume %s is used by %s fork %s", ErrConflict, v.ID, busy.State, busy.ID)
	}
	if v.State != VolumeDeleting && v.State != VolumeFailed {
		return nil, fmt.Errorf("%w: volume %s is %s; delete it first (state deleting)", ErrConflict, v.ID, v.State)
	}
	s.removeVolume(v)
	return volumeCopy(v), nil
}

// setVolumeTTL sets or clears a volume's expiry. A volume already being
// deleted is refused: its expiry no longer means anything.
func (s *State) setVolumeTTL(c *SetVolumeTTLCmd) (any, error) {
	v, ok := s.volumes[c.ID]
	if !ok {
		return nil, fmt.Errorf("%w: volume %q", ErrNotFound, c.ID)
	}
	if err := validateTTL(c.TTL); err != nil {
		return nil, fmt.Errorf("volume %s: %w", v.ID, err)
	}
	if v.State == VolumeDeleting {
		return nil, fmt.Errorf("%w: volume %s is being deleted", ErrConflict, v.ID)
	}
	nv := *v
	nv.ExpiresAt = expiry(c.Time, c.TTL)
	s.replaceVolume(v, &nv)
	return volumeCopy(&nv), nil
}

// pruneForks drops finished forks that finished before c.Before. Active
// forks stay whatever their age.
func (s *State) pruneForks(c *PruneForksCmd) (any, error) {
	if c.Before <= 0 {
		return nil, fmt.Errorf("%w: prune forks: before %d must be > 0", ErrInvalid, c.Before)
	}
	for id, f := range s.forks {
		if f.FinishedBefore(c.Before) {
			delete(s.forks, id)
		}
	}
	return nil, nil
}

func (s *State) createFork(c *CreateForkCmd) (any, error) {
	if err := validateID("fork id", ForkIDPrefix, c.ForkID); err != nil {
		return nil, err
	}
	if err := validateID("target volume id", VolumeIDPrefix, c.TargetVolumeID); err != nil {
		return nil, err
	}
	if _, ok := s.forks[c.ForkID]; ok {
		return nil, fmt.Errorf("%w: fork id %s", ErrExists, c.ForkID)
	}
	if _, ok := s.volumes[c.TargetVolumeID]; ok {
		return nil, fmt.Errorf("%w: volume id %s", ErrExists, c.TargetVolumeID)
	}
	if c.Request.RateLimit < 0 {
		return nil, fmt.Errorf("%w: rate limit %d is negative", ErrInvalid, c.Request.RateLimit)
	}
	if err := validateTTL(c.Request.TTL); err != nil {
		return nil, err
	}
	plan, err := PlanFork(s, c.Request)
	if err != nil {
		return nil, err
	}
	// A fork is a new database, not a replica of its source: it joins an
	// app only when asked, so it never becomes a candidate for the replica
	// path of the production app (its data diverges from the moment it is
	// made).
	app := c.Request.App
	f := &Fork{
		ID:              c.ForkID,
		Request:         c.Request.Source,
		Name:            c.Request.Name,
		SourceVolume:    plan.SourceVolume,
		SourceHost:      plan.SourceHost,
		TargetVolume:    c.TargetVolumeID,
		TargetHost:      plan.TargetHost,
		Path:            plan.Path,
		State:           ForkPending,
		BytesTotal:      plan.Size,
		RateLimit:       c.Request.RateLimit,
		SnapshotReserve: plan.SnapshotReserve,
		CreatedAt:       c.Time,
		UpdatedAt:       c.Time,
	}
	v := &Volume{
		ID:        c.TargetVolumeID,
		Name:      c.Request.Name,
		App:       app,
		Host:      plan.TargetHost,
		Size:      plan.Size,
		State:     VolumeCreating,
		Origin:    plan.SourceVolume,
		ForkID:    c.ForkID,
		CreatedAt: c.Time,
		ExpiresAt: expiry(c.Time, c.Request.TTL),
	}
	s.addVolume(v)
	s.putFork(f)
	return forkCopy(f), nil
}

// forkProgress marks the fork running. Progress for a finished fork is late
// news from the executor and is ignored.
func (s *State) forkProgress(c *ForkProgressCmd) (any, error) {
	f, ok := s.forks[c.ForkID]
	if !ok {
		return nil, fmt.Errorf("%w: fork %q", ErrNotFound, c.ForkID)
	}
	if c.BytesDone < 0 || c.BytesTotal < 0 || c.WireBytes < 0 {
		return nil, fmt.Errorf("%w: fork %s: negative progress figures", ErrInvalid, c.ForkID)
	}
	if f.Finished() {
		return forkCopy(f), nil
	}
	f = forkCopy(f)
	f.State = ForkRunning
	f.BytesDone = c.BytesDone
	if c.BytesTotal > 0 {
		f.BytesTotal = c.BytesTotal
	}
	f.WireBytes = c.WireBytes
	f.UpdatedAt = c.Time
	s.putFork(f)
	return forkCopy(f), nil
}

// finishFork ends the fork and sets its target volume ready or failed (a
// failed volume stops counting against its host's budget).
func (s *State) finishFork(c *FinishForkCmd) (any, error) {
	f, ok := s.forks[c.ForkID]
	if !ok {
		return nil, fmt.Errorf("%w: fork %q", ErrNotFound, c.ForkID)
	}
	if f.Finished() {
		return forkCopy(f), nil
	}
	f = forkCopy(f)
	target := s.volumes[f.TargetVolume]
	if c.OK && (target == nil || target.State != VolumeCreating) {
		// The target's space was given back or its record is gone: it
		// cannot become a ready volume (and re-reserving it could overbook
		// its host). No current path gets here; a reordered or forged
		// command must not either.
		c = &FinishForkCmd{Header: c.Header, ForkID: c.ForkID, Error: "target volume is no longer being created"}
		if target != nil {
			c.Error = fmt.Sprintf("target volume %s is %s, not creating", target.ID, target.State)
		}
	}
	if c.OK {
		f.State = ForkReady
		f.BytesDone = f.BytesTotal
		f.Error = ""
		if target != nil {
			s.setVolumeState(target, VolumeReady)
		}
	} else {
		f.State = ForkFailed
		f.Error = c.Error
		if f.Error == "" {
			f.Error = "failed"
		}
		if target != nil {
			s.setVolumeState(target, VolumeFailed)
		}
	}
	f.UpdatedAt = c.Time
	f.FinishedAt = c.Time
	s.putFork(f)
	return forkCopy(f), nil
}

// setCatalogVersion only raises the version: a stale or reordered command
// must not re-enable older rules.
func (s *State) setCatalogVersion(c *SetCatalogVersionCmd) (any, error) {
	if c.Version == 0 {
		return nil, fmt.Errorf("%w: catalog version 0", ErrInvalid)
	}
	s.version = max(s.version, c.Version)
	return nil, nil
}

// revokeToken records a revocation, and drops the ones whose tokens have
// expired by the command's time (they can no longer be presented).
func (s *State) revokeToken(c *RevokeTokenCmd) (any, error) {
	if c.ID == "" || len(c.ID) > 128 {
		return nil, fmt.Errorf("%w: token id %q", ErrInvalid, c.ID)
	}
	if c.Expires < 0 {
		return nil, fmt.Errorf("%w: expiry %d", ErrInvalid, c.Expires)
	}
	now := c.Time / 1e9
	for id, exp := range s.revoked {
		if exp != 0 && exp <= now {
			delete(s.revoked, id)
		}
	}
	if c.Expires == 0 || c.Expires > now {
		s.revoked[c.ID] = c.Expires
	}
	return nil, nil
}
