package cluster

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"time"

	"github.com/forknode/forknode/internal/cow"
	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/keys"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// Every write goes through Apply. On the leader it is a raft.Apply; on a
// follower it is forwarded to the leader over the mTLS cluster port. Retries
// are safe because every command carries a request id that the FSM
// deduplicates, so an indeterminate ErrLeadershipLost is simply retried.

const (
	defaultApplyTimeout = 5 * time.Second
	maxForwardMsg       = 1 << 20
)

type fwdRequest struct {
	Op    string `json:"op"` // "apply", "index", "remove_server", "leave" or "volume"
	Entry []byte `json:"entry,omitempty"`
	ID    string `json:"id,omitempty"`
	// VolumeOp is the host-local operation of Op "volume" (see VolumeOp).
	VolumeOp string `json:"volume_op,omitempty"`
}

type fwdResponse struct {
	Kind  string          `json:"kind,omitempty"` // host, volume, fork
	Value json.RawMessage `json:"value,omitempty"`
	Code  string          `json:"code,omitempty"`
	Error string          `json:"error,omitempty"`
	Index uint64          `json:"index,omitempty"`
	// Device is the answer to a volume attach.
	Device string `json:"device,omitempty"`
}

// remoteError carries a domain error across the wire with its sentinel.
type remoteError struct {
	msg      string
	sentinel error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

var codes = []struct {
	code string
	err  error
}{
	{"not_found", fsm.ErrNotFound},
	{"exists", fsm.ErrExists},
	{"invalid", fsm.ErrInvalid},
	{"no_room", fsm.ErrNoRoom},
	{"conflict", fsm.ErrConflict},
	{"upgrade_required", fsm.ErrUpgradeRequired},
	{"token_revoked", fsm.ErrTokenRevoked},
	{"not_leader", raft.ErrNotLeader},
	{"leadership_lost", raft.ErrLeadershipLost},
	{"busy", cow.ErrBusy},
	{"no_space", cow.ErrNoSpace},
	{"not_supported", cow.ErrNotSupported},
	{"volume_not_found", cow.ErrNotFound},
	{"volume_invalid", cow.ErrInvalid},
}

func errCode(err error) string {
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return "internal"
}

func codeErr(code, msg string) error {
	for _, c := range codes {
		if c.code == code {
			return &remoteError{msg: msg, sentinel: c.err}
		}
	}
	return errors.New(msg)
}

// Apply sends a command to the leader and returns ApplyResult.Value (a
// *fsm.Host, *fsm.Volume or *fsm.Fork) or the domain error.
func (n *Node) Apply(ctx context.Context, t fsm.CommandType, cmd any) (any, error) {
	entry, err := encodeWithRequestID(t, cmd)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", fsm.ErrInvalid, err)
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	var last error
	backoff := 20 * time.Millisecond
	for {
		var (
			v   any
			err error
		)
		if n.raft.State() == raft.Leader {
			v, err = n.applyLocal(ctx, entry)
		} else {
			v, err = n.forwardApply(ctx, entry)
		}
		if err == nil || !retryable(err) {
			return v, err
		}
		last = err
		select {
		case <-n.ctx.Done():
			return nil, ErrShutdown
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %v", ErrNoLeader, last)
		case <-time.After(backoff):
		}
		if backoff < 500*time.Millisecond {
			backoff *= 2
		}
	}
}

func retryable(err error) bool {
	var re *remoteError
	if errors.As(err, &re) {
		return errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost)
	}
	var ae *applyErr
	if errors.As(err, &ae) {
		return false
	}
	return true // transport trouble, no leader, raft state changes
}

// applyErr marks a domain error from the FSM (not retryable).
type applyErr struct{ err error }

func (e *applyErr) Error() string { return e.err.Error() }
func (e *applyErr) Unwrap() error { return e.err }

func encodeWithRequestID(t fsm.CommandType, cmd any) ([]byte, error) {
	body, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("command must be a JSON object: %w", err)
	}
	if rid, ok := m["request_id"]; !ok || string(rid) == `""` || string(rid) == "null" {
		m["request_id"], _ = json.Marshal(NewID("req_"))
	}
	body, err = json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return append([]byte{byte(t)}, body...), nil
}

