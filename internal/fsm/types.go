package fsm

// This file is the contract between fsm and cluster. Field names are part of
// the snapshot format and the API's JSON: add fields, never rename them.

// Path is how a fork is made.
type Path string

const (
	PathClone   Path = "clone"   // O(1) CoW clone on the source host
	PathCopy    Path = "copy"    // snapshot + block copy on the source host
	PathReplica Path = "replica" // local fork of another volume of the same app
	PathStream  Path = "stream"  // snapshot on source, streamed to another host
)

// VolumeState of a catalog volume.
type VolumeState string

const (
	VolumeCreating VolumeState = "creating" // reserved, being made
	VolumeReady    VolumeState = "ready"
	VolumeFailed   VolumeState = "failed"   // made by a failed fork; host removes it
	VolumeDeleting VolumeState = "deleting" // host removes it, then DeleteVolume
)

// ForkState of a fork.
type ForkState string

const (
	ForkPending ForkState = "pending" // planned, not started by the hosts
	ForkRunning ForkState = "running"
	ForkReady   ForkState = "ready"
	ForkFailed  ForkState = "failed"
)

// Host is one storage node.
type Host struct {
	ID       string `json:"id"` // node name
	Region   string `json:"region"`
	RaftAddr string `json:"raft_addr"`
	APIAddr  string `json:"api_addr"`
	XferAddr string `json:"xfer_addr"` // transfer (stream) listener
	Backend  string `json:"backend"`   // "file", "lvm", "lvm-thin"
	CanClone bool   `json:"can_clone"`
	Budget   int64  `json:"budget"` // capacity budget in bytes
	// What a snapshot that a fork reads from takes on this host while the
	// fork runs, as advertised by its backend (see SnapshotCost); all zero
	// for a clone that costs next to nothing. Applied from catalog
	// version 4.
	SnapshotPermille int64 `json:"snapshot_permille,omitempty"`
	SnapshotMin      int64 `json:"snapshot_min,omitempty"`
	SnapshotGrain    int64 `json:"snapshot_grain,omitempty"`
	// Alive is stamped by the leader from gossip.
	Alive     bool  `json:"alive"`
	UpdatedAt int64 `json:"updated_at"` // unix nanos, stamped by the leader
}

// Volume in the catalog. Its size counts against its host's budget from the
// moment it is created (state creating): that is the reservation.
type Volume struct {
	ID        string      `json:"id"` // vol_…
	Name      string      `json:"name"`
	App       string      `json:"app,omitempty"`
	Host      string      `json:"host"`
	Size      int64       `json:"size"`
	State     VolumeState `json:"state"`
	Origin    string      `json:"origin,omitempty"` // source volume id, for forks
	ForkID    string      `json:"fork_id,omitempty"`
	CreatedAt int64       `json:"created_at"`
	// ExpiresAt (unix nanos; 0: never) is when the leader deletes the
	// volume. It is set from a TTL, relative to the leader-stamped time of
	// the command, never from a client's clock.
	ExpiresAt int64 `json:"expires_at,omitempty"`
}

// Fork is one fork in flight or finished.
type Fork struct {
	ID           string    `json:"id"` // fork_…
	Request      string    `json:"request"`
	Name         string    `json:"name"`
	SourceVolume string    `json:"source_volume"`
	SourceHost   string    `json:"source_host"`
	TargetVolume string    `json:"target_volume"`
	TargetHost   string    `json:"target_host"`
	Path         Path      `json:"path"`
	State        ForkState `json:"state"`
	BytesDone    int64     `json:"bytes_done"`
	BytesTotal   int64     `json:"bytes_total"`
	WireBytes    int64     `json:"wire_bytes,omitempty"`
	// RateLimit caps this fork's copy or stream in bytes/s of volume data,
	// under the hosts' own --rate-limit; 0 leaves only the hosts' limits.
	RateLimit int64 `json:"rate_limit,omitempty"`
	// SnapshotReserve is space held on the source host while the fork is
	// in flight, for a snapshot that is a full copy (a file backend
	// without reflink). Set at creation from catalog version 3 on.
	SnapshotReserve int64  `json:"snapshot_reserve,omitempty"`
	Error           string `json:"error,omitempty"`
	CreatedAt       int64  `json:"created_at"`
	UpdatedAt       int64  `json:"updated_at"`
	FinishedAt      int64  `json:"finished_at,omitempty"`
}

// Finished reports whether the fork reached a final state (ready or failed).
func (f Fork) Finished() bool { return f.State == ForkReady || f.State == ForkFailed }

// FinishedBefore reports whether the fork finished before t (unix nanos):
// what PruneForks drops.
func (f Fork) FinishedBefore(t int64) bool {
	return f.Finished() && f.FinishedAt > 0 && f.FinishedAt < t
}

// ForkRequest is what an operator asks for.
type ForkRequest struct {
	Source string `json:"source"` // "app", "app:vol_id", a volume name or id
	Name   string `json:"name"`   // new volume's name
	Host   string `json:"host,omitempty"`
	Region string `json:"region,omitempty"`
	Via    Path   `json:"via,omitempty"`
	App    string `json:"app,omitempty"` // app of the new volume; default the source's
	// RateLimit is the fork's own cap in bytes/s (0: the hosts' limits only).
	RateLimit int64 `json:"rate_limit,omitempty"`
	// TTL, when > 0, makes the new volume expire TTL nanoseconds after the
	// fork is created: the leader deletes it once it is past (see Volume.ExpiresAt).
	TTL int64 `json:"ttl,omitempty"`
}

// Plan is the planner's answer.
type Plan struct {
	SourceVolume string `json:"source_volume"`
	SourceHost   string `json:"source_host"`
	TargetHost   string `json:"target_host"`
	Path         Path   `json:"path"`
	Size         int64  `json:"size"`
	// SnapshotReserve is what the fork's snapshot holds on SourceHost
	// while it runs (see Fork.SnapshotReserve).
	SnapshotReserve int64 `json:"snapshot_reserve,omitempty"`
}
