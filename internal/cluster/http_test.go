package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/hashicorp/go-hclog"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/api"
	"github.com/forknode/forknode/internal/cow"
	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/keys"
	"github.com/hashicorp/raft"
)

// memNode is an in-memory apiBackend: commands go through a real fsm.FSM
// (encoded exactly as raft entries), serialized like raft would. Several
// memNodes may share one FSM to stand for the nodes of one cluster.
type memNode struct {
	name    string
	token   string
	cat     *memCatalog
	backend *fakeBackend

	mu         sync.Mutex
	applyErr   error  // injected: every Apply fails with it
	barrierErr error  // injected: Barrier fails with it
	onBarrier  func() // runs at each Barrier: a lagging catalog catching up
	down       bool   // injected: VolumeOp to this host fails as unreachable
}

func (n *memNode) RemoveMember(ctx context.Context, name string) error {
	if name == n.name {
		return fmt.Errorf("%w: a node cannot remove itself", fsm.ErrInvalid)
	}
	_, err := n.Apply(ctx, fsm.CmdRemoveHost, &fsm.RemoveHostCmd{ID: name})
	return err
}

// VolumeOp runs the operation on the owning node's backend, as the real
// node does over the cluster port.
func (n *memNode) VolumeOp(ctx context.Context, host, op, id string) (string, error) {
	v, ok := n.cat.nodes.Load(host)
	if !ok {
		return "", fmt.Errorf("%w: host %s is not in the catalog", fsm.ErrNotFound, host)
	}
	owner := v.(*memNode)
	owner.mu.Lock()
	down := owner.down
	owner.mu.Unlock()
	if down {
		return "", fmt.Errorf("%w: host %s unreachable", ErrHostUnreachable, host)
	}
	return volumeOpOn(ctx, owner.backend, owner.name, hclog.NewNullLogger(), op, id)
}

type memCatalog struct {
	mu    sync.Mutex
	f     *fsm.FSM
	nodes sync.Map // host name -> *memNode, for VolumeOp
	idx   uint64
	now   int64
	ids   atomic.Int64
}

func newMemCatalog() *memCatalog {
	return &memCatalog{f: fsm.New(nil), now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()}
}

// apply stamps time and a request id (as the leader does) and applies.
func (c *memCatalog) apply(t fsm.CommandType, cmd any) (any, error) {
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now += int64(time.Second)
	m["time"] = c.now
	if rid, _ := m["request_id"].(string); rid == "" {
		m["request_id"] = fmt.Sprintf("req_%d", c.ids.Add(1))
	}
	entry, err := fsm.Encode(t, m)
	if err != nil {
		return nil, err
	}
	c.idx++
	res, ok := c.f.Apply(&raft.Log{Index: c.idx, Term: 1, Type: raft.LogCommand, Data: entry}).(fsm.ApplyResult)
	if !ok {
		return nil, errors.New("fsm returned no ApplyResult")
	}
	return res.Value, res.Err
}

func (n *memNode) Name() string         { return n.name }
func (n *memNode) Backend() cow.Backend { return n.backend }
func (n *memNode) VerifyToken(tok string) (keys.TokenClaims, error) {
	if n.token == "" || tok != n.token {
		return keys.TokenClaims{}, keys.ErrTokenInvalid
	}
	return keys.TokenClaims{ID: keys.ClusterTokenID, Scope: keys.ScopeAdmin}, nil
}
func (n *memNode) View(fn func(*fsm.State)) { n.cat.f.View(fn) }
func (n *memNode) Status() StatusInfo {
	return StatusInfo{Node: n.name, Region: "r1", RaftState: "Leader", Leader: n.name,
		Members: []MemberInfo{{Name: n.name, Region: "r1", Status: "alive", Voter: true}}}
}

func (n *memNode) Barrier(ctx context.Context) error {
	n.mu.Lock()
	err, hook := n.barrierErr, n.onBarrier
	n.mu.Unlock()
	if hook != nil && err == nil {
		hook()
	}
	return err
}

func (n *memNode) Apply(ctx context.Context, t fsm.CommandType, cmd any) (any, error) {
	n.mu.Lock()
	err := n.applyErr
	n.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return n.cat.apply(t, cmd)
}

// fakeBackend records attach/detach; the HTTP layer touches nothing else.
type fakeBackend struct {
	mu       sync.Mutex
	attached map[string]string
	failWith error
}

func (b *fakeBackend) Features() cow.Features { return cow.Features{Backend: "file"} }
func (b *fakeBackend) Capacity(context.Context) (cow.Capacity, error) {
	return cow.Capacity{}, nil
}
func (b *fakeBackend) Create(context.Context, cow.CreateSpec) (cow.Volume, error) {
	return cow.Volume{}, cow.ErrNotSupported
}

// Get knows only attachment, which is what the API asks of it (may this
// volume be removed?).
func (b *fakeBackend) Get(_ context.Context, id string) (cow.Volume, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return cow.Volume{ID: id, Device: b.attached[id]}, nil
}
func (b *fakeBackend) List(context.Context) ([]cow.Volume, error) { return nil, cow.ErrNotSupported }
func (b *fakeBackend) Remove(context.Context, string) error       { return cow.ErrNotSupported }
func (b *fakeBackend) Open(context.Context, string, bool) (cow.Device, error) {
	return nil, cow.ErrNotSupported
}
func (b *fakeBackend) Clone(context.Context, string, cow.CreateSpec) (cow.Volume, error) {
	return cow.Volume{}, cow.ErrNotSupported
}
func (b *fakeBackend) Snapshot(context.Context, string, string) (cow.Volume, error) {
	return cow.Volume{}, cow.ErrNotSupported
}
func (b *fakeBackend) Release(context.Context, string) error { return cow.ErrNotSupported }
func (b *fakeBackend) Extents(context.Context, string) ([]cow.Extent, error) {
	return nil, cow.ErrNotSupported
}
func (b *fakeBackend) Attach(_ context.Context, id string) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.failWith != nil {
		return "", b.failWith
	}
	if b.attached == nil {
		b.attached = map[string]string{}
	}
	if d, ok := b.attached[id]; ok {
		return d, nil
	}
	d := fmt.Sprintf("/dev/loop%d", 10+len(b.attached))
	b.attached[id] = d
	return d, nil
}
func (b *fakeBackend) device(id string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.attached[id]
}

func (b *fakeBackend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.attached)
}

