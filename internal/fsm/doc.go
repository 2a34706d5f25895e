// Package fsm is forknode's catalog as a deterministic replicated state
// machine, and the fork planner that runs inside it.
//
// Every raft log entry is one CommandType byte followed by a JSON body
// (Encode/Decode). FSM.Apply decodes the entry and mutates the State; it reads
// no clock, draws no random numbers and does no I/O, so every replica that
// applies the same log reaches the same catalog. The leader stamps times and
// ids (vol_…, fork_…) into the command before it is proposed.
//
// Each command carries a RequestID. The result of the last maxResults
// requests is kept, in apply order, inside the state (and its snapshots), so a
// retried command returns its first result instead of acting twice, on every
// replica alike.
//
// Command types are append-only. A type or rule that a release adds waits
// for the catalog version (CatalogVersion, recorded by the leader with
// SetCatalogVersion once every raft server supports it): until then apply
// refuses it with ErrUpgradeRequired on every replica, as an older replica
// refuses a type it does not know, so replicas of different releases agree.
// RevokeToken (version 2) keeps revoked API token ids; a command carrying a
// revoked token's id in its header is refused at apply.
//
// Capacity reservations live in the catalog: a volume counts against its
// host's budget from the moment it is created (state creating) until it fails
// or is deleted. CreateFork runs PlanFork inside Apply, so forks racing for
// the last free bytes of a host are serialized by the log and the budget is
// never exceeded.
//
// Time only enters through the leader's stamp: a TTL (on CreateVolume,
// CreateFork or SetVolumeTTL) becomes ExpiresAt = Time + TTL in Apply, and
// PruneForks names its cutoff. Deciding that something has expired is the
// leader's janitor's job (internal/cluster), never the FSM's.
//
// PlanFork is a pure function of the State. It resolves the source (volume
// id, name, "app:vol_id" or app) and picks the first possible path among
// clone, copy, replica and stream, obeying the operator's --via, --host and
// --region. The State keeps indexes (volumes by name, app and host; per-host
// used bytes maintained incrementally) so that planning stays well under a
// millisecond with 100k volumes and 1k hosts.
//
// Stored records are immutable: every change stores a fresh copy. Snapshot
// therefore only collects record pointers under the read lock (about 2 ms for
// 100k volumes) and Persist encodes them while Apply goes on. Persist writes
// a versioned header and length-prefixed (type byte, JSON record) pairs, so
// Restore can skip record types it does not know; Restore builds a fresh
// State and swaps it in only when the whole snapshot read cleanly.
package fsm
