package cluster

// The HTTP API (/v1, JSON). Handlers depend on apiBackend, a small slice of
// *Node, so they are unit-tested against an in-memory catalog (http_test.go).
// Types shared with clients live in internal/api.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/forknode/forknode/internal/api"
	"github.com/forknode/forknode/internal/cow"
	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/keys"
	"github.com/hashicorp/go-hclog"
)

// apiBackend is what the HTTP API needs from a node.
type apiBackend interface {
	Name() string
	Backend() cow.Backend
	// VerifyToken checks a presented bearer token: the cluster token or
	// an issued one, unexpired and not revoked.
	VerifyToken(tok string) (keys.TokenClaims, error)
	Apply(ctx context.Context, t fsm.CommandType, cmd any) (any, error)
	View(fn func(s *fsm.State))
	Barrier(ctx context.Context) error
	Status() StatusInfo
	VolumeOp(ctx context.Context, host, op, id string) (string, error)
	RemoveMember(ctx context.Context, name string) error
}

const (
	// requestTimeout bounds every handler that is not a ?wait=1.
	requestTimeout = 15 * time.Second
	// applyTimeout bounds one write: a node that cannot reach the leader
	// answers 503 within it (a healthy commit takes milliseconds).
	applyTimeout = 5 * time.Second
	// waitTimeout bounds ?wait=1 (volume made ready by its host, etc.).
	waitTimeout = 60 * time.Second
	// barrierTimeout bounds the read-your-writes barrier of reads; a node
	// cut off from the leader then answers from its local catalog (lists)
	// or with 503 (lookups of unknown ids).
	barrierTimeout = 2 * time.Second
	// staleHeader marks a list served from a catalog that may lag the leader.
	staleHeader = api.StaleHeader
)

// httpHandler is the API the node serves on APIAddr. Server timeouts
// (ReadHeaderTimeout, ReadTimeout) are the node's; no WriteTimeout, since
// ?wait=1 legitimately holds a response for up to waitTimeout.
func (n *Node) httpHandler() http.Handler {
	return newAPIServer(n, n.logger.Named("http"), NewID).handler()
}

type apiServer struct {
	b       apiBackend
	log     hclog.Logger
	newID   func(prefix string) string
	poll    time.Duration
	reqTO   time.Duration
	applyTO time.Duration
	waitTO  time.Duration
}

func newAPIServer(b apiBackend, logger hclog.Logger, newID func(string) string) *apiServer {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &apiServer{
		b:       b,
		log:     logger,
		newID:   newID,
		poll:    50 * time.Millisecond,
		reqTO:   requestTimeout,
		applyTO: applyTimeout,
		waitTO:  waitTimeout,
	}
}

func (s *apiServer) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/status", s.methods(map[string]http.HandlerFunc{"GET": s.status}))
	mux.HandleFunc("/v1/volumes", s.methods(map[string]http.HandlerFunc{"GET": s.listVolumes, "POST": s.createVolume}))
	mux.HandleFunc("/v1/volumes/{id}", s.methods(map[string]http.HandlerFunc{"GET": s.getVolume, "DELETE": s.deleteVolume}))
	mux.HandleFunc("/v1/volumes/{id}/attach", s.methods(map[string]http.HandlerFunc{"POST": s.attach}))
	mux.HandleFunc("/v1/volumes/{id}/detach", s.methods(map[string]http.HandlerFunc{"POST": s.detach}))
	mux.HandleFunc("/v1/volumes/{id}/ttl", s.methods(map[string]http.HandlerFunc{"POST": s.setTTL}))
	mux.HandleFunc("/v1/forks", s.methods(map[string]http.HandlerFunc{"GET": s.listForks, "POST": s.createFork}))
	mux.HandleFunc("/v1/forks/{id}", s.methods(map[string]http.HandlerFunc{"GET": s.getFork}))
	mux.HandleFunc("/v1/forks/{id}/cancel", s.methods(map[string]http.HandlerFunc{"POST": s.cancelFork}))
	mux.HandleFunc("/v1/nodes/{name}", s.methods(map[string]http.HandlerFunc{"DELETE": s.removeNode}))
	mux.HandleFunc("/v1/tokens/revoke", s.methods(map[string]http.HandlerFunc{"POST": s.revokeToken}))
	mux.HandleFunc("/v1/tokens/revoked", s.methods(map[string]http.HandlerFunc{"GET": s.revokedTokens}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("no such route: %s %s", r.Method, r.URL.Path))
	})
	// Auth wraps the router: an unauthenticated caller gets 401 for every
	// path, so it cannot even probe which routes exist.
	return s.recoverer(s.logged(s.auth(mux)))
}