// stamp sets the leader's clock into the entry, so the FSM never reads one.
func stamp(entry []byte, now time.Time) ([]byte, error) {
	if len(entry) < 2 {
		return nil, fmt.Errorf("%w: empty command", fsm.ErrInvalid)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(entry[1:], &m); err != nil {
		return nil, fmt.Errorf("%w: command body: %v", fsm.ErrInvalid, err)
	}
	m["time"], _ = json.Marshal(now.UnixNano())
	body, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return append([]byte{entry[0]}, body...), nil
}

func (n *Node) applyLocal(ctx context.Context, entry []byte) (any, error) {
	entry, err := stamp(entry, time.Now())
	if err != nil {
		return nil, &applyErr{err}
	}
	timeout := defaultApplyTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	f := n.raft.Apply(entry, timeout)
	if err := f.Error(); err != nil {
		return nil, err
	}
	res, ok := f.Response().(fsm.ApplyResult)
	if !ok {
		if p, ok2 := f.Response().(*fsm.ApplyResult); ok2 && p != nil {
			res = *p
		} else {
			return nil, &applyErr{fmt.Errorf("unexpected apply response %T", f.Response())}
		}
	}
	if res.Err != nil {
		return nil, &applyErr{res.Err}
	}
	return normalize(res.Value), nil
}

func normalize(v any) any {
	switch x := v.(type) {
	case fsm.Host:
		return &x
	case fsm.Volume:
		return &x
	case fsm.Fork:
		return &x
	}
	return v
}

func kindOf(v any) string {
	switch v.(type) {
	case *fsm.Host:
		return "host"
	case *fsm.Volume:
		return "volume"
	case *fsm.Fork:
		return "fork"
	}
	return ""
}

func decodeKind(kind string, raw json.RawMessage) (any, error) {
	var v any
	switch kind {
	case "":
		return nil, nil
	case "host":
		v = &fsm.Host{}
	case "volume":
		v = &fsm.Volume{}
	case "fork":
		v = &fsm.Fork{}
	default:
		return nil, fmt.Errorf("unknown result kind %q", kind)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return nil, err
	}
	return v, nil
}

func (n *Node) leaderClusterAddr() (string, error) {
	addr, id := n.raft.LeaderWithID()
	if addr == "" || id == "" {
		return "", fmt.Errorf("no leader known")
	}
	return string(addr), nil
}

func (n *Node) forwardCall(ctx context.Context, req fwdRequest) (fwdResponse, error) {
	addr, err := n.leaderClusterAddr()
	if err != nil {
		return fwdResponse{}, err
	}
	dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := n.mux.dial(dctx, addr, protoForward)
	if err != nil {
		return fwdResponse{}, fmt.Errorf("forward to leader %s: %w", addr, err)
	}
	defer c.Close()
	dl := time.Now().Add(defaultApplyTimeout + time.Second)
	if d, ok := ctx.Deadline(); ok {
		dl = d
	}
	_ = c.SetDeadline(dl)
	if err := writeMsg(c, req); err != nil {
		return fwdResponse{}, err
	}
	var resp fwdResponse
	if err := readMsg(c, &resp); err != nil {
		return fwdResponse{}, fmt.Errorf("forward to leader %s: %w", addr, err)
	}
	return resp, nil
}

func (n *Node) forwardApply(ctx context.Context, entry []byte) (any, error) {
	resp, err := n.forwardCall(ctx, fwdRequest{Op: "apply", Entry: entry})
	if err != nil {
		return nil, err
	}
	if resp.Error != "" {
		e := codeErr(resp.Code, resp.Error)
		if resp.Code == "not_leader" || resp.Code == "leadership_lost" {
			return nil, e // retried: the leader moved
		}
		return nil, &applyErr{e}
	}
	return decodeKind(resp.Kind, resp.Value)
}

// serveForward answers forwarded requests; only the leader applies.
func (n *Node) serveForward(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(defaultApplyTimeout + 2*time.Second))
	var req fwdRequest
	if err := readMsg(c, &req); err != nil {
		n.logger.Debug("bad forward request", "error", err)
		return
	}
	var resp fwdResponse
	switch req.Op {
	case "apply":
		if n.raft.State() != raft.Leader {
			resp = fwdResponse{Code: "not_leader", Error: raft.ErrNotLeader.Error()}
			break
		}
		ctx, cancel := context.WithTimeout(n.ctx, defaultApplyTimeout)
		v, err := n.applyLocal(ctx, req.Entry)
		cancel()
		if err != nil {
			resp = fwdResponse{Code: errCode(err), Error: err.Error()}
			break
		}
		resp.Kind = kindOf(v)
		if v != nil {
			resp.Value, _ = json.Marshal(v)
		}
	case "index":
		if n.raft.State() != raft.Leader {
			resp = fwdResponse{Code: "not_leader", Error: raft.ErrNotLeader.Error()}
			break
		}
		idx, err := n.noopIndex()
		if err != nil {
			resp = fwdResponse{Code: errCode(err), Error: err.Error()}
			break
		}
		resp.Index = idx
	case "remove_server":
		if n.raft.State() != raft.Leader {
			resp = fwdResponse{Code: "not_leader", Error: raft.ErrNotLeader.Error()}
			break
		}
		if err := n.removeServerLocal(req.ID); err != nil {
			resp = fwdResponse{Code: errCode(err), Error: err.Error()}
		}
	case "leave":
		// A node stopping gracefully asks to be taken out of raft, for
		// itself only: the name must be its certificate's.
		if n.raft.State() != raft.Leader {
			resp = fwdResponse{Code: "not_leader", Error: raft.ErrNotLeader.Error()}
			break
		}
		var peer string
		if tc, ok := c.(*tls.Conn); ok {
			peer = keys.PeerName(tc.ConnectionState())
		}
		if req.ID == "" || req.ID != peer || req.ID == n.cfg.Name {
			err := fmt.Errorf("%w: leave for %q from %q: a node may only leave for itself", fsm.ErrInvalid, req.ID, peer)
			resp = fwdResponse{Code: errCode(err), Error: err.Error()}
			break
		}
		if err := n.removeLeaver(req.ID); err != nil {
			resp = fwdResponse{Code: errCode(err), Error: err.Error()}
		}
	case "volume":
		dev, err := n.volumeOpLocal(n.ctx, req.VolumeOp, req.ID)
		if err != nil {
			resp = fwdResponse{Code: errCode(err), Error: err.Error()}
			break
		}
		resp.Device = dev
	default:
		resp = fwdResponse{Code: "invalid", Error: fmt.Sprintf("unknown forward op %q", req.Op)}
	}
	_ = writeMsg(c, resp)
}

