package api

import (
	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/pace"
)

// MaxBodyBytes bounds every request body the server reads.
const MaxBodyBytes = 64 << 10

// IdempotencyHeader names the header whose value becomes the command's
// RequestID: retrying a POST with the same key returns the first result.
const IdempotencyHeader = "Idempotency-Key"

// Volume is a catalog volume, exactly as the catalog stores it.
type Volume = fsm.Volume

// VolumeDeleted is never stored in the catalog: it is the state a client
// reports for a volume once a delete finished and the catalog forgot it
// (`forknode volume rm --wait`), so text and JSON output agree.
const VolumeDeleted fsm.VolumeState = "deleted"

// CreateVolumeRequest is the body of POST /v1/volumes. Size is in bytes (a
// multiple of 4096). Host pins the volume to a host; Region is a placement
// hint used when Host is empty. TTLSeconds, when > 0, makes the volume
// expire that long after it is created (see SetTTLRequest).
type CreateVolumeRequest struct {
	Name       string `json:"name"`
	App        string `json:"app,omitempty"`
	Size       int64  `json:"size"`
	Host       string `json:"host,omitempty"`
	Region     string `json:"region,omitempty"`
	TTLSeconds int64  `json:"ttl_seconds,omitempty"`
}

// SetTTLRequest is the body of POST /v1/volumes/{id}/ttl: the volume
// expires TTLSeconds from now, or never with 0. Once a volume's expires_at
// has passed, the leader deletes it, unless it is attached (then it waits
// for the detach) or a fork is reading it (then it waits for the fork).
type SetTTLRequest struct {
	TTLSeconds int64 `json:"ttl_seconds"`
}

// RevokeTokenRequest revokes an issued API token by id ("cluster" for the
// cluster token) until the token's own expiry (unix seconds; 0: for ever).
type RevokeTokenRequest struct {
	ID      string `json:"id"`
	Expires int64  `json:"expires,omitempty"`
}

// RevokeTokenResponse answers a revocation. Already: the token was
// revoked before (the request changed nothing but, perhaps, how long the
// revocation is kept).
type RevokeTokenResponse struct {
	ID      string `json:"id"`
	Already bool   `json:"already,omitempty"`
}

// RevokedToken is one revocation in the catalog.
type RevokedToken struct {
	ID      string `json:"id"`
	Expires int64  `json:"expires,omitempty"`
}

// RevokedTokenList is the answer of GET /v1/tokens/revoked.
type RevokedTokenList struct {
	Revoked []RevokedToken `json:"revoked"`
}

// MaxTTLSeconds is the longest TTL accepted (about 100 years).
const MaxTTLSeconds = fsm.MaxTTL / 1e9

// CreateForkRequest is the body of POST /v1/forks. Source is a volume name
// or id, an app name, or "app:vol_id". Via forces a path: clone, copy,
// replica or stream. RateLimit caps this fork's copy or stream in bytes/s
// of volume data (0: only the hosts' own --rate-limit; else at least
// MinForkRateLimit). TTLSeconds, when > 0, makes the new volume expire
// that long after the fork is created: the lifetime of a review or test
// environment.
type CreateForkRequest struct {
	Source     string `json:"source"`
	Name       string `json:"name"`
	Host       string `json:"host,omitempty"`
	Region     string `json:"region,omitempty"`
	Via        string `json:"via,omitempty"`
	App        string `json:"app,omitempty"`
	RateLimit  int64  `json:"rate_limit,omitempty"`
	TTLSeconds int64  `json:"ttl_seconds,omitempty"`
}

// MinForkRateLimit is the lowest per-fork rate accepted: a 1 MiB chunk then
// takes at most 4 s, well inside the stream's 30 s I/O timeouts.
const MinForkRateLimit = 256 << 10

// Fork is a catalog fork plus figures derived from it at read time.
type Fork struct {
	fsm.Fork
	// Percent of BytesTotal done (0..100).
	Percent float64 `json:"percent"`
	// CompressionRatio is bytes_done / wire_bytes for streamed forks (how
	// much the wire format saved); 0 (absent) for other paths and until
	// enough went over the wire to tell (see minRatioBytesDone).
	CompressionRatio float64 `json:"compression_ratio,omitempty"`
	// RateBytesPerSec is the average rate since the fork was created.
	RateBytesPerSec float64 `json:"rate_bytes_per_sec,omitempty"`
	// ETASeconds estimates the time left while running, from the average rate.
	ETASeconds float64 `json:"eta_seconds,omitempty"`
}