func (b *fakeBackend) fail(err error) {
	b.mu.Lock()
	b.failWith = err
	b.mu.Unlock()
}

func (b *fakeBackend) Detach(_ context.Context, id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.attached[id]; !ok {
		return fmt.Errorf("volume %s is not attached: %w", id, cow.ErrInvalid)
	}
	delete(b.attached, id)
	return nil
}

const testToken = "test-token"

const (
	gib = int64(1) << 30
	mib = int64(1) << 20
)

type env struct {
	t    testing.TB
	h1   http.Handler
	cat  *memCatalog
	n1   *memNode // host h1: 10 GiB, region r1
	n2   *memNode // host h2: 1 GiB, region r2
	srv1 *httptest.Server
	srv2 *httptest.Server
	seq  atomic.Int64
}

// newEnv builds a two-host catalog with a ready 256 MiB volume "db" (app
// "shop") on h1, and an API server per host.
func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{t: t, cat: newMemCatalog()}
	e.n1 = &memNode{name: "h1", token: testToken, cat: e.cat, backend: &fakeBackend{}}
	e.n2 = &memNode{name: "h2", token: testToken, cat: e.cat, backend: &fakeBackend{}}
	e.cat.nodes.Store("h1", e.n1)
	e.cat.nodes.Store("h2", e.n2)
	newID := func(p string) string { return fmt.Sprintf("%s%04d", p, e.seq.Add(1)) }
	s1 := newAPIServer(e.n1, nil, newID)
	s2 := newAPIServer(e.n2, nil, newID)
	for _, s := range []*apiServer{s1, s2} {
		s.poll = 5 * time.Millisecond
		s.waitTO = 500 * time.Millisecond
	}
	e.h1 = s1.handler()
	e.srv1 = httptest.NewServer(e.h1)
	e.srv2 = httptest.NewServer(s2.handler())
	t.Cleanup(e.srv1.Close)
	t.Cleanup(e.srv2.Close)
	e.host("h1", "r1", e.srv1, 10*gib)
	e.host("h2", "r2", e.srv2, 1*gib)
	e.mustApply(fsm.CmdCreateVolume, &fsm.CreateVolumeCmd{Volume: fsm.Volume{ID: "vol_db", Name: "db", App: "shop", Host: "h1", Size: 256 * mib, State: fsm.VolumeCreating}})
	e.mustApply(fsm.CmdSetVolumeState, &fsm.SetVolumeStateCmd{ID: "vol_db", State: fsm.VolumeReady})
	return e
}

func (e *env) host(id, region string, srv *httptest.Server, budget int64) {
	addr := strings.TrimPrefix(srv.URL, "http://")
	e.mustApply(fsm.CmdUpsertHost, &fsm.UpsertHostCmd{Host: fsm.Host{ID: id, Region: region, APIAddr: addr, Backend: "file", Budget: budget}})
	e.mustApply(fsm.CmdSetHostAlive, &fsm.SetHostAliveCmd{ID: id, Alive: true})
}

func (e *env) mustApply(t fsm.CommandType, cmd any) any {
	e.t.Helper()
	v, err := e.cat.apply(t, cmd)
	if err != nil {
		e.t.Fatalf("apply %v: %v", t, err)
	}
	return v
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r resp) errBody(t *testing.T) api.ErrorBody {
	t.Helper()
	var eb api.ErrorBody
	if err := json.Unmarshal(r.body, &eb); err != nil {
		t.Fatalf("error response is not JSON: %v: %q", err, r.body)
	}
	return eb
}

func do(t *testing.T, srv *httptest.Server, method, path, token string, body io.Reader, hdr ...string) resp {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return resp{status: res.StatusCode, header: res.Header, body: b}
}

func jsonBody(v any) io.Reader {
	b, _ := json.Marshal(v)
	return bytes.NewReader(b)
}