// methods dispatches by method and answers 405 (JSON, with Allow) otherwise.
func (s *apiServer) methods(m map[string]http.HandlerFunc) http.HandlerFunc {
	allow := make([]string, 0, len(m))
	for _, k := range []string{"GET", "POST", "DELETE"} {
		if m[k] != nil {
			allow = append(allow, k)
		}
	}
	return func(w http.ResponseWriter, r *http.Request) {
		h := m[r.Method]
		if h == nil && r.Method == http.MethodHead {
			h = m["GET"]
		}
		if h == nil {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			writeError(w, http.StatusMethodNotAllowed, api.CodeMethodNotAllowed,
				fmt.Sprintf("method %s not allowed on %s (allowed: %s)", r.Method, r.URL.Path, strings.Join(allow, ", ")))
			return
		}
		h(w, r)
	}
}

func (s *apiServer) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := bearer(r.Header.Get("Authorization"))
		var claims keys.TokenClaims
		var err error
		if ok {
			claims, err = s.b.VerifyToken(got)
		}
		if !ok || err != nil {
			msg := "missing or invalid bearer token (see `forknode token`)"
			if errors.Is(err, keys.ErrTokenExpired) || errors.Is(err, fsm.ErrTokenRevoked) {
				msg = err.Error() + " (issue a new one with `forknode token issue`)"
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="forknode"`)
			writeError(w, http.StatusUnauthorized, api.CodeUnauthorized, msg)
			return
		}
		if claims.Scope != keys.ScopeAdmin && r.Method != http.MethodGet && r.Method != http.MethodHead {
			writeError(w, http.StatusForbidden, api.CodeForbidden,
				fmt.Sprintf("token %s may only read (scope %q); %s %s needs an admin token", claims.ID, claims.Scope, r.Method, r.URL.Path))
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), tokenIDKey{}, claims.ID)))
	})
}

func bearer(h string) (string, bool) {
	const p = "bearer "
	if len(h) < len(p) || !strings.EqualFold(h[:len(p)], p) {
		return "", false
	}
	tok := strings.TrimSpace(h[len(p):])
	return tok, tok != ""
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (s *apiServer) logged(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "status", rec.status,
			"remote", r.RemoteAddr, "took", time.Since(start))
	})
}

// recoverer turns a handler panic into a JSON 500 rather than a dropped
// connection; nothing should panic, and the log says where if it does.
func (s *apiServer) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("handler panic", "method", r.Method, "path", r.URL.Path, "panic", v, "stack", string(debug.Stack()))
				writeError(w, http.StatusInternalServerError, api.CodeInternal, fmt.Sprintf("internal error: %v", v))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// ---- responses and errors

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b, _ = json.Marshal(api.ErrorBody{Error: "encode response: " + err.Error(), Code: api.CodeInternal})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, api.ErrorBody{Error: msg, Code: code})
}

// httpError is an error with the status and code it should be answered with.
type httpError struct {
	status int
	code   string
	err    error
}

func (e *httpError) Error() string { return e.err.Error() }
func (e *httpError) Unwrap() error { return e.err }

func badRequest(format string, args ...any) error {
	return &httpError{status: http.StatusBadRequest, code: api.CodeInvalid, err: fmt.Errorf(format, args...)}
}

// classify maps an error to its HTTP status and code. Domain errors are
// matched by sentinel (errors.Is), never by message.
func classify(err error) (int, string) {
	var he *httpError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &he):
		return he.status, he.code
	case errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge, api.CodeTooLarge
	case errors.Is(err, ErrNoLeader):
		return http.StatusServiceUnavailable, api.CodeNoLeader
	case errors.Is(err, ErrShutdown):
		return http.StatusServiceUnavailable, api.CodeShuttingDown
	case errors.Is(err, ErrHostUnreachable):
		return http.StatusServiceUnavailable, api.CodeUnavailable
	case errors.Is(err, fsm.ErrNotFound), errors.Is(err, cow.ErrNotFound):
		return http.StatusNotFound, api.CodeNotFound
	case errors.Is(err, fsm.ErrExists), errors.Is(err, cow.ErrExists):
		return http.StatusConflict, api.CodeExists
	case errors.Is(err, fsm.ErrNoRoom), errors.Is(err, cow.ErrNoSpace):
		// 409, not 507: see internal/api/doc.go.
		return http.StatusConflict, api.CodeNoRoom
	case errors.Is(err, fsm.ErrTokenRevoked):
		return http.StatusUnauthorized, api.CodeUnauthorized
	case errors.Is(err, fsm.ErrUpgradeRequired):
		return http.StatusConflict, api.CodeUpgradeRequired
	case errors.Is(err, fsm.ErrConflict), errors.Is(err, cow.ErrBusy):
		return http.StatusConflict, api.CodeConflict
	case errors.Is(err, fsm.ErrInvalid), errors.Is(err, cow.ErrInvalid), errors.Is(err, cow.ErrNotSupported):
		return http.StatusBadRequest, api.CodeInvalid
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return http.StatusServiceUnavailable, api.CodeTimeout
	}
	return http.StatusInternalServerError, api.CodeInternal
}

func (s *apiServer) fail(w http.ResponseWriter, r *http.Request, err error) {
	status, code := classify(err)
	msg := err.Error()
	if code == api.CodeTimeout {
		msg = "request timed out (is the cluster leader reachable?): " + msg
	}
	if status >= 500 {
		s.log.Warn("request failed", "method", r.Method, "path", r.URL.Path, "status", status, "error", err)
	}
	writeError(w, status, code, msg)
}

// ---- request decoding

// decode reads one JSON object into dst: at most api.MaxBodyBytes, no
// unknown fields, nothing after the object. Errors name the problem.
func decode(w http.ResponseWriter, r *http.Request, dst any) error {
	// A body sent as something else (a form, plain text; also curl -d
	// without -H) is refused with the fix; a request with no Content-Type
	// at all is taken as JSON.
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			return &httpError{status: http.StatusUnsupportedMediaType, code: api.CodeInvalid,
				err: fmt.Errorf("Content-Type %q: the API takes application/json (curl: -H 'Content-Type: application/json')", ct)}
		}
	}
	r.Body = http.MaxBytesReader(w, r.Body, api.MaxBodyBytes)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return jsonError(err)
		}
		return badRequest("request body has data after the JSON object")
	}
	return nil
}

func jsonError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return &httpError{status: http.StatusRequestEntityTooLarge, code: api.CodeTooLarge,
			err: fmt.Errorf("request body exceeds %d bytes", mbe.Limit)}
	case errors.Is(err, io.EOF):
		return badRequest("request body is empty; expected a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("malformed JSON: unexpected end of body")
	case errors.As(err, &syn):
		return badRequest("malformed JSON at byte %d: %v", syn.Offset, syn)
	case errors.As(err, &typ):
		if typ.Field != "" {
			return badRequest("field %q must be %s, got JSON %s", typ.Field, typ.Type, typ.Value)
		}
		return badRequest("request body must be a JSON object, got JSON %s", typ.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return badRequest("unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	return badRequest("malformed JSON: %v", err)
}

func queryBool(r *http.Request, key string) (bool, error) {
	v := r.URL.Query().Get(key)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, badRequest("query parameter %s=%q: want 1/0/true/false", key, v)
	}
	return b, nil
}

// requestID turns an Idempotency-Key into the command's RequestID, scoped
// per kind so a key reused across routes cannot return the wrong record.
func requestID(r *http.Request, kind string) (string, error) {
	k := r.Header.Get(api.IdempotencyHeader)
	if k == "" {
		return "", nil
	}
	if len(k) > 128 {
		return "", badRequest("%s header is %d characters, at most 128 allowed", api.IdempotencyHeader, len(k))
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x21 || k[i] > 0x7e {
			return "", badRequest("%s header must be printable ASCII without spaces", api.IdempotencyHeader)
		}
	}
	return kind + ":" + k, nil
}

// requestDigest fingerprints a request body under an idempotency key, so
// the catalog can tell a retry from a reused key (see fsm.Header.Digest).
// The body is the decoded and validated request, re-encoded: the same
// request spelled differently (field order, spaces) has the same digest.
func requestDigest(rid string, req any) string {
	if rid == "" {
		return ""
	}
	b, err := json.Marshal(req)
	if err != nil {
		return "" // cannot happen for the API's plain structs; no check then
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

func validateOptionalName(field, v string) error {
	if v == "" {
		return nil
	}
	if err := cow.ValidateName(v); err != nil {
		return badRequest("%s: %v", field, err)
	}
	return nil
}

// ---- catalog helpers

func (s *apiServer) ctx(r *http.Request, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), d)
}

func findVolume(st *fsm.State, idOrName string) (fsm.Volume, bool) {
	if v, ok := st.Volume(idOrName); ok {
		return v, true
	}
	return st.VolumeByName(idOrName)
}

// lookupVolume finds a volume by id or name. A miss in the local catalog is
// retried after a barrier, so a follower sees what was just written through
// it; if the barrier cannot complete the node says so (503) rather than
// claim the volume does not exist.
func (s *apiServer) lookupVolume(ctx context.Context, idOrName string, synced bool) (fsm.Volume, error) {
	return lookup(ctx, s.b, "volume", idOrName, synced, func(st *fsm.State) (fsm.Volume, bool) { return findVolume(st, idOrName) })
}

func (s *apiServer) lookupFork(ctx context.Context, id string, synced bool) (fsm.Fork, error) {
	return lookup(ctx, s.b, "fork", id, synced, func(st *fsm.State) (fsm.Fork, bool) { return st.Fork(id) })
}

// lookup finds an object in this node's catalog. A miss is only final once
// the catalog has caught up with the leader: synced says the caller already
// took that barrier (freshen), else lookup takes it here.
func lookup[T any](ctx context.Context, b apiBackend, what, id string, synced bool, find func(*fsm.State) (T, bool)) (T, error) {
	var v T
	var ok bool
	b.View(func(st *fsm.State) { v, ok = find(st) })
	if !ok && !synced {
		bctx, cancel := context.WithTimeout(ctx, barrierTimeout)
		defer cancel()
		if err := b.Barrier(bctx); err != nil {
			return v, fmt.Errorf("%s %q not in this node's catalog, and it cannot sync with the leader: %w", what, id, err)
		}
		b.View(func(st *fsm.State) { v, ok = find(st) })
	}
	if !ok {
		return v, fmt.Errorf("%s %q: %w", what, id, fsm.ErrNotFound)
	}
	return v, nil
}

// freshen is the best-effort barrier of reads: on failure the answer is
// served from the local catalog and marked stale. It reports whether the
// catalog caught up.
func (s *apiServer) freshen(w http.ResponseWriter, r *http.Request) bool {
	ctx, cancel := context.WithTimeout(r.Context(), barrierTimeout)
	defer cancel()
	if err := s.b.Barrier(ctx); err != nil {
		w.Header().Set(staleHeader, "true")
		return false
	}
	return true
}

func asVolume(v any) (fsm.Volume, error) {
	switch x := v.(type) {
	case *fsm.Volume:
		if x != nil {
			return *x, nil
		}
	case fsm.Volume:
		return x, nil
	}
	return fsm.Volume{}, fmt.Errorf("catalog returned %T, want a volume", v)
}

func asFork(v any) (fsm.Fork, error) {
	switch x := v.(type) {
	case *fsm.Fork:
		if x != nil {
			return *x, nil
		}
	case fsm.Fork:
		return x, nil
	}
	return fsm.Fork{}, fmt.Errorf("catalog returned %T, want a fork", v)
}

// tokenIDKey carries the id of the request's API token in its context.
type tokenIDKey struct{}

// apply commits a client's command within the write bound, carrying its
// token's id so that the catalog refuses it if that token has been revoked
// by the time it applies.
func (s *apiServer) apply(ctx context.Context, t fsm.CommandType, cmd any) (any, error) {
	if id, ok := ctx.Value(tokenIDKey{}).(string); ok {
		if h, ok := cmd.(interface{ SetTokenID(string) }); ok {
			h.SetTokenID(id)
		}
	}
	actx, cancel := context.WithTimeout(ctx, s.applyTO)
	defer cancel()
	return s.b.Apply(actx, t, cmd)
}

// waitFor polls the local catalog until done returns true or ctx ends.
// createdStatus is the status of a create: 201, or with ?wait=1, 201 once
// done reports the object finished (ready or failed: the client reads its
// state), and 202 if it is still on its way when the wait ends.
func (s *apiServer) createdStatus(r *http.Request, wait bool, done func(st *fsm.State) bool) int {
	if !wait {
		return http.StatusCreated
	}
	ctx, cancel := s.ctx(r, s.waitTO)
	defer cancel()
	if err := s.waitFor(ctx, done); err != nil {
		return http.StatusAccepted
	}
	return http.StatusCreated
}

func (s *apiServer) waitFor(ctx context.Context, done func(st *fsm.State) bool) error {
	t := time.NewTicker(s.poll)
	defer t.Stop()
	for {
		var ok bool
		s.b.View(func(st *fsm.State) { ok = done(st) })
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// ---- handlers

func (s *apiServer) status(w http.ResponseWriter, r *http.Request) {
	si := s.b.Status()
	out := api.Status{Node: si.Node, Region: si.Region, RaftState: si.RaftState,
		Leader: si.Leader, LeaderAPI: si.LeaderAPI, Members: []api.Member{}, Hosts: []api.HostStatus{}, Pace: si.Pace,
		CatalogVersion: si.CatalogVersion, NodeCatalogVersion: si.NodeCatalogVersion}
	for _, m := range si.Members {
		out.Members = append(out.Members, api.Member(m))
	}
	s.b.View(func(st *fsm.State) {
		count := map[string]int{}
		for _, v := range st.Volumes() {
			count[v.Host]++
		}
		for _, h := range st.Hosts() {
			out.Hosts = append(out.Hosts, api.HostStatus{
				ID: h.ID, Region: h.Region, Backend: h.Backend, CanClone: h.CanClone, Alive: h.Alive,
				APIAddr: h.APIAddr, Budget: h.Budget, Used: st.Used(h.ID), Free: st.Free(h.ID),
				Volumes: count[h.ID],
			})
		}
	})
	writeJSON(w, http.StatusOK, out)
}

func (s *apiServer) listVolumes(w http.ResponseWriter, r *http.Request) {
	s.freshen(w, r)
	out := api.VolumeList{Volumes: []api.Volume{}}
	s.b.View(func(st *fsm.State) { out.Volumes = append(out.Volumes, st.Volumes()...) })
	writeJSON(w, http.StatusOK, out)
}

func (s *apiServer) getVolume(w http.ResponseWriter, r *http.Request) {
	synced := s.freshen(w, r) // read your writes made through any node
	ctx, cancel := s.ctx(r, s.reqTO)
	defer cancel()
	v, err := s.lookupVolume(ctx, r.PathValue("id"), synced)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func validateCreateVolume(req *api.CreateVolumeRequest) error {
	// cow's messages already name the field ("name \"X\" must ...").
	if err := cow.ValidateName(req.Name); err != nil {
		return badRequest("%v", err)
	}
	if err := cow.ValidateSize(req.Size); err != nil {
		return badRequest("%v", err)
	}
	if err := validateOptionalName("app", req.App); err != nil {
		return err
	}
	if err := validateOptionalName("host", req.Host); err != nil {
		return err
	}
	if err := validateOptionalName("region", req.Region); err != nil {
		return err
	}
	return validateTTL(req.TTLSeconds)
}

// validateTTL checks a ttl_seconds field: 0 (no expiry) or 1 s to about
// 100 years.
func validateTTL(secs int64) error {
	if secs < 0 || secs > api.MaxTTLSeconds {
		return badRequest("ttl_seconds: %d is out of range; want 0 (never expires) to %d (about 100 years)", secs, api.MaxTTLSeconds)
	}
	return nil
}

// ttlNanos is a validated ttl_seconds in the catalog's nanoseconds.
func ttlNanos(secs int64) int64 { return secs * int64(time.Second) }

func (s *apiServer) createVolume(w http.ResponseWriter, r *http.Request) {
	var req api.CreateVolumeRequest
	if err := decode(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	wait, err := queryBool(r, "wait")
	if err == nil {
		err = validateCreateVolume(&req)
	}
	rid, rerr := requestID(r, "volume")
	if err == nil {
		err = rerr
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	ctx, cancel := s.ctx(r, s.reqTO)
	defer cancel()
	cmd := &fsm.CreateVolumeCmd{
		Header: fsm.Header{RequestID: rid, Digest: requestDigest(rid, req)},
		Volume: fsm.Volume{ID: s.newID("vol_"), Name: req.Name, App: req.App, Host: req.Host,
			Size: req.Size, State: fsm.VolumeCreating},
		Region: req.Region,
		TTL:    ttlNanos(req.TTLSeconds),
	}
	res, err := s.apply(ctx, fsm.CmdCreateVolume, cmd)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	v, err := asVolume(res)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	status := s.createdStatus(r, wait, func(st *fsm.State) bool {
		cur, ok := st.Volume(v.ID)
		if ok {
			v = cur
		}
		return ok && (cur.State == fsm.VolumeReady || cur.State == fsm.VolumeFailed)
	})
	writeJSON(w, status, v)
}

func (s *apiServer) deleteVolume(w http.ResponseWriter, r *http.Request) {
	wait, err := queryBool(r, "wait")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	ctx, cancel := s.ctx(r, s.reqTO)
	defer cancel()
	v, err := s.lookupVolume(ctx, r.PathValue("id"), false)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if v, err = startDelete(ctx, s.b, v, s.applyTO); err != nil {
		s.fail(w, r, err)
		return
	}
	if wait {
		// Waits until the owning host removed the data and purged the record.
		wctx, wcancel := s.ctx(r, s.waitTO)
		defer wcancel()
		werr := s.waitFor(wctx, func(st *fsm.State) bool {
			_, ok := st.Volume(v.ID)
			return !ok
		})
		if werr == nil {
			writeJSON(w, http.StatusOK, v)
			return
		}
	}
	writeJSON(w, http.StatusAccepted, v)
}

// volumeDeleter is what startDelete needs: the API's backend and the
// leader's janitor both have it.
type volumeDeleter interface {
	Apply(ctx context.Context, t fsm.CommandType, cmd any) (any, error)
	VolumeOp(ctx context.Context, host, op, id string) (string, error)
}

// startDelete marks v deleting; its host's executor then removes the data
// and purges the record. An attached volume may be mounted and in use, so
// it is refused (cow.ErrBusy, naming the device). A host that does not
// answer cannot have it in use by anyone who can reach it: its executor
// removes the volume when it is back. applyTO bounds the catalog write.
func startDelete(ctx context.Context, b volumeDeleter, v fsm.Volume, applyTO time.Duration) (fsm.Volume, error) {
	if _, err := b.VolumeOp(ctx, v.Host, VolumeCheckRemove, v.ID); err != nil && !errors.Is(err, ErrHostUnreachable) {
		return v, err
	}
	actx, cancel := context.WithTimeout(ctx, applyTO)
	defer cancel()
	res, err := b.Apply(actx, fsm.CmdSetVolumeState, &fsm.SetVolumeStateCmd{ID: v.ID, State: fsm.VolumeDeleting})
	if err != nil {
		return v, err
	}
	if nv, err := asVolume(res); err == nil {
		return nv, nil
	}
	v.State = fsm.VolumeDeleting
	return v, nil
}

func (s *apiServer) setTTL(w http.ResponseWriter, r *http.Request) {
	var req api.SetTTLRequest
	if err := decode(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := validateTTL(req.TTLSeconds); err != nil {
		s.fail(w, r, err)
		return
	}
	ctx, cancel := s.ctx(r, s.reqTO)
	defer cancel()
	v, err := s.lookupVolume(ctx, r.PathValue("id"), false)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	res, err := s.apply(ctx, fsm.CmdSetVolumeTTL, &fsm.SetVolumeTTLCmd{ID: v.ID, TTL: ttlNanos(req.TTLSeconds)})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if v, err = asVolume(res); err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *apiServer) revokeToken(w http.ResponseWriter, r *http.Request) {
	var req api.RevokeTokenRequest
	if err := decode(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if !keys.ValidTokenID(req.ID) {
		// Never store what may be a secret pasted in the wrong place.
		s.fail(w, r, fmt.Errorf("%w: not a token id (%s, or tok_ and 16 hex digits); to revoke a token, pass the token itself to `forknode token revoke`",
			fsm.ErrInvalid, keys.ClusterTokenID))
		return
	}
	ctx, cancel := s.ctx(r, s.reqTO)
	defer cancel()
	already := false
	s.freshen(w, r)
	s.b.View(func(st *fsm.State) { already = st.TokenRevoked(req.ID) })
	if _, err := s.apply(ctx, fsm.CmdRevokeToken, &fsm.RevokeTokenCmd{ID: req.ID, Expires: req.Expires}); err != nil {
		s.fail(w, r, err)
		return
	}
	if !already {
		s.log.Info("API token revoked", "id", req.ID)
	}
	writeJSON(w, http.StatusOK, api.RevokeTokenResponse{ID: req.ID, Already: already})
}

func (s *apiServer) revokedTokens(w http.ResponseWriter, r *http.Request) {
	s.freshen(w, r)
	out := api.RevokedTokenList{Revoked: []api.RevokedToken{}}
	s.b.View(func(st *fsm.State) {
		for _, t := range st.RevokedTokens() {
			out.Revoked = append(out.Revoked, api.RevokedToken(t))
		}
	})
	writeJSON(w, http.StatusOK, out)
}

func (s *apiServer) attach(w http.ResponseWriter, r *http.Request) { s.attachDetach(w, r, true) }
func (s *apiServer) detach(w http.ResponseWriter, r *http.Request) { s.attachDetach(w, r, false) }

// attachDetach runs on the volume's host: locally, or through that host over
// the mTLS cluster port (see Node.VolumeOp).
func (s *apiServer) attachDetach(w http.ResponseWriter, r *http.Request, attach bool) {
	ctx, cancel := s.ctx(r, s.reqTO)
	defer cancel()
	v, err := s.lookupVolume(ctx, r.PathValue("id"), false)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if v.State != fsm.VolumeReady {
		// The caller may have seen it ready on a node ahead of this one
		// (an attach right after a fork): catch up before refusing.
		bctx, bcancel := context.WithTimeout(ctx, barrierTimeout)
		if err := s.b.Barrier(bctx); err == nil {
			s.b.View(func(st *fsm.State) {
				if cur, ok := st.Volume(v.ID); ok {
					v = cur
				}
			})
		}
		bcancel()
	}
	if v.State != fsm.VolumeReady {
		s.fail(w, r, fmt.Errorf("volume %s is %s, not ready: %w", v.ID, v.State, fsm.ErrConflict))
		return
	}
	op := VolumeDetach
	if attach {
		op = VolumeAttach
	}
	dev, err := s.b.VolumeOp(ctx, v.Host, op, v.ID)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, api.AttachResponse{Volume: v, Host: v.Host, Device: dev})
}

func validateCreateFork(req *api.CreateForkRequest) error {
	if req.Source == "" {
		return badRequest("source: empty; name a volume (name or id), an app, or app:vol_id")
	}
	if len(req.Source) > 200 {
		return badRequest("source: %d characters, at most 200 allowed", len(req.Source))
	}
	if err := cow.ValidateName(req.Name); err != nil {
		return badRequest("%v", err)
	}
	switch fsm.Path(req.Via) {
	case "", fsm.PathClone, fsm.PathCopy, fsm.PathReplica, fsm.PathStream:
	default:
		return badRequest("via: %q is not a fork path; want clone, copy, replica or stream", req.Via)
	}
	for _, f := range []struct{ field, v string }{{"app", req.App}, {"host", req.Host}, {"region", req.Region}} {
		if err := validateOptionalName(f.field, f.v); err != nil {
			return err
		}
	}
	if req.RateLimit != 0 && req.RateLimit < api.MinForkRateLimit {
		return badRequest("rate_limit: %d bytes/s is below the minimum of %d (256 KiB/s); 0 leaves only the hosts' limits", req.RateLimit, api.MinForkRateLimit)
	}
	return validateTTL(req.TTLSeconds)
}

func (s *apiServer) createFork(w http.ResponseWriter, r *http.Request) {
	var req api.CreateForkRequest
	if err := decode(w, r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	wait, err := queryBool(r, "wait")
	if err == nil {
		err = validateCreateFork(&req)
	}
	rid, rerr := requestID(r, "fork")
	if err == nil {
		err = rerr
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	ctx, cancel := s.ctx(r, s.reqTO)
	defer cancel()
	cmd := &fsm.CreateForkCmd{
		Header:         fsm.Header{RequestID: rid, Digest: requestDigest(rid, req)},
		ForkID:         s.newID("fork_"),
		TargetVolumeID: s.newID("vol_"),
		Request: fsm.ForkRequest{Source: req.Source, Name: req.Name, Host: req.Host,
			Region: req.Region, Via: fsm.Path(req.Via), App: req.App, RateLimit: req.RateLimit,
			TTL: ttlNanos(req.TTLSeconds)},
	}
	res, err := s.apply(ctx, fsm.CmdCreateFork, cmd)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	f, err := asFork(res)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	status := s.createdStatus(r, wait, func(st *fsm.State) bool {
		cur, ok := st.Fork(f.ID)
		if ok {
			f = cur
		}
		return ok && cur.Finished()
	})
	writeJSON(w, status, api.Derive(f))
}

func (s *apiServer) listForks(w http.ResponseWriter, r *http.Request) {
	s.freshen(w, r)
	out := api.ForkList{Forks: []api.Fork{}}
	s.b.View(func(st *fsm.State) {
		for _, f := range st.Forks() {
			out.Forks = append(out.Forks, api.Derive(f))
		}
	})
	writeJSON(w, http.StatusOK, out)
}

func (s *apiServer) getFork(w http.ResponseWriter, r *http.Request) {
	stale, err := queryBool(r, "stale")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// Without the barrier, `forks show` on one node could still say running
	// after `fork --wait` on another said ready. ?stale=1 is for pollers:
	// a fork's state only moves forward, so a lagging answer just comes
	// later, and a poll need not cost the leader a raft write.
	synced := !stale && s.freshen(w, r)
	ctx, cancel := s.ctx(r, s.reqTO)
	defer cancel()
	f, err := s.lookupFork(ctx, r.PathValue("id"), synced)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, api.Derive(f))
}

// cancelFork stops a fork in flight by failing it in the catalog, the same
// way the leader fails a fork whose host died: the target's executor then
// cancels its task and removes the target volume, and the source releases
// its stream snapshot. A failed fork is answered as is, with already set (a
// retried cancel is not an error, but a script should know it did
// nothing); a ready one is refused, since its volume is now the operator's
// to remove.
func (s *apiServer) cancelFork(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := s.ctx(r, s.reqTO)
	defer cancel()
	// Catch up first: a fork this node still sees running may have been
	// cancelled through another node, and the answer says whether this
	// call is the one that ended it.
	bctx, bcancel := context.WithTimeout(ctx, barrierTimeout)
	synced := s.b.Barrier(bctx) == nil
	bcancel()
	f, err := s.lookupFork(ctx, r.PathValue("id"), synced)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	already := f.Finished()
	if !already {
		res, err := s.apply(ctx, fsm.CmdFinishFork, &fsm.FinishForkCmd{ForkID: f.ID, OK: false, Error: api.ForkCancelledError})
		if err != nil {
			s.fail(w, r, err)
			return
		}
		// A fork that finished between the lookup and the apply comes back
		// unchanged, ready or failed: answer for what it is now. Only a
		// cancel records this error, and none had when we looked.
		if f, err = asFork(res); err != nil {
			s.fail(w, r, err)
			return
		}
		already = f.State != fsm.ForkFailed || f.Error != api.ForkCancelledError
		if !already {
			s.log.Info("fork cancelled by the operator", "fork", f.ID, "target", f.TargetVolume, "host", f.TargetHost)
		}
	}
	if f.State == fsm.ForkReady {
		s.fail(w, r, fmt.Errorf("%w: fork %s is already ready; remove its volume with `forknode volume rm %s` instead",
			fsm.ErrConflict, f.ID, f.Name))
		return
	}
	writeJSON(w, http.StatusOK, api.CancelForkResponse{Fork: api.Derive(f), Already: already})
}

// removeNode removes a dead node for good. Dead nodes are never removed
// automatically (they may come back, and removal needs a quorum).
func (s *apiServer) removeNode(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := s.ctx(r, s.reqTO)
	defer cancel()
	name := r.PathValue("name")
	if err := s.b.RemoveMember(ctx, name); err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"removed": name})
}
