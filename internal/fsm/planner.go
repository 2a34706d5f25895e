package fsm

import (
	"fmt"
	"sort"
	"strings"
)

// PlanFork is the pure planner. Apply(CmdCreateFork) calls it; the API may call
// it for a dry run. It reads s only and is deterministic: every choice among
// equals falls back to the smaller id, never to map order.
//
// req.Source resolves as "app:vol_id" (that volume, pinned), else a volume
// id, else a volume name, else an app name (the app's best ready volume);
// see resolveSource for what catalog version 3 changed.
// req.Name must be a free, valid volume name.
func PlanFork(s *State, req ForkRequest) (Plan, error) {
	if s == nil {
		return Plan{}, fmt.Errorf("%w: no catalog", ErrInvalid)
	}
	if err := ValidateName("fork name", req.Name); err != nil {
		return Plan{}, err
	}
	if v, ok := s.byName[req.Name]; ok {
		return Plan{}, fmt.Errorf("%w: a volume named %q exists (%s)", ErrExists, req.Name, v.ID)
	}
	if req.App != "" {
		if err := ValidateName("app", req.App); err != nil {
			return Plan{}, err
		}
	}
	switch req.Via {
	case "", PathClone, PathCopy, PathReplica, PathStream:
	default:
		return Plan{}, fmt.Errorf("%w: via %q: want clone, copy, replica or stream", ErrInvalid, req.Via)
	}
	loc, err := s.location(req)
	if err != nil {
		return Plan{}, err
	}
	p := &planner{s: s, req: req, loc: loc}
	src, err := s.resolveSource(req.Source)
	if err != nil {
		return Plan{}, err
	}
	if src.vol == nil {
		return p.planApp(src.app)
	}
	return p.planVolume(src.vol, src.pinned)
}

// location is the operator's --host/--region constraint on the target.
type location struct{ host, region string }

func (l location) any() bool { return l.host == "" && l.region == "" }

func (l location) allows(h *Host) bool {
	return (l.host == "" || h.ID == l.host) && (l.region == "" || h.Region == l.region)
}

func (l location) String() string {
	switch {
	case l.host != "" && l.region != "":
		return fmt.Sprintf("--host %s --region %s", l.host, l.region)
	case l.host != "":
		return "--host " + l.host
	case l.region != "":
		return "--region " + l.region
	}
	return "no location"
}

// where is " (--host h2)" for messages, or "" without a constraint.
func (l location) where() string {
	if l.any() {
		return ""
	}
	return " (" + l.String() + ")"
}

func (s *State) location(req ForkRequest) (location, error) {
	loc := location{host: req.Host, region: req.Region}
	if req.Host != "" {
		h, ok := s.hosts[req.Host]
		if !ok {
			return loc, fmt.Errorf("%w: target host %q (hosts: %s)", ErrNotFound, req.Host, s.knownHosts())
		}
		if !h.Alive {
			return loc, fmt.Errorf("%w: target host %s is down", ErrConflict, req.Host)
		}
		if req.Region != "" && h.Region != req.Region {
			return loc, fmt.Errorf("%w: target host %s is in region %s, not %s", ErrInvalid, h.ID, h.Region, req.Region)
		}
	}
	if req.Region != "" && req.Host == "" {
		if !s.hasRegion(req.Region) {
			return loc, fmt.Errorf("%w: no host in region %q", ErrNotFound, req.Region)
		}
	}
	return loc, nil
}

type source struct {
	vol    *Volume // a single volume, or nil for an app source
	pinned bool    // named as app:vol_id: never substitute a replica
	app    string
}