func TestHTTPErrors(t *testing.T) {
	e := newEnv(t)
	e.mustApply(fsm.CmdCreateVolume, &fsm.CreateVolumeCmd{Volume: fsm.Volume{ID: "vol_new", Name: "fresh", Host: "h1", Size: mib, State: fsm.VolumeCreating}})
	big := `{"name":"x","size":4096,"app":"` + strings.Repeat("a", 70<<10) + `"}`
	for _, tc := range []struct {
		name, method, path, token, body string
		status                          int
		code, msg                       string
	}{
		{"no token", "GET", "/v1/status", "", "", 401, api.CodeUnauthorized, "bearer token"},
		{"bad token", "GET", "/v1/volumes", "nope", "", 401, api.CodeUnauthorized, "bearer token"},
		{"no token hides routes", "GET", "/v1/nope", "", "", 401, api.CodeUnauthorized, ""},
		{"no token on write", "POST", "/v1/forks", "", `{"source":"db","name":"x"}`, 401, api.CodeUnauthorized, ""},
		{"unknown route", "GET", "/v1/nope", testToken, "", 404, api.CodeNotFound, "no such route"},
		{"unknown root", "GET", "/", testToken, "", 404, api.CodeNotFound, "no such route"},
		{"too deep", "GET", "/v1/volumes/db/attach/x", testToken, "", 404, api.CodeNotFound, "no such route"},
		{"wrong method", "PUT", "/v1/volumes", testToken, "", 405, api.CodeMethodNotAllowed, "GET, POST"},
		{"wrong method attach", "GET", "/v1/volumes/db/attach", testToken, "", 405, api.CodeMethodNotAllowed, "POST"},
		{"malformed json", "POST", "/v1/volumes", testToken, `{"name":`, 400, api.CodeInvalid, "malformed JSON"},
		{"syntax error", "POST", "/v1/forks", testToken, `{"source" "db"}`, 400, api.CodeInvalid, "malformed JSON at byte"},
		{"empty body", "POST", "/v1/volumes", testToken, ``, 400, api.CodeInvalid, "empty"},
		{"not an object", "POST", "/v1/volumes", testToken, `[1,2]`, 400, api.CodeInvalid, "JSON object"},
		{"unknown field", "POST", "/v1/volumes", testToken, `{"name":"a","size":4096,"colour":"red"}`, 400, api.CodeInvalid, `unknown field "colour"`},
		{"wrong type", "POST", "/v1/volumes", testToken, `{"name":"a","size":"1GiB"}`, 400, api.CodeInvalid, `field "size"`},
		{"trailing data", "POST", "/v1/volumes", testToken, `{"name":"a","size":4096} {}`, 400, api.CodeInvalid, "after the JSON object"},
		{"body too large", "POST", "/v1/volumes", testToken, big, 413, api.CodeTooLarge, "exceeds 65536"},
		{"bad name", "POST", "/v1/volumes", testToken, `{"name":"Bad Name","size":4096}`, 400, api.CodeInvalid, "name"},
		{"long name", "POST", "/v1/volumes", testToken, `{"name":"` + strings.Repeat("a", 64) + `","size":4096}`, 400, api.CodeInvalid, "at most 63"},
		{"empty name", "POST", "/v1/volumes", testToken, `{"size":4096}`, 400, api.CodeInvalid, "name is empty"},
		{"zero size", "POST", "/v1/volumes", testToken, `{"name":"a"}`, 400, api.CodeInvalid, "size"},
		{"negative size", "POST", "/v1/volumes", testToken, `{"name":"a","size":-4096}`, 400, api.CodeInvalid, "must be positive"},
		{"unaligned size", "POST", "/v1/volumes", testToken, `{"name":"a","size":4097}`, 400, api.CodeInvalid, "multiple of 4096"},
		{"huge size", "POST", "/v1/volumes", testToken, `{"name":"a","size":9223372036854771712}`, 400, api.CodeInvalid, "exceeds"},
		{"bad app", "POST", "/v1/volumes", testToken, `{"name":"a","size":4096,"app":"A/B"}`, 400, api.CodeInvalid, "app"},
		{"bad wait", "POST", "/v1/volumes?wait=maybe", testToken, `{"name":"a","size":4096}`, 400, api.CodeInvalid, "wait"},
		{"duplicate volume", "POST", "/v1/volumes", testToken, `{"name":"db","size":4096}`, 409, api.CodeExists, "db"},
		{"unknown host", "POST", "/v1/volumes", testToken, `{"name":"a","size":4096,"host":"h9"}`, 404, api.CodeNotFound, `host "h9" (hosts: h1, h2)`},
		{"fork unknown host", "POST", "/v1/forks", testToken, `{"source":"db","name":"x","host":"h9"}`, 404, api.CodeNotFound, `target host "h9" (hosts: h1, h2)`},
		{"volume no room", "POST", "/v1/volumes", testToken, `{"name":"a","size":2147483648,"host":"h2"}`, 409, api.CodeNoRoom, ""},
		{"unknown volume", "GET", "/v1/volumes/ghost", testToken, "", 404, api.CodeNotFound, "ghost"},
		{"delete unknown", "DELETE", "/v1/volumes/ghost", testToken, "", 404, api.CodeNotFound, "ghost"},
		{"attach unknown", "POST", "/v1/volumes/ghost/attach", testToken, "", 404, api.CodeNotFound, "ghost"},
		{"attach not ready", "POST", "/v1/volumes/fresh/attach", testToken, "", 409, api.CodeConflict, "creating"},
		{"unknown fork", "GET", "/v1/forks/fork_ghost", testToken, "", 404, api.CodeNotFound, "fork_ghost"},
		{"fork unknown source", "POST", "/v1/forks", testToken, `{"source":"ghost","name":"x"}`, 404, api.CodeNotFound, "ghost"},
		{"fork empty source", "POST", "/v1/forks", testToken, `{"name":"x"}`, 400, api.CodeInvalid, "source"},
		{"fork bad name", "POST", "/v1/forks", testToken, `{"source":"db","name":"-x"}`, 400, api.CodeInvalid, "name"},
		{"fork duplicate name", "POST", "/v1/forks", testToken, `{"source":"db","name":"db"}`, 409, api.CodeExists, ""},
		{"fork bad via", "POST", "/v1/forks", testToken, `{"source":"db","name":"x","via":"teleport"}`, 400, api.CodeInvalid, "teleport"},
		{"fork negative rate", "POST", "/v1/forks", testToken, `{"source":"db","name":"x","rate_limit":-1}`, 400, api.CodeInvalid, "rate_limit"},
		{"fork tiny rate", "POST", "/v1/forks", testToken, `{"source":"db","name":"x","rate_limit":1000}`, 400, api.CodeInvalid, "below the minimum"},
		{"fork negative ttl", "POST", "/v1/forks", testToken, `{"source":"db","name":"x","ttl_seconds":-1}`, 400, api.CodeInvalid, "ttl_seconds"},
		{"fork ttl too long", "POST", "/v1/forks", testToken, `{"source":"db","name":"x","ttl_seconds":9000000000000}`, 400, api.CodeInvalid, "100 years"},
		{"volume negative ttl", "POST", "/v1/volumes", testToken, `{"name":"a","size":4096,"ttl_seconds":-5}`, 400, api.CodeInvalid, "ttl_seconds"},
		{"ttl unknown volume", "POST", "/v1/volumes/ghost/ttl", testToken, `{"ttl_seconds":60}`, 404, api.CodeNotFound, "ghost"},
		{"ttl negative", "POST", "/v1/volumes/db/ttl", testToken, `{"ttl_seconds":-60}`, 400, api.CodeInvalid, "ttl_seconds"},
		{"ttl not a number", "POST", "/v1/volumes/db/ttl", testToken, `{"ttl_seconds":"1h"}`, 400, api.CodeInvalid, "ttl_seconds"},
		{"ttl wrong method", "GET", "/v1/volumes/db/ttl", testToken, "", 405, api.CodeMethodNotAllowed, "POST"},
		{"fork unknown field", "POST", "/v1/forks", testToken, `{"source":"db","name":"x","size":1}`, 400, api.CodeInvalid, `unknown field "size"`},
		{"fork stream to host", "POST", "/v1/forks", testToken, `{"source":"db","name":"x","host":"h2","via":"stream"}`, 201, "", ""},
		{"delete a fork's source", "DELETE", "/v1/volumes/db", testToken, "", 409, api.CodeConflict, "forks cancel"},
		{"fork source not ready", "POST", "/v1/forks", testToken, `{"source":"fresh","name":"y"}`, 409, api.CodeConflict, "creating"},
		{"bad idempotency key", "POST", "/v1/forks", testToken, `{"source":"db","name":"z"}`, 400, api.CodeInvalid, "Idempotency-Key"},
		{"form body", "POST", "/v1/volumes", testToken, `{"name":"ct","size":4096}`, 415, api.CodeInvalid, "takes application/json"},
		{"json with charset", "POST", "/v1/volumes", testToken, `{"name":"ct2","size":4096,"host":"h1"}`, 201, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			var hdr []string
			switch tc.name {
			case "bad idempotency key":
				hdr = []string{api.IdempotencyHeader, "has space"}
			case "form body":
				hdr = []string{"Content-Type", "application/x-www-form-urlencoded"}
			case "json with charset":
				hdr = []string{"Content-Type", "application/json; charset=utf-8"}
			}
			r := do(t, e.srv1, tc.method, tc.path, tc.token, body, hdr...)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d: %s", r.status, tc.status, r.body)
			}
			if ct := r.header.Get("Content-Type"); ct != "application/json" {
				t.Fatalf("Content-Type %q", ct)
			}
			if tc.code == "" {
				return
			}
			eb := r.errBody(t)
			if eb.Code != tc.code || eb.Error == "" || !strings.Contains(eb.Error, tc.msg) {
				t.Fatalf("got %+v, want code %q and message containing %q", eb, tc.code, tc.msg)
			}
		})
	}
	// "fork stream to host" placed 256 MiB on h2; four more fill its 1 GiB
	// budget, the fifth is refused with the capacity code.
	for i := 0; i < 3; i++ {
		r := do(t, e.srv1, "POST", "/v1/forks", testToken, jsonBody(api.CreateForkRequest{Source: "db", Name: fmt.Sprintf("fill%d", i), Host: "h2"}))
		if r.status != 201 {
			t.Fatalf("fill %d: %d %s", i, r.status, r.body)
		}
	}
	r := do(t, e.srv1, "POST", "/v1/forks", testToken, jsonBody(api.CreateForkRequest{Source: "db", Name: "over", Host: "h2"}))
	if eb := r.errBody(t); r.status != 409 || eb.Code != api.CodeNoRoom {
		t.Fatalf("over budget: %d %+v", r.status, eb)
	}
}