// CancelForkResponse is the answer of POST /v1/forks/{id}/cancel: the fork
// as it is now, and whether it had already ended (failed: cancelled before,
// or on its own) so that this call changed nothing. Already is always
// present, so a script can tell "this call cancelled it" (false) from a
// node that predates the field (absent). Two cancels racing each other
// may both answer false.
type CancelForkResponse struct {
	Fork
	Already bool `json:"already"`
}

// A compression ratio is derived only past these figures. Below them the
// wire carries little but the stream's header and hole records (a ratio of a
// million for an empty volume), and while a stream runs its wire bytes lead
// its done bytes by the chunks in flight (the window, 8 MiB by default, and
// socket buffers), so an early ratio reads 0.00 or 0.67.
const (
	minRatioBytesDone        = 1 << 20  // a fork that finished
	minRatioBytesDoneRunning = 32 << 20 // a fork still running, or stopped
	minRatioWireBytes        = 64 << 10
)

// VolumeList is the body of GET /v1/volumes.
type VolumeList struct {
	Volumes []Volume `json:"volumes"`
}

// ForkList is the body of GET /v1/forks.
type ForkList struct {
	Forks []Fork `json:"forks"`
}

// AttachResponse is the body of POST /v1/volumes/{id}/attach and /detach.
// Device is the block device on Host ("" after detach).
type AttachResponse struct {
	Volume Volume `json:"volume"`
	Host   string `json:"host"`
	Device string `json:"device,omitempty"`
}

// Member is one gossip member, as the answering node sees it.
type Member struct {
	Name        string `json:"name"`
	Region      string `json:"region"`
	GossipAddr  string `json:"gossip_addr"`
	ClusterAddr string `json:"cluster_addr"`
	APIAddr     string `json:"api_addr"`
	Status      string `json:"status"`
	Voter       bool   `json:"voter"`
	// CatalogVersion is the newest catalog version the member applies.
	CatalogVersion uint32 `json:"catalog_version"`
}

// HostStatus is one host's catalog record with its capacity figures.
type HostStatus struct {
	ID       string `json:"id"`
	Region   string `json:"region"`
	Backend  string `json:"backend"`
	CanClone bool   `json:"can_clone"`
	Alive    bool   `json:"alive"`
	APIAddr  string `json:"api_addr"`
	Budget   int64  `json:"budget"`
	Used     int64  `json:"used"`
	Free     int64  `json:"free"`
	Volumes  int    `json:"volumes"`
}

// Status is the body of GET /v1/status: the answering node's view.
type Status struct {
	Node      string       `json:"node"`
	Region    string       `json:"region"`
	RaftState string       `json:"raft_state"`
	Leader    string       `json:"leader"`
	LeaderAPI string       `json:"leader_api"`
	Members   []Member     `json:"members"`
	Hosts     []HostStatus `json:"hosts"`
	// CatalogVersion is the version of the catalog's rules in force: the
	// lowest that every raft server applies, once the leader recorded it.
	// NodeCatalogVersion is the newest the answering node applies.
	CatalogVersion     uint32 `json:"catalog_version"`
	NodeCatalogVersion uint32 `json:"node_catalog_version"`
	// Pace is the answering node's fork I/O pacing; absent when the node
	// runs unlimited or with --pace=false.
	Pace *pace.Status `json:"pace,omitempty"`
}

// Derive fills the derived fields of a fork from its catalog record. Times
// are the leader-stamped unix nanos in the record, so every node derives the
// same figures from the same catalog.
func Derive(f fsm.Fork) Fork {
	out := Fork{Fork: f}
	if f.BytesTotal > 0 {
		out.Percent = 100 * float64(f.BytesDone) / float64(f.BytesTotal)
		if out.Percent > 100 {
			out.Percent = 100
		}
	}
	minDone := int64(minRatioBytesDoneRunning)
	if f.State == fsm.ForkReady {
		minDone = minRatioBytesDone
	}
	if f.BytesDone >= minDone && f.WireBytes >= minRatioWireBytes {
		out.CompressionRatio = float64(f.BytesDone) / float64(f.WireBytes)
	}
	end := f.UpdatedAt
	if f.FinishedAt > 0 {
		end = f.FinishedAt
	}
	if secs := float64(end-f.CreatedAt) / 1e9; secs > 0 && f.BytesDone > 0 {
		out.RateBytesPerSec = float64(f.BytesDone) / secs
		if f.State == fsm.ForkRunning && f.BytesTotal > f.BytesDone {
			out.ETASeconds = float64(f.BytesTotal-f.BytesDone) / out.RateBytesPerSec
		}
	}
	return out
}