// resolveSource: "app:vol_id" pins one volume of that app; otherwise a
// volume id, then a volume name, then an app name. From catalog version 3,
// "app:" names the app alone, and a name that is both an app and the name
// of another app's volume is refused as ambiguous: forking the wrong
// database because of a name clash is worse than asking.
func (s *State) resolveSource(src string) (source, error) {
	if src == "" {
		return source{}, fmt.Errorf("%w: fork source is empty", ErrInvalid)
	}
	v3 := s.CatalogVersion() >= 3
	if app, id, ok := strings.Cut(src, ":"); ok {
		if v3 && app != "" && id == "" {
			if len(s.byApp[app]) == 0 {
				return source{}, fmt.Errorf("%w: source %q: no app %q", ErrNotFound, src, app)
			}
			return source{app: app}, nil
		}
		if app == "" || id == "" {
			want := "app:vol_id"
			if v3 {
				want = "app:vol_id, or app: for the app"
			}
			return source{}, fmt.Errorf("%w: source %q: want %s", ErrInvalid, src, want)
		}
		v := s.volumes[id]
		if v == nil {
			v = s.byName[id]
		}
		if v == nil {
			return source{}, fmt.Errorf("%w: source %q: no volume %q", ErrNotFound, src, id)
		}
		if v.App != app {
			return source{}, fmt.Errorf("%w: source %q: volume %s belongs to app %q, not %q", ErrNotFound, src, v.ID, v.App, app)
		}
		if err := readySource(v); err != nil {
			return source{}, err
		}
		return source{vol: v, pinned: true}, nil
	}
	v := s.volumes[src]
	if v == nil {
		v = s.byName[src]
		if v != nil && v3 && v.App != src && len(s.byApp[src]) > 0 {
			return source{}, fmt.Errorf("%w: source %q is both the name of volume %s (app %q) and an app: fork %s for that volume, or %s: for the app",
				ErrInvalid, src, v.ID, v.App, v.ID, src)
		}
	}
	if v != nil {
		if err := readySource(v); err != nil {
			return source{}, err
		}
		return source{vol: v}, nil
	}
	if len(s.byApp[src]) > 0 {
		return source{app: src}, nil
	}
	return source{}, fmt.Errorf("%w: source %q: no volume id, volume name or app by that name", ErrNotFound, src)
}

func readySource(v *Volume) error {
	if v.State != VolumeReady {
		return fmt.Errorf("%w: source %s (%s) is %s, not ready", ErrConflict, v.ID, v.Name, v.State)
	}
	return nil
}

type planner struct {
	s   *State
	req ForkRequest
	loc location
}

func (p *planner) plan(v *Volume, target string, path Path) Plan {
	return Plan{SourceVolume: v.ID, SourceHost: v.Host, TargetHost: target, Path: path, Size: v.Size,
		SnapshotReserve: p.s.snapshotCost(p.s.hosts[v.Host], v.Size)}
}

// snapshotCost is the space a fork's snapshot of a volume of size takes on
// its host h while the fork runs. From catalog version 3 the planner counts
// it and the fork holds it; before, a fork admitted for the target's size
// alone could fill the source's disk with its snapshot, under volumes
// promised that space. Version 3 knew one case, a full copy on a file
// backend without reflink; version 4 takes what the host advertises
// (SnapshotCost), which adds a thick LVM host's copy-on-write area, and
// keeps the version 3 rule for a host record that has no figures yet.
func (s *State) snapshotCost(h *Host, size int64) int64 {
	v := s.CatalogVersion()
	switch {
	case h == nil || v < 3:
		return 0
	case s.KeepsSnapshotFigures() && (h.SnapshotPermille > 0 || h.SnapshotMin > 0):
		return SnapshotCost(*h, size)
	case h.Backend != "file" || h.CanClone:
		return 0
	}
	return size
}

// KeepsSnapshotFigures reports whether host records carry their snapshot
// cost figures (catalog version 4). Before, the leader sends none and
// UpsertHost drops any, since older replicas cannot keep them: replicas
// that disagreed on them would plan forks differently.
func (s *State) KeepsSnapshotFigures() bool { return s.CatalogVersion() >= 4 }

// maxVolumeBytes bounds the sizes SnapshotCost multiplies (1 PiB, the
// block stream's own limit), so size × 1000 cannot overflow.
const maxVolumeBytes = 1 << 50

// SnapshotCost evaluates h's advertised snapshot figures for a volume of
// size: max(⌈size × permille / 1000⌉, min), at most the volume plus one
// grain per started 64 MiB, rounded up to the grain. For a thick LVM host
// that is lvm.SnapshotSize (ratio = permille/1000, minimum, extent size),
// checked against it by a test in package cow; for a file host without
// reflink (permille 1000) the volume's size. Out-of-range figures are
// clamped, so no record makes it overflow.
func SnapshotCost(h Host, size int64) int64 {
	if size <= 0 {
		return 0
	}
	size = min(size, maxVolumeBytes)
	p := min(max(h.SnapshotPermille, 0), 4000) // past 1000 the cap below rules
	lo := min(max(h.SnapshotMin, 0), maxVolumeBytes)
	g := min(max(h.SnapshotGrain, 0), 1<<34)
	c := max((size*p+999)/1000, lo)
	if g > 0 {
		c = min(c, size+(size/(64<<20)+1)*g)
		c = max(c, g)
		c = (c + g - 1) / g * g
	}
	return c
}