func TestHTTPLeaderTrouble(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name     string
		applyErr error
		barrier  error
		method   string
		path     string
		body     string
		status   int
		code     string
	}{
		{"no leader on create", fmt.Errorf("%w: dial timeout", ErrNoLeader), nil, "POST", "/v1/volumes", `{"name":"a","size":4096}`, 503, api.CodeNoLeader},
		{"no leader on fork", ErrNoLeader, nil, "POST", "/v1/forks", `{"source":"db","name":"a"}`, 503, api.CodeNoLeader},
		{"shutdown", ErrShutdown, nil, "DELETE", "/v1/volumes/db", "", 503, api.CodeShuttingDown},
		{"deadline", context.DeadlineExceeded, nil, "POST", "/v1/forks", `{"source":"db","name":"a"}`, 503, api.CodeTimeout},
		{"lookup miss without leader", nil, ErrNoLeader, "GET", "/v1/volumes/ghost", "", 503, api.CodeNoLeader},
		{"fork miss without leader", nil, ErrNoLeader, "GET", "/v1/forks/fork_x", "", 503, api.CodeNoLeader},
		{"internal", errors.New("disk on fire"), nil, "POST", "/v1/forks", `{"source":"db","name":"a"}`, 500, api.CodeInternal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.n1.mu.Lock()
			e.n1.applyErr, e.n1.barrierErr = tc.applyErr, tc.barrier
			e.n1.mu.Unlock()
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			r := do(t, e.srv1, tc.method, tc.path, testToken, body)
			if eb := r.errBody(t); r.status != tc.status || eb.Code != tc.code || eb.Error == "" {
				t.Fatalf("got %d %+v, want %d %s", r.status, eb, tc.status, tc.code)
			}
		})
	}
	// Lists still answer from the local catalog, marked stale; known
	// volumes are found without the leader.
	e.n1.mu.Lock()
	e.n1.applyErr, e.n1.barrierErr = ErrNoLeader, ErrNoLeader
	e.n1.mu.Unlock()
	r := do(t, e.srv1, "GET", "/v1/volumes", testToken, nil)
	if r.status != 200 || r.header.Get(staleHeader) != "true" {
		t.Fatalf("stale list: %d %v", r.status, r.header)
	}
	if r := do(t, e.srv1, "GET", "/v1/volumes/db", testToken, nil); r.status != 200 {
		t.Fatalf("local lookup: %d %s", r.status, r.body)
	}
}

// A node that cannot reach the leader must answer within the apply bound,
// not hang: the Apply below blocks until its context ends.
func TestHTTPApplyIsBounded(t *testing.T) {
	e := newEnv(t)
	s := newAPIServer(&blockingNode{memNode: e.n1}, nil, NewID)
	s.applyTO = 200 * time.Millisecond
	srv := httptest.NewServer(s.handler())
	defer srv.Close()
	start := time.Now()
	r := do(t, srv, "POST", "/v1/forks", testToken, strings.NewReader(`{"source":"db","name":"a"}`))
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("took %s", took)
	}
	if eb := r.errBody(t); r.status != 503 || eb.Code != api.CodeTimeout {
		t.Fatalf("got %d %+v", r.status, eb)
	}
}

type blockingNode struct{ *memNode }