// Barrier waits until this node's catalog has applied everything the leader
// had committed when Barrier was called.
//
// On the leader that is raft.Barrier. A follower asks the leader to commit
// a no-op command and waits until its own FSM has applied that index. The
// leader's commit index would not do: it counts raft's own no-op and
// configuration entries, which never reach FSM.Apply, and on a freshly
// elected leader it lags until the new term's first entry commits.
func (n *Node) Barrier(ctx context.Context) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	for {
		var err error
		if n.raft.State() == raft.Leader {
			timeout := defaultApplyTimeout
			if d, ok := ctx.Deadline(); ok {
				timeout = time.Until(d)
			}
			if err = n.raft.Barrier(timeout).Error(); err == nil {
				return nil
			}
		} else {
			var resp fwdResponse
			resp, err = n.forwardCall(ctx, fwdRequest{Op: "index"})
			if err == nil && resp.Error != "" {
				err = errors.New(resp.Error)
			}
			if err == nil {
				for n.fsm.AppliedIndex() < resp.Index {
					select {
					case <-ctx.Done():
						return fmt.Errorf("%w: catalog did not catch up: %v", ErrNoLeader, ctx.Err())
					case <-time.After(5 * time.Millisecond):
					}
				}
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %v", ErrNoLeader, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// noopIndex commits a no-op command on the leader and returns its index.
func (n *Node) noopIndex() (uint64, error) {
	entry, err := fsm.Encode(fsm.CmdNoop, &fsm.NoopCmd{})
	if err != nil {
		return 0, err
	}
	f := n.raft.Apply(entry, defaultApplyTimeout)
	if err := f.Error(); err != nil {
		return 0, err
	}
	return f.Index(), nil
}

func writeMsg(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) > maxForwardMsg {
		return fmt.Errorf("forward message of %d bytes exceeds %d", len(b), maxForwardMsg)
	}
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(b)))
	if _, err := w.Write(append(hdr[:], b...)); err != nil {
		return err
	}
	return nil
}

