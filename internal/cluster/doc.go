// Package cluster is one forknode node at run time.
//
// It wires the pieces that make hosts into one cluster:
//
//   - gossip.go: memberlist, encrypted with the cluster key. Each member's
//     metadata carries its region, addresses, backend and budget (under
//     memberlist's 512-byte limit). Events only signal "something changed";
//     the leader's periodic reconcile covers any dropped event.
//   - mux.go: the one mutually authenticated TLS port. After the handshake the
//     dialer sends one byte naming the protocol: raft, forwarding or transfer.
//   - node.go: raft (raft-boltdb/v2 log and stable store, file snapshots),
//     bootstrap-expect from gossip, and shutdown. A graceful stop announces
//     the leave in gossip and asks the leader to drop it from raft directly,
//     so a leaver never stays a dead voter.
//   - leader.go: the leader loop. Barrier first, then reconcile gossip into
//     raft voters (idempotently) and catalog hosts, record the catalog
//     version every server supports (and keep out a member older than it),
//     and fail forks stuck on a host that has been dead too long.
//   - capacity.go: each node measures its backend again every
//     CapacityInterval and gossips a budget that moved.
//   - janitor.go: the leader's sweep every SweepInterval: delete volumes
//     whose expiry passed (not while attached or read by a fork), and
//     prune forks finished longer ago than ForkRetention.
//   - forward.go: Apply, the one way to write. Followers forward to the
//     leader; the leader stamps the time; request ids make retries safe.
//     Also Barrier (reads catch up with the leader) and the leave request.
//   - executor.go: this host's part of each fork, level-triggered from the
//     catalog, idempotent, and reconciled with the backend after a restart.
//   - http.go: the versioned JSON API. Bearer tokens are checked against
//     the cluster key and the catalog's revocations; a read-only token may
//     only GET; a client's commands carry its token's id, so the catalog
//     refuses them if it has been revoked by the time they apply.
//
// The package consumes fsm (the catalog), cow (this host's storage),
// transfer (the block stream) and keys; none of those import it.
package cluster