func (b *blockingNode) Apply(ctx context.Context, _ fsm.CommandType, _ any) (any, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func TestHTTPVolumes(t *testing.T) {
	e := newEnv(t)
	c, err := api.NewClient(e.srv2.URL, testToken) // h2 is not the volume's host
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	v, err := c.CreateVolume(ctx, api.CreateVolumeRequest{Name: "orders", App: "shop", Size: 64 * mib, Region: "r2"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(v.ID, "vol_") || v.Name != "orders" || v.Host != "h2" || v.State != fsm.VolumeCreating || v.Size != 64*mib {
		t.Fatalf("created %+v", v)
	}

	// ?wait=1 returns once the owning host made it ready.
	go func() {
		time.Sleep(50 * time.Millisecond)
		for {
			var id string
			e.cat.f.View(func(s *fsm.State) {
				if v, ok := s.VolumeByName("waited"); ok {
					id = v.ID
				}
			})
			if id != "" {
				e.cat.apply(fsm.CmdSetVolumeState, &fsm.SetVolumeStateCmd{ID: id, State: fsm.VolumeReady})
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	w, err := c.CreateVolume(ctx, api.CreateVolumeRequest{Name: "waited", Size: 4096, Host: "h1"}, true)
	if err != nil || w.State != fsm.VolumeReady {
		t.Fatalf("wait create: %v %+v", err, w)
	}

	// Nobody makes this one ready: the wait ends with 202 and the volume.
	r := do(t, e.srv1, "POST", "/v1/volumes?wait=1", testToken, strings.NewReader(`{"name":"slow","size":4096,"host":"h1"}`))
	if r.status != http.StatusAccepted || !bytes.Contains(r.body, []byte(`"state":"creating"`)) {
		t.Fatalf("slow wait: %d %s", r.status, r.body)
	}

	byName, err := c.Volume(ctx, "orders")
	if err != nil || byName.ID != v.ID {
		t.Fatalf("by name: %v %+v", err, byName)
	}
	byID, err := c.Volume(ctx, v.ID)
	if err != nil || byID.Name != "orders" {
		t.Fatalf("by id: %v %+v", err, byID)
	}
	list, err := c.Volumes(ctx)
	if err != nil || len(list) != 4 {
		t.Fatalf("list: %v %d", err, len(list))
	}

	// Idempotent create: the same key returns the first volume.
	h := []string{api.IdempotencyHeader, "k1"}
	r1 := do(t, e.srv1, "POST", "/v1/volumes", testToken, strings.NewReader(`{"name":"idem","size":4096}`), h...)
	r2 := do(t, e.srv1, "POST", "/v1/volumes", testToken, strings.NewReader(`{"name":"idem","size":4096}`), h...)
	if r1.status != 201 || r2.status != 201 || !bytes.Equal(r1.body, r2.body) {
		t.Fatalf("idempotent create: %d %s / %d %s", r1.status, r1.body, r2.status, r2.body)
	}
	// The same request spelled differently is still a retry; another
	// request under the same key is refused, not answered with the first.
	r3 := do(t, e.srv1, "POST", "/v1/volumes", testToken, strings.NewReader(`{ "size": 4096, "name": "idem" }`), h...)
	if r3.status != 201 || !bytes.Equal(r1.body, r3.body) {
		t.Fatalf("retry spelled differently: %d %s", r3.status, r3.body)
	}
	r4 := do(t, e.srv1, "POST", "/v1/volumes", testToken, strings.NewReader(`{"name":"idem-2","size":4096}`), h...)
	if r4.status != 409 || !strings.Contains(string(r4.body), `idempotency key \"k1\" was already used for a different request`) {
		t.Fatalf("reused key: %d %s", r4.status, r4.body)
	}
	if _, err := c.Volume(ctx, "idem-2"); !api.IsCode(err, api.CodeNotFound) {
		t.Fatalf("reused key created a volume: %v", err)
	}

	del, err := c.DeleteVolume(ctx, "orders")
	if err != nil || del.State != fsm.VolumeDeleting {
		t.Fatalf("delete: %v %+v", err, del)
	}
	got, _ := c.Volume(ctx, "orders")
	if got.State != fsm.VolumeDeleting {
		t.Fatalf("after delete: %+v", got)
	}
}

func TestHTTPAttachRunsOnOwner(t *testing.T) {
	e := newEnv(t)
	e.mustApply(fsm.CmdCreateVolume, &fsm.CreateVolumeCmd{Volume: fsm.Volume{ID: "vol_two", Name: "two", Host: "h2", Size: mib, State: fsm.VolumeCreating}})
	e.mustApply(fsm.CmdSetVolumeState, &fsm.SetVolumeStateCmd{ID: "vol_two", State: fsm.VolumeReady})
	c1, _ := api.NewClient(e.srv1.URL, testToken)
	ctx := context.Background()

	// Local attach on h1.
	a, err := c1.Attach(ctx, "db")
	if err != nil || a.Host != "h1" || a.Device == "" || e.n1.backend.device("vol_db") != a.Device {
		t.Fatalf("local attach: %v %+v", err, a)
	}
	// Through h1, a volume on h2: h2's backend does it.
	a, err = c1.Attach(ctx, "two")
	if err != nil || a.Host != "h2" || a.Device == "" {
		t.Fatalf("remote attach: %v %+v", err, a)
	}
	if e.n2.backend.device("vol_two") != a.Device || e.n1.backend.device("vol_two") != "" {
		t.Fatalf("attach ran on the wrong host: h1=%d h2=%d", e.n1.backend.count(), e.n2.backend.count())
	}
	// An attached volume cannot be removed.
	if _, err := c1.DeleteVolume(ctx, "two"); !api.IsCode(err, api.CodeConflict) || !strings.Contains(err.Error(), "detach it first") {
		t.Fatalf("removing an attached volume: %v", err)
	}
	if _, err := c1.Detach(ctx, "two"); err != nil || e.n2.backend.count() != 0 {
		t.Fatalf("remote detach: %v %d", err, e.n2.backend.count())
	}
	// Errors of the owning host come back as they were.
	if _, err := c1.Detach(ctx, "two"); !api.IsCode(err, api.CodeInvalid) {
		t.Fatalf("detach twice: %v", err)
	}
	e.n2.backend.fail(fmt.Errorf("loop devices exhausted: %w", cow.ErrBusy))
	if _, err := c1.Attach(ctx, "two"); !api.IsCode(err, api.CodeConflict) || !strings.Contains(err.Error(), "exhausted") {
		t.Fatalf("remote failure: %v", err)
	}
	// Owning host unreachable: 503 naming it.
	e.n2.mu.Lock()
	e.n2.down = true
	e.n2.mu.Unlock()
	_, err = c1.Attach(ctx, "two")
	if !api.IsCode(err, api.CodeUnavailable) || !strings.Contains(err.Error(), "h2") {
		t.Fatalf("dead owner: %v", err)
	}
}

func TestHTTPForks(t *testing.T) {
	e := newEnv(t)
	c, _ := api.NewClient(e.srv2.URL, testToken)
	ctx := context.Background()

	f, err := c.CreateFork(ctx, api.CreateForkRequest{Source: "db", Name: "pr-1"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(f.ID, "fork_") || f.State != fsm.ForkPending || f.SourceVolume != "vol_db" || f.Name != "pr-1" || f.BytesTotal != 256*mib {
		t.Fatalf("fork: %+v", f)
	}
	tv, err := c.Volume(ctx, "pr-1")
	if err != nil || tv.ID != f.TargetVolume || tv.State != fsm.VolumeCreating {
		t.Fatalf("target volume: %v %+v", err, tv)
	}

	// Same Idempotency-Key: same fork, no second one.
	f1, err := c.CreateFork(ctx, api.CreateForkRequest{Source: "db", Name: "pr-2", Via: "stream", Host: "h2"}, "retry-me")
	if err != nil {
		t.Fatal(err)
	}
	f2, err := c.CreateFork(ctx, api.CreateForkRequest{Source: "db", Name: "pr-2", Via: "stream", Host: "h2"}, "retry-me")
	if err != nil || f2.ID != f1.ID || f1.Path != fsm.PathStream || f1.TargetHost != "h2" {
		t.Fatalf("idempotent fork: %v %+v %+v", err, f1, f2)
	}
	if _, err := c.CreateFork(ctx, api.CreateForkRequest{Source: "db", Name: "pr-3", Via: "stream", Host: "h2"}, "retry-me"); !api.IsCode(err, api.CodeConflict) {
		t.Fatalf("a key reused for another fork: %v, want a conflict", err)
	}
	forks, err := c.Forks(ctx)
	if err != nil || len(forks) != 2 {
		t.Fatalf("forks: %v %d", err, len(forks))
	}

	// Progress shows up with derived figures.
	e.mustApply(fsm.CmdForkProgress, &fsm.ForkProgressCmd{ForkID: f1.ID, BytesDone: 128 * mib, BytesTotal: 256 * mib, WireBytes: 32 * mib})
	got, err := c.Fork(ctx, f1.ID)
	if err != nil || got.State != fsm.ForkRunning || got.CompressionRatio != 4 || got.Percent != 50 || got.RateBytesPerSec <= 0 || got.ETASeconds <= 0 {
		t.Fatalf("progress: %v %+v", err, got)
	}
	// ?wait=1 on a fork returns when it finished.
	go func() {
		time.Sleep(30 * time.Millisecond)
		e.cat.apply(fsm.CmdFinishFork, &fsm.FinishForkCmd{ForkID: f1.ID, OK: false, Error: "source host died"})
	}()
	w, err := c.WaitFork(ctx, f1.ID, 10*time.Millisecond, nil)
	if err == nil || !strings.Contains(err.Error(), "source host died") || w.State != fsm.ForkFailed {
		t.Fatalf("failed fork: %v %+v", err, w)
	}
}

func TestHTTPStatus(t *testing.T) {
	e := newEnv(t)
	c, _ := api.NewClient(e.srv1.URL, testToken)
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Node != "h1" || st.Leader != "h1" || len(st.Members) != 1 || len(st.Hosts) != 2 {
		t.Fatalf("status: %+v", st)
	}
	h1 := st.Hosts[0]
	if h1.ID != "h1" || h1.Budget != 10*gib || h1.Used != 256*mib || h1.Free != 10*gib-256*mib || !h1.Alive || h1.Volumes != 1 || h1.Region != "r1" {
		t.Fatalf("h1: %+v", h1)
	}
}

// Twenty forks race for a host with room for five, through both nodes:
// exactly five land, the rest get no_room, the budget holds.
func TestHTTPCapacityRace(t *testing.T) {
	e := newEnv(t)
	var wg sync.WaitGroup
	var ok, noRoom, other atomic.Int64
	for i := 0; i < 20; i++ {
		srv := e.srv1
		if i%2 == 1 {
			srv = e.srv2
		}
		wg.Add(1)
		go func(i int, srv *httptest.Server) {
			defer wg.Done()
			c, _ := api.NewClient(srv.URL, testToken)
			_, err := c.CreateFork(context.Background(), api.CreateForkRequest{Source: "db", Name: fmt.Sprintf("race-%02d", i), Host: "h2"}, "")
			switch {
			case err == nil:
				ok.Add(1)
			case api.IsCode(err, api.CodeNoRoom):
				noRoom.Add(1)
			default:
				other.Add(1)
				t.Errorf("fork %d: %v", i, err)
			}
		}(i, srv)
	}
	wg.Wait()
	// h2 has 1 GiB: four 256 MiB forks fit.
	if ok.Load() != 4 || noRoom.Load() != 16 || other.Load() != 0 {
		t.Fatalf("ok=%d no_room=%d other=%d", ok.Load(), noRoom.Load(), other.Load())
	}
	c, _ := api.NewClient(e.srv1.URL, testToken)
	st, _ := c.Status(context.Background())
	for _, h := range st.Hosts {
		if h.Used > h.Budget {
			t.Fatalf("host %s over budget: %+v", h.ID, h)
		}
	}
}

// A node whose catalog lags (the volume still creating there, ready on the
// leader) catches up before refusing an attach.
func TestHTTPAttachCatchesUp(t *testing.T) {
	e := newEnv(t)
	e.mustApply(fsm.CmdCreateVolume, &fsm.CreateVolumeCmd{Volume: fsm.Volume{ID: "vol_lag", Name: "lag", Host: "h1", Size: mib, State: fsm.VolumeCreating}})
	var once sync.Once
	e.n1.mu.Lock()
	e.n1.onBarrier = func() {
		once.Do(func() {
			e.cat.apply(fsm.CmdSetVolumeState, &fsm.SetVolumeStateCmd{ID: "vol_lag", State: fsm.VolumeReady})
		})
	}
	e.n1.mu.Unlock()
	c, _ := api.NewClient(e.srv1.URL, testToken)
	a, err := c.Attach(context.Background(), "lag")
	if err != nil || a.Device == "" || a.Volume.State != fsm.VolumeReady {
		t.Fatalf("attach after catch-up: %v %+v", err, a)
	}
}

// Reads of one volume or fork catch up with the leader first: a change
// made through another node shows at once.
func TestHTTPReadsCatchUp(t *testing.T) {
	e := newEnv(t)
	c1, _ := api.NewClient(e.srv1.URL, testToken)
	c2, _ := api.NewClient(e.srv2.URL, testToken)
	ctx := context.Background()
	f, err := c2.CreateFork(ctx, api.CreateForkRequest{Source: "db", Name: "pr-lag"}, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		change func()
		check  func() error
	}{
		{"fork", func() {
			e.cat.apply(fsm.CmdFinishFork, &fsm.FinishForkCmd{ForkID: f.ID, OK: true})
		}, func() error {
			got, err := c1.Fork(ctx, f.ID)
			if err == nil && got.State != fsm.ForkReady {
				err = fmt.Errorf("fork is %s", got.State)
			}
			return err
		}},
		{"volume", func() {
			e.cat.apply(fsm.CmdSetVolumeState, &fsm.SetVolumeStateCmd{ID: f.TargetVolume, State: fsm.VolumeDeleting})
		}, func() error {
			got, err := c1.Volume(ctx, f.TargetVolume)
			if err == nil && got.State != fsm.VolumeDeleting {
				err = fmt.Errorf("volume is %s", got.State)
			}
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var once sync.Once
			e.n1.mu.Lock()
			e.n1.onBarrier = func() { once.Do(tc.change) } // the leader has it; n1 has not applied it yet
			e.n1.mu.Unlock()
			if err := tc.check(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Pollers ask for ?stale=1: no barrier, so waiting on a fork costs the
// leader nothing; a plain read takes one.
func TestHTTPForkPollsSkipBarrier(t *testing.T) {
	e := newEnv(t)
	c1, _ := api.NewClient(e.srv1.URL, testToken)
	ctx := context.Background()
	f, err := c1.CreateFork(ctx, api.CreateForkRequest{Source: "db", Name: "pr-poll"}, "")
	if err != nil {
		t.Fatal(err)
	}
	var barriers atomic.Int64
	e.n1.mu.Lock()
	e.n1.onBarrier = func() { barriers.Add(1) }
	e.n1.mu.Unlock()

	if _, err := c1.Fork(ctx, f.ID); err != nil || barriers.Load() != 1 {
		t.Fatalf("plain read: %v, %d barriers, want 1", err, barriers.Load())
	}
	polls := 0
	go func() {
		time.Sleep(30 * time.Millisecond)
		e.cat.apply(fsm.CmdFinishFork, &fsm.FinishForkCmd{ForkID: f.ID, OK: true})
	}()
	got, err := c1.WaitFork(ctx, f.ID, 5*time.Millisecond, func(api.Fork) { polls++ })
	if err != nil || got.State != fsm.ForkReady || polls < 2 {
		t.Fatalf("wait: %v %+v after %d polls", err, got, polls)
	}
	if n := barriers.Load(); n != 1 {
		t.Fatalf("%d barriers after %d polls, want still 1", n, polls)
	}
	var body api.ErrorBody
	err = c1.Do(ctx, http.MethodGet, "/v1/forks/"+f.ID+"?stale=maybe", nil, &body, nil)
	if !api.IsCode(err, api.CodeInvalid) || !strings.Contains(err.Error(), "stale") {
		t.Fatalf("bad stale: %v", err)
	}
}

func TestHTTPRemoveNode(t *testing.T) {
	e := newEnv(t)
	c, _ := api.NewClient(e.srv1.URL, testToken)
	ctx := context.Background()
	// h1 still holds "db": the catalog refuses to drop it.
	if err := c.RemoveNode(ctx, "h2"); err != nil {
		t.Fatalf("remove empty host h2: %v", err)
	}
	if err := c.RemoveNode(ctx, "h1"); !api.IsCode(err, api.CodeInvalid) {
		t.Fatalf("remove self: %v", err)
	}
	if err := c.RemoveNode(ctx, "h9"); !api.IsCode(err, api.CodeNotFound) {
		t.Fatalf("remove unknown: %v", err)
	}
}

// finishingNode finishes a fork just before the first FinishFork it
// forwards: the fork's executor winning the race with an operator's cancel.
// It finishes ready, or failed with fail.
type finishingNode struct {
	*memNode
	fork string
	fail string
	once sync.Once
}

func (n *finishingNode) Apply(ctx context.Context, t fsm.CommandType, cmd any) (any, error) {
	if t == fsm.CmdFinishFork {
		n.once.Do(func() {
			n.cat.apply(fsm.CmdFinishFork, &fsm.FinishForkCmd{ForkID: n.fork, OK: n.fail == "", Error: n.fail})
		})
	}
	return n.memNode.Apply(ctx, t, cmd)
}

func TestHTTPCancelFork(t *testing.T) {
	e := newEnv(t)
	c, _ := api.NewClient(e.srv2.URL, testToken)
	ctx := context.Background()
	mk := func(name string) api.Fork {
		t.Helper()
		f, err := c.CreateFork(ctx, api.CreateForkRequest{Source: "db", Name: name}, "")
		if err != nil {
			t.Fatal(err)
		}
		return *f
	}
	running, ready, died := mk("pr-run"), mk("pr-ready"), mk("pr-died")
	e.mustApply(fsm.CmdForkProgress, &fsm.ForkProgressCmd{ForkID: running.ID, BytesDone: 64 * mib, BytesTotal: 256 * mib})
	e.mustApply(fsm.CmdFinishFork, &fsm.FinishForkCmd{ForkID: ready.ID, OK: true})
	e.mustApply(fsm.CmdFinishFork, &fsm.FinishForkCmd{ForkID: died.ID, OK: false, Error: "source host died"})

	var firstFinish int64
	for _, tc := range []struct {
		name, method, id string
		status           int
		code, msg        string // error answers
		err              string // fork answers: its error
		already          bool   // fork answers: this call changed nothing
	}{
		{name: "in flight", method: "POST", id: running.ID, status: 200, err: api.ForkCancelledError},
		{name: "again is idempotent", method: "POST", id: running.ID, status: 200, err: api.ForkCancelledError, already: true},
		{name: "failed for another reason", method: "POST", id: died.ID, status: 200, err: "source host died", already: true},
		{name: "ready", method: "POST", id: ready.ID, status: 409, code: api.CodeConflict,
			msg: "fork " + ready.ID + " is already ready; remove its volume with `forknode volume rm pr-ready` instead"},
		{name: "unknown", method: "POST", id: "fork_nope", status: 404, code: api.CodeNotFound, msg: `fork "fork_nope"`},
		{name: "wrong method", method: "GET", id: running.ID, status: 405, code: api.CodeMethodNotAllowed, msg: "allowed: POST"},
	} {
		r := do(t, e.srv2, tc.method, "/v1/forks/"+tc.id+"/cancel", testToken, nil)
		if r.status != tc.status {
			t.Errorf("%s: status %d, want %d: %s", tc.name, r.status, tc.status, r.body)
			continue
		}
		if tc.code != "" {
			if eb := r.errBody(t); eb.Code != tc.code || !strings.Contains(eb.Error, tc.msg) {
				t.Errorf("%s: error %+v, want code %s with %q", tc.name, eb, tc.code, tc.msg)
			}
			continue
		}
		var f api.CancelForkResponse
		if err := json.Unmarshal(r.body, &f); err != nil {
			t.Fatalf("%s: %v: %s", tc.name, err, r.body)
		}
		if f.ID != tc.id || f.State != fsm.ForkFailed || f.Error != tc.err || f.FinishedAt == 0 {
			t.Errorf("%s: fork %+v, want failed with %q", tc.name, f, tc.err)
		}
		// "already" is always there, false too: a script tells this call's
		// cancel from an answer of a node that predates the field.
		if f.Already != tc.already || !strings.Contains(string(r.body), fmt.Sprintf(`"already":%v`, tc.already)) {
			t.Errorf("%s: already %v, want %v: %s", tc.name, f.Already, tc.already, r.body)
		}
		if tc.id == running.ID {
			// The second cancel answers the record the first one wrote.
			if firstFinish != 0 && f.FinishedAt != firstFinish {
				t.Errorf("%s: finished at %d, first cancel finished it at %d", tc.name, f.FinishedAt, firstFinish)
			}
			firstFinish = f.FinishedAt
		}
	}
	// The target volume is failed, for its host's executor to remove.
	if v, err := c.Volume(ctx, running.TargetVolume); err != nil || v.State != fsm.VolumeFailed {
		t.Fatalf("target after cancel: %v %+v", err, v)
	}
	if v, err := c.Volume(ctx, ready.TargetVolume); err != nil || v.State != fsm.VolumeReady {
		t.Fatalf("ready fork's volume after a refused cancel: %v %+v", err, v)
	}

	// The fork finishes ready between the lookup and the apply: 409, and
	// the volume stays ready.
	late := mk("pr-late")
	fn := &finishingNode{memNode: e.n1, fork: late.ID}
	srv := httptest.NewServer(newAPIServer(fn, nil, NewID).handler())
	t.Cleanup(srv.Close)
	rc, _ := api.NewClient(srv.URL, testToken)
	if _, err := rc.CancelFork(ctx, late.ID); !api.IsCode(err, api.CodeConflict) || !strings.Contains(err.Error(), "already ready") {
		t.Fatalf("cancel racing a finish: %v", err)
	}
	if f, err := rc.Fork(ctx, late.ID); err != nil || f.State != fsm.ForkReady || f.Error != "" {
		t.Fatalf("raced fork: %v %+v", err, f)
	}

	// The fork fails on its own between the lookup and the apply: this
	// call cancelled nothing.
	lost := mk("pr-lost")
	fn = &finishingNode{memNode: e.n1, fork: lost.ID, fail: "source host died"}
	srv = httptest.NewServer(newAPIServer(fn, nil, NewID).handler())
	t.Cleanup(srv.Close)
	rc, _ = api.NewClient(srv.URL, testToken)
	if f, err := rc.CancelFork(ctx, lost.ID); err != nil || !f.Already || f.State != fsm.ForkFailed || f.Error != "source host died" {
		t.Fatalf("cancel racing a failure: %v %+v", err, f)
	}

	// A cancel made through another node, which this node's catalog had
	// not applied yet when asked again: the answer catches up first.
	stale := mk("pr-stale")
	var once sync.Once
	e.n2.mu.Lock()
	e.n2.onBarrier = func() {
		once.Do(func() {
			e.cat.apply(fsm.CmdFinishFork, &fsm.FinishForkCmd{ForkID: stale.ID, Error: api.ForkCancelledError})
		})
	}
	e.n2.mu.Unlock()
	if f, err := c.CancelFork(ctx, stale.ID); err != nil || !f.Already || f.Error != api.ForkCancelledError {
		t.Fatalf("cancel of a fork cancelled through another node: %v %+v", err, f)
	}
}

// A host name the catalog does not hold is refused with the names it does
// hold (TestHTTPErrors), at most ten of them, under the unchanged
// not_found code.
func TestHTTPUnknownHostListsHosts(t *testing.T) {
	e := newEnv(t)
	for i := 3; i <= 12; i++ {
		e.mustApply(fsm.CmdUpsertHost, &fsm.UpsertHostCmd{Host: fsm.Host{ID: fmt.Sprintf("h%d", i), Region: "r1", Backend: "file", Budget: gib}})
	}
	c, _ := api.NewClient(e.srv1.URL, testToken)
	ctx := context.Background()
	const hosts = `"nosuch" (hosts: h1, h10, h11, h12, h2, h3, h4, h5, h6, h7 and 2 more)`
	if _, err := c.CreateVolume(ctx, api.CreateVolumeRequest{Name: "a", Size: mib, Host: "nosuch"}, false); !api.IsCode(err, api.CodeNotFound) ||
		!strings.Contains(err.Error(), "volume a: host "+hosts) {
		t.Errorf("volume create --host nosuch: %v", err)
	}
	if _, err := c.CreateFork(ctx, api.CreateForkRequest{Source: "db", Name: "f", Host: "nosuch"}, ""); !api.IsCode(err, api.CodeNotFound) ||
		!strings.Contains(err.Error(), "target host "+hosts) {
		t.Errorf("fork --host nosuch: %v", err)
	}
}

// TestRevokedTokenRefusedAtApply: a node whose own check still accepts a
// token (its catalog lags) passes the token's id with the command, and the
// catalog, which has revoked it, refuses the write: 401, nothing made.
func TestRevokedTokenRefusedAtApply(t *testing.T) {
	e := newEnv(t)
	e.mustApply(fsm.CmdSetCatalogVersion, &fsm.SetCatalogVersionCmd{Version: 2})
	e.mustApply(fsm.CmdRevokeToken, &fsm.RevokeTokenCmd{ID: keys.ClusterTokenID}) // memNode's check knows nothing of it
	r := do(t, e.srv1, "POST", "/v1/volumes", testToken, strings.NewReader(`{"name":"late","size":1048576}`))
	if r.status != http.StatusUnauthorized || !strings.Contains(string(r.body), "revoked") {
		t.Fatalf("write with a revoked token: %d %s", r.status, r.body)
	}
	e.n1.View(func(s *fsm.State) {
		if _, ok := s.VolumeByName("late"); ok {
			t.Fatal("the volume was made")
		}
	})
	if r := do(t, e.srv1, "GET", "/v1/volumes", testToken, nil); r.status != http.StatusOK {
		t.Fatalf("read: %d %s", r.status, r.body)
	}
}