func readMsg(r io.Reader, v any) error {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > maxForwardMsg {
		return fmt.Errorf("forward message of %d bytes exceeds %d", n, maxForwardMsg)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// RemoveMember removes a dead node for good: from raft's voters (which
// needs a quorum of the rest) and from the catalog (refused while it still
// holds volumes). A dead node is never removed automatically, because it
// may come back; a node that leaves gracefully is removed by the leader.
func (n *Node) RemoveMember(ctx context.Context, name string) error {
	if name == n.cfg.Name {
		return fmt.Errorf("%w: a node cannot remove itself; stop it to leave the cluster", fsm.ErrInvalid)
	}
	if known := n.knownNodes(); !slices.Contains(known, name) {
		return fmt.Errorf("%w: no node named %q (not a raft server, a catalog host or a gossip member; nodes: %s)", fsm.ErrNotFound, name, fsm.FormatNames(known))
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	for {
		var err error
		if n.raft.State() == raft.Leader {
			if err = n.removeServerLocal(name); errors.Is(err, fsm.ErrConflict) {
				return err // still alive: a refusal, not a leader problem
			}
		} else {
			var resp fwdResponse
			resp, err = n.forwardCall(ctx, fwdRequest{Op: "remove_server", ID: name})
			if err == nil && resp.Error != "" {
				err = codeErr(resp.Code, resp.Error)
				if resp.Code != "not_leader" {
					err = &applyErr{err}
				}
			}
		}
		if err == nil {
			break
		}
		if !retryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %v", ErrNoLeader, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	n.gossip.forget(name)
	_, err := n.Apply(ctx, fsm.CmdRemoveHost, &fsm.RemoveHostCmd{ID: name})
	if errors.Is(err, fsm.ErrNotFound) {
		err = nil
	}
	return err
}

// knownNodes names everything a removal acts on: the raft configuration's
// servers, the catalog's hosts and the gossip members, each once. Each is
// replicated or gossiped to every node, so a follower answers too.
func (n *Node) knownNodes() []string {
	seen := map[string]bool{}
	if cf := n.raft.GetConfiguration(); cf.Error() == nil {
		for _, s := range cf.Configuration().Servers {
			seen[string(s.ID)] = true
		}
	}
	n.View(func(s *fsm.State) {
		for _, h := range s.Hosts() {
			seen[h.ID] = true
		}
	})
	for _, m := range n.gossip.snapshot() {
		seen[m.name] = true
	}
	return slices.Sorted(maps.Keys(seen))
}

// removeServerLocal runs on the leader, whose gossip view decides whether
// the node is still alive (a follower's view may lag).
func (n *Node) removeServerLocal(name string) error {
	for _, m := range n.gossip.snapshot() {
		if m.name == name && m.state == "alive" {
			return fmt.Errorf("%w: node %s is alive; stop it first (it leaves gracefully)", fsm.ErrConflict, name)
		}
	}
	return n.dropServer(name)
}

// dropServer removes name from the raft configuration; a name that is not
// there is already gone (removal is idempotent).
func (n *Node) dropServer(name string) error {
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return err
	}
	for _, s := range cf.Configuration().Servers {
		if string(s.ID) == name {
			n.logger.Info("removing raft server", "server", name)
			return n.raft.RemoveServer(s.ID, 0, 0).Error()
		}
	}
	return nil
}

// removeLeaver takes a node that asked to leave out of raft at once. Its
// gossip may still say alive (its leave intent in metadata can arrive after
// the leave itself, or not at all), so the request is also remembered:
// reconcile neither re-adds it nor leaves it as a dead voter.
func (n *Node) removeLeaver(name string) error {
	n.gossip.noteLeaving(name)
	return n.dropServer(name)
}

// leaveRaft asks the leader to take this node out of raft, before a
// graceful stop. Best effort: gossip still carries the leave otherwise.
func (n *Node) leaveRaft(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	resp, err := n.forwardCall(ctx, fwdRequest{Op: "leave", ID: n.cfg.Name})
	if err == nil && resp.Error != "" {
		err = codeErr(resp.Code, resp.Error)
	}
	return err
}

// Host-local volume operations, run on the host that holds the volume.
const (
	VolumeAttach      = "attach" // returns the device path
	VolumeDetach      = "detach"
	VolumeCheckRemove = "check_remove" // ErrBusy while attached
)

// VolumeOp runs a host-local operation on the volume's host: locally, or
// over the mTLS cluster port (never plain HTTP between nodes, so no token
// or device path crosses the network in clear).
func (n *Node) VolumeOp(ctx context.Context, host, op, id string) (string, error) {
	if host == n.cfg.Name {
		return n.volumeOpLocal(ctx, op, id)
	}
	var addr string
	n.fsm.View(func(s *fsm.State) {
		if h, ok := s.Host(host); ok {
			addr = h.RaftAddr
		}
	})
	if addr == "" {
		return "", fmt.Errorf("%w: host %s is not in the catalog", fsm.ErrNotFound, host)
	}
	dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := n.mux.dial(dctx, addr, protoForward)
	if err != nil {
		return "", fmt.Errorf("%w: host %s unreachable: %v", ErrHostUnreachable, host, err)
	}
	defer c.Close()
	dl := time.Now().Add(30 * time.Second)
	if d, ok := ctx.Deadline(); ok {
		dl = d
	}
	_ = c.SetDeadline(dl)
	if err := writeMsg(c, fwdRequest{Op: "volume", VolumeOp: op, ID: id}); err != nil {
		return "", fmt.Errorf("%w: host %s: %v", ErrHostUnreachable, host, err)
	}
	var resp fwdResponse
	if err := readMsg(c, &resp); err != nil {
		return "", fmt.Errorf("%w: host %s: %v", ErrHostUnreachable, host, err)
	}
	if resp.Error != "" {
		return "", codeErr(resp.Code, resp.Error)
	}
	return resp.Device, nil
}

func (n *Node) volumeOpLocal(ctx context.Context, op, id string) (string, error) {
	return volumeOpOn(ctx, n.cfg.Backend, n.cfg.Name, n.logger, op, id)
}

// volumeOpOn runs op on backend b of host name.
func volumeOpOn(ctx context.Context, b cow.Backend, name string, logger hclog.Logger, op, id string) (string, error) {
	switch op {
	case VolumeAttach:
		dev, err := b.Attach(ctx, id)
		if err != nil {
			return "", fmt.Errorf("attach %s on %s: %w", id, name, err)
		}
		logger.Info("volume attached", "volume", id, "device", dev)
		return dev, nil
	case VolumeDetach:
		if err := b.Detach(ctx, id); err != nil {
			return "", fmt.Errorf("detach %s on %s: %w", id, name, err)
		}
		logger.Info("volume detached", "volume", id)
		return "", nil
	case VolumeCheckRemove:
		v, err := b.Get(ctx, id)
		if errors.Is(err, cow.ErrNotFound) {
			return "", nil // nothing on disk yet: removable
		}
		if err != nil {
			return "", err
		}
		if v.Device != "" {
			return "", fmt.Errorf("%w: volume %s is attached at %s on %s; detach it first", cow.ErrBusy, id, v.Device, name)
		}
		return "", nil
	}
	return "", fmt.Errorf("%w: unknown volume operation %q", fsm.ErrInvalid, op)
}

// withDefaultTimeout bounds ctx by defaultApplyTimeout unless it already has
// a deadline: no cluster call may wait forever.
func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, defaultApplyTimeout)
}