// snapshotWhat says what kind of snapshot host h takes, for messages.
func snapshotWhat(h *Host) string {
	switch {
	case h.Backend == "lvm":
		return "a classic LVM snapshot's copy-on-write area"
	case h.Backend == "file" && !h.CanClone:
		return "a full copy: no reflink on its filesystem"
	}
	return "as its backend advertises"
}

// localNeed is what a fork of v in place needs free on v's host h: the
// new volume and its snapshot.
func (p *planner) localNeed(v *Volume, h *Host) int64 {
	return v.Size + p.s.snapshotCost(h, v.Size)
}

// localOK: v's host may fork it in place (alive, room, allowed by location).
func (p *planner) localOK(v *Volume) (*Host, bool) {
	h := p.s.hosts[v.Host]
	if h == nil || !h.Alive || !p.loc.allows(h) {
		return h, false
	}
	return h, p.s.Free(h.ID) >= p.localNeed(v, h)
}

// planVolume plans a fork of one named volume v.
func (p *planner) planVolume(v *Volume, pinned bool) (Plan, error) {
	s := p.s
	h := s.hosts[v.Host]
	alive := h != nil && h.Alive
	here := p.loc.any() || (h != nil && p.loc.allows(h))
	room := alive && s.Free(h.ID) >= p.localNeed(v, h)

	switch p.req.Via {
	case "":
		if alive && here && room {
			if h.CanClone {
				return p.plan(v, h.ID, PathClone), nil
			}
			return p.plan(v, h.ID, PathCopy), nil
		}
		if !pinned && here {
			if r := p.bestReplica(v); r != nil {
				return p.plan(r, r.Host, PathReplica), nil
			}
		}
		if !alive {
			if pinned {
				return Plan{}, fmt.Errorf("%w: source %s: host %s is down (source pinned by app:vol_id, no replica considered)", ErrConflict, v.ID, v.Host)
			}
			return Plan{}, fmt.Errorf("%w: source %s: host %s is down and no ready volume of app %q is on an alive host with room", ErrConflict, v.ID, v.Host, v.App)
		}
		return p.stream(v, "")

	case PathClone, PathCopy:
		via := p.req.Via
		if err := p.localErr(v, h, via); err != nil {
			return Plan{}, err
		}
		return p.plan(v, h.ID, via), nil

	case PathReplica:
		if pinned {
			return Plan{}, fmt.Errorf("%w: via replica: source %s is pinned by app:vol_id", ErrConflict, v.ID)
		}
		if v.App == "" {
			return Plan{}, fmt.Errorf("%w: via replica: source %s belongs to no app", ErrConflict, v.ID)
		}
		if r := p.bestReplica(v); r != nil {
			return p.plan(r, r.Host, PathReplica), nil
		}
		return Plan{}, fmt.Errorf("%w: via replica: no other ready volume of app %q is on an alive host with room%s", ErrNoRoom, v.App, p.loc.where())

	default: // PathStream
		if p.req.Host == v.Host {
			return Plan{}, fmt.Errorf("%w: via stream: --host %s is the source host; a stream goes to another host", ErrInvalid, v.Host)
		}
		if !alive {
			return Plan{}, fmt.Errorf("%w: via stream: source host %s is down", ErrConflict, v.Host)
		}
		return p.stream(v, "via stream: ")
	}
}

