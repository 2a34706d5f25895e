package fsm

import "errors"

// CommandType is the first byte of every raft log entry. Append only: never
// renumber or reuse a value. Types with IgnoreUnknownFlag set may be skipped
// by an older node that does not know them.
type CommandType uint8

const (
	CmdUpsertHost     CommandType = 1
	CmdRemoveHost     CommandType = 2
	CmdCreateVolume   CommandType = 3
	CmdSetVolumeState CommandType = 4
	CmdDeleteVolume   CommandType = 5
	CmdCreateFork     CommandType = 6
	CmdForkProgress   CommandType = 7
	CmdFinishFork     CommandType = 8
	CmdSetHostAlive   CommandType = 9
	CmdNoop           CommandType = 10
	CmdSetVolumeTTL   CommandType = 11
	// CmdPruneForks only drops history: send it with IgnoreUnknownFlag, so
	// an older replica skips it and merely keeps more finished forks.
	CmdPruneForks CommandType = 12
	// CmdSetCatalogVersion raises the catalog version (see CatalogVersion).
	CmdSetCatalogVersion CommandType = 13
	// CmdRevokeToken revokes an issued API token (catalog version 2).
	CmdRevokeToken CommandType = 14

	IgnoreUnknownFlag CommandType = 0x80
)

// CatalogVersion is the newest set of catalog rules this build applies.
// Bump it when adding a command type or changing how one applies, list the
// new type in since, and branch a changed rule on State.CatalogVersion().
//
// Raft replicas must apply every entry alike, so new rules wait until every
// server can apply them: each node gossips its CatalogVersion, the leader
// records the lowest among the raft servers with CmdSetCatalogVersion, and
// the FSM refuses, on every replica alike, a command whose type is newer
// than the recorded version. An older node refuses an unknown type too, so
// both sides agree instead of diverging. The recorded version never goes
// down, and the leader adds no server that gossips an older one.
//
// Version 2 added CmdRevokeToken. Version 3 changed how a fork's source
// resolves (resolveSource): "app:" names an app, and a name that is both
// an app and another app's volume is refused as ambiguous; and it reserves
// a full-copy snapshot's space on a file host without reflink. Version 4
// reserves every snapshot by the cost its host advertises (SnapshotCost):
// a thick LVM host's copy-on-write area as well.
const CatalogVersion uint32 = 4

// since is the catalog version that introduced each command type. A type
// missing here is from version 1.
var since = map[CommandType]uint32{
	CmdRevokeToken: 2,
}

// Since returns the catalog version a command type needs.
func (t CommandType) Since() uint32 {
	if v, ok := since[t&^IgnoreUnknownFlag]; ok {
		return v
	}
	return 1
}

// Domain errors, returned inside ApplyResult.Err (never as a decode panic).
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrInvalid  = errors.New("invalid request")
	ErrNoRoom   = errors.New("no host has room")
	ErrConflict = errors.New("conflict")
	// ErrUpgradeRequired: the command is newer than the cluster's catalog
	// version, because some server still runs an older forknode.
	ErrUpgradeRequired = errors.New("not supported until every server is upgraded")
	// ErrTokenRevoked: the command came with an API token the catalog has
	// revoked.
	ErrTokenRevoked = errors.New("API token revoked")
)

// Header is embedded in every command. The leader stamps Time (unix nanos)
// and ids; the FSM never reads a clock. RequestID makes retries idempotent:
// a command whose RequestID was already applied returns the first result.
//
// Digest, when set, fingerprints the client's request under that RequestID:
// a retry must carry the same one, so a key reused for another request is
// refused (ErrConflict) instead of answered with the first request's result.
type Header struct {
	RequestID string `json:"request_id"`
	Time      int64  `json:"time"`
	Digest    string `json:"digest,omitempty"`
	// TokenID names the API token a client's command came with. The node
	// that took the request checked the token against its own copy of the
	// catalog, which may lag; apply refuses the command, on every replica
	// alike, if the catalog has revoked that token by then.
	TokenID string `json:"token_id,omitempty"`
}

// SetTokenID records the API token a command came with (see Header).
func (h *Header) SetTokenID(id string) { h.TokenID = id }

type UpsertHostCmd struct {
	Header
	Host Host `json:"host"`
}

type RemoveHostCmd struct {
	Header
	ID string `json:"id"`
}

type SetHostAliveCmd struct {
	Header
	ID    string `json:"id"`
	Alive bool   `json:"alive"`
}

// CreateVolumeCmd creates a volume record in state creating. If Volume.Host
// is empty the FSM places it (same region first, then most free).
type CreateVolumeCmd struct {
	Header
	Volume Volume `json:"volume"`
	Region string `json:"region,omitempty"` // placement hint when Host is empty
	// TTL, when > 0, sets Volume.ExpiresAt to Time + TTL (nanoseconds).
	TTL int64 `json:"ttl,omitempty"`
}

// SetVolumeTTLCmd sets a volume's expiry to Time + TTL, or clears it
// (TTL 0: the volume never expires). The leader deletes a ready volume
// once its expiry has passed.
type SetVolumeTTLCmd struct {
	Header
	ID  string `json:"id"`
	TTL int64  `json:"ttl"` // nanoseconds
}

// PruneForksCmd drops finished forks (ready or failed) that finished
// before Before (unix nanos): the catalog keeps fork history for a
// retention period, not forever. Their volumes are not touched.
type PruneForksCmd struct {
	Header
	Before int64 `json:"before"`
}

type SetVolumeStateCmd struct {
	Header
	ID    string      `json:"id"`
	State VolumeState `json:"state"`
}

// DeleteVolumeCmd purges a volume record (after its host removed the data).
type DeleteVolumeCmd struct {
	Header
	ID string `json:"id"`
}

// CreateForkCmd plans and records a fork atomically: the planner runs inside
// Apply against the current catalog, so two forks racing for the last free
// bytes of a host cannot both win.
type CreateForkCmd struct {
	Header
	ForkID         string      `json:"fork_id"`
	TargetVolumeID string      `json:"target_volume_id"`
	Request        ForkRequest `json:"request"`
}

type ForkProgressCmd struct {
	Header
	ForkID     string `json:"fork_id"`
	BytesDone  int64  `json:"bytes_done"`
	BytesTotal int64  `json:"bytes_total"`
	WireBytes  int64  `json:"wire_bytes"`
}

// FinishForkCmd ends a fork: ready (target volume ready) or failed (target
// volume failed, to be removed by its host).
type FinishForkCmd struct {
	Header
	ForkID string `json:"fork_id"`
	OK     bool   `json:"ok"`
	Error  string `json:"error,omitempty"`
}

// SetCatalogVersionCmd raises the catalog version to Version once every
// raft server supports it. A lower or equal Version changes nothing.
type SetCatalogVersionCmd struct {
	Header
	Version uint32 `json:"version"`
}

// RevokeTokenCmd revokes the API token with ID until Expires (unix
// seconds, the token's own expiry; 0 for ever). Revocations of tokens that
// have expired are dropped as later ones are applied.
type RevokeTokenCmd struct {
	Header
	ID      string `json:"id"`
	Expires int64  `json:"expires,omitempty"`
}

// NoopCmd changes nothing. The leader commits one to give a follower's
// read barrier an index that is certain to pass through FSM.Apply (raft's
// own no-op and configuration entries never reach the FSM).
type NoopCmd struct {
	Header
}

// ApplyResult is what FSM.Apply returns for every command.
type ApplyResult struct {
	Value any   // *Host, *Volume, *Fork or nil
	Err   error // a domain error (wraps one of the sentinels above)
}