// localErr explains why v cannot be forked on its own host.
func (p *planner) localErr(v *Volume, h *Host, via Path) error {
	switch {
	case h == nil || !h.Alive:
		return fmt.Errorf("%w: via %s: source host %s is down", ErrConflict, via, v.Host)
	case !p.loc.allows(h):
		return fmt.Errorf("%w: via %s: a %s stays on source host %s, but %s asks for another place", ErrInvalid, via, via, h.ID, p.loc)
	case via == PathClone && !h.CanClone:
		return fmt.Errorf("%w: via clone: host %s (%s backend) cannot clone", ErrConflict, h.ID, backendName(h))
	}
	if free, need := p.s.Free(h.ID), p.localNeed(v, h); free < need {
		what := ""
		if need != v.Size {
			what = fmt.Sprintf(" (%s for the fork and %s for its snapshot, %s)", FormatBytes(v.Size), FormatBytes(need-v.Size), snapshotWhat(h))
		}
		return fmt.Errorf("%w: via %s: host %s has no room: need %s%s, free %s", ErrNoRoom, via, h.ID, FormatBytes(need), what, FormatBytes(free))
	}
	return nil
}

func backendName(h *Host) string {
	if h.Backend == "" {
		return "unknown"
	}
	return h.Backend
}

// bestReplica picks another ready volume of v's app whose alive host (allowed
// by the location) has room for it: clone-capable hosts first, then the most
// free space, then the smaller volume id.
func (p *planner) bestReplica(v *Volume) *Volume {
	if v.App == "" {
		return nil
	}
	var best *Volume
	var bestHost *Host
	var bestFree int64
	for _, r := range p.s.byApp[v.App] {
		if r.ID == v.ID || r.State != VolumeReady {
			continue
		}
		h, ok := p.localOK(r)
		if !ok {
			continue
		}
		free := p.s.Free(h.ID)
		if best == nil || betterLocal(h, free, r.ID, bestHost, bestFree, best.ID) {
			best, bestHost, bestFree = r, h, free
		}
	}
	return best
}

func betterLocal(h *Host, free int64, id string, bh *Host, bfree int64, bid string) bool {
	if h.CanClone != bh.CanClone {
		return h.CanClone
	}
	if free != bfree {
		return free > bfree
	}
	return id < bid
}

// stream picks a target host other than v's: allowed by the location, alive,
// with room; the source's region first, then the most free, then the id.
func (p *planner) stream(v *Volume, prefix string) (Plan, error) {
	src := p.s.hosts[v.Host]
	if cost := p.s.snapshotCost(src, v.Size); cost > 0 {
		if free := p.s.Free(src.ID); free < cost {
			hint := ""
			if src.Backend == "file" {
				hint = "; XFS with reflink, btrfs or LVM snapshot in place"
			}
			return Plan{}, fmt.Errorf("%w: %ssource host %s has no room for the snapshot a stream reads from: need %s (%s), free %s%s",
				ErrNoRoom, prefix, src.ID, FormatBytes(cost), snapshotWhat(src), FormatBytes(free), hint)
		}
	}
	var best *Host
	var bestFree int64
	for _, t := range p.s.hosts {
		if t.ID == v.Host || !t.Alive || !p.loc.allows(t) {
			continue
		}
		free := p.s.Free(t.ID)
		if free < v.Size {
			continue
		}
		if best == nil || betterTarget(t, free, best, bestFree, src) {
			best, bestFree = t, free
		}
	}
	if best != nil {
		return p.plan(v, best.ID, PathStream), nil
	}
	return Plan{}, p.noRoom(prefix, v.Size, v.Host)
}

func betterTarget(t *Host, free int64, b *Host, bfree int64, src *Host) bool {
	if src != nil {
		ts, bs := t.Region == src.Region, b.Region == src.Region
		if ts != bs {
			return ts
		}
	}
	if free != bfree {
		return free > bfree
	}
	return t.ID < b.ID
}

// noRoom explains a stream with no target: the need and the best free
// figure among the alive hosts the location allows, other than src (the
// source's host cannot be a stream's target, so its free space is no
// answer).
func (p *planner) noRoom(prefix string, need int64, src string) error {
	var best *Host
	var bestFree int64
	for _, h := range p.s.hosts {
		if !h.Alive || !p.loc.allows(h) || h.ID == src {
			continue
		}
		free := p.s.Free(h.ID)
		if best == nil || free > bestFree || free == bestFree && h.ID < best.ID {
			best, bestFree = h, free
		}
	}
	where := p.loc.where()
	if best == nil {
		if h := p.s.hosts[src]; h != nil && h.Alive && p.loc.host == src {
			// --host names the source's host, which is full: its free
			// space is the answer after all.
			return fmt.Errorf("%w: %sneed %s, most free is %s on %s%s", ErrNoRoom, prefix, FormatBytes(need), FormatBytes(p.s.Free(src)), src, where)
		}
		return fmt.Errorf("%w: %sneed %s, no alive host%s other than the source's (%s)", ErrNoRoom, prefix, FormatBytes(need), where, src)
	}
	return fmt.Errorf("%w: %sneed %s, most free is %s on %s%s (the source's host %s does not count: a stream goes to another host)",
		ErrNoRoom, prefix, FormatBytes(need), FormatBytes(bestFree), best.ID, where, src)
}

// maxStreamTries bounds the work for an app whose every volume fails to
// stream: planning must stay fast whatever the app's size.
const maxStreamTries = 16

// planApp plans a fork of "the app": any of its ready volumes will do.
func (p *planner) planApp(app string) (Plan, error) {
	cands := make([]*Volume, 0, len(p.s.byApp[app]))
	var notReady *Volume
	for _, v := range p.s.byApp[app] {
		if v.State == VolumeReady {
			cands = append(cands, v)
		} else if notReady == nil || v.ID < notReady.ID {
			notReady = v
		}
	}
	if len(cands) == 0 {
		return Plan{}, fmt.Errorf("%w: source app %q has no ready volume (%s is %s)", ErrConflict, app, notReady.ID, notReady.State)
	}
	// Rank: forkable in place first, clone-capable host first, most free,
	// smaller id.
	type ranked struct {
		v     *Volume
		h     *Host
		local bool
		clone bool
		free  int64
	}
	rs := make([]ranked, len(cands))
	for i, v := range cands {
		h, ok := p.localOK(v)
		r := ranked{v: v, h: h, local: ok}
		if h != nil && h.Alive {
			r.clone = h.CanClone
			r.free = p.s.Free(h.ID)
		}
		rs[i] = r
	}
	sort.Slice(rs, func(i, j int) bool {
		a, b := rs[i], rs[j]
		if a.local != b.local {
			return a.local
		}
		if a.clone != b.clone {
			return a.clone
		}
		if a.free != b.free {
			return a.free > b.free
		}
		return a.v.ID < b.v.ID
	})
	best := rs[0]

	switch p.req.Via {
	case "", PathClone, PathCopy, PathReplica:
		if best.local {
			path := p.req.Via
			if path == "" {
				path = PathCopy
				if best.clone {
					path = PathClone
				}
			}
			if path == PathClone && !best.clone {
				// The ranking puts clone-capable hosts first: none has room.
				return Plan{}, fmt.Errorf("%w: via clone: no host holding a ready volume of app %q can clone and has room (best: %s on %s, %s backend)",
					ErrConflict, app, best.v.ID, best.h.ID, backendName(best.h))
			}
			return p.plan(best.v, best.h.ID, path), nil
		}
		if p.req.Via == PathReplica {
			return Plan{}, fmt.Errorf("%w: via replica: no ready volume of app %q is on an alive host with room for it%s", ErrNoRoom, app, p.loc.where())
		}
		if p.req.Via != "" {
			// Nothing local: explain with the best candidate.
			return Plan{}, p.localErr(best.v, best.h, p.req.Via)
		}
	}
	// Stream from the first candidate whose host is alive.
	var firstErr error
	tries := 0
	for _, r := range rs {
		if r.h == nil || !r.h.Alive {
			continue
		}
		plan, err := p.stream(r.v, "")
		if err == nil {
			return plan, nil
		}
		if firstErr == nil {
			firstErr = err
		}
		if tries++; tries >= maxStreamTries {
			break
		}
	}
	if firstErr == nil {
		return Plan{}, fmt.Errorf("%w: source app %q: every host holding a ready volume is down", ErrConflict, app)
	}
	if p.req.Via == PathStream {
		return Plan{}, fmt.Errorf("via stream: %w", firstErr)
	}
	return Plan{}, firstErr
}

// hasRegion reports whether any host, alive or not, is in region.
func (s *State) hasRegion(region string) bool {
	for _, h := range s.hosts {
		if h.Region == region {
			return true
		}
	}
	return false
}
