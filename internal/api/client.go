package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// DefaultTimeout bounds one request when the caller's context has no deadline.
const DefaultTimeout = 30 * time.Second

// Client talks to one forknode node. Any node answers any request: writes
// are forwarded to the leader by the node.
type Client struct {
	base  *url.URL
	token string
	http  *http.Client
	// Timeout bounds each request whose context has no deadline (0: none).
	Timeout time.Duration
	// OnStale, when set, is called for an answer the node served from a
	// catalog it could not bring up to date with the leader
	// (StaleHeader): it may miss the latest changes.
	OnStale func(method, path string)
}

// StaleHeader marks an answer served from a catalog that could not catch
// up with the leader.
const StaleHeader = "X-Forknode-Stale"

// NewClient returns a client for addr ("host:port" or an http:// URL) with
// bearer token.
func NewClient(addr, token string) (*Client, error) {
	if addr == "" {
		return nil, errors.New("no API address given")
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil {
		return nil, fmt.Errorf("bad API address %q: %w", addr, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("bad API address %q: scheme must be http or https", addr)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("bad API address %q: no host", addr)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	return &Client{
		base:    u,
		token:   token,
		http:    &http.Client{Transport: http.DefaultTransport},
		Timeout: DefaultTimeout,
	}, nil
}

// SetTransport replaces the HTTP transport (tests dial into network
// namespaces with it).
func (c *Client) SetTransport(rt http.RoundTripper) { c.http = &http.Client{Transport: rt} }

// HasTLSConfig reports whether the transport carries its own TLS settings
// (a CA to verify the node with), rather than the system's.
func (c *Client) HasTLSConfig() bool {
	tr, ok := c.http.Transport.(*http.Transport)
	return ok && tr.TLSClientConfig != nil
}

// BaseURL is the node's base URL.
func (c *Client) BaseURL() string { return c.base.String() }

// Do sends one request: body (if non-nil) is JSON-encoded, a 2xx response is
// decoded into out (if non-nil), anything else becomes an *Error. headers
// are added as given.
func (c *Client) Do(ctx context.Context, method, path string, body, out any, headers map[string]string) error {
	if _, ok := ctx.Deadline(); !ok && c.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Timeout)
		defer cancel()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	// path is already escaped by the callers (esc), so it is appended as is.
	req, err := http.NewRequestWithContext(ctx, method, c.base.String()+path, rd)
	if err != nil {
		return fmt.Errorf("bad request path %q: %w", path, err)
	}
	u := req.URL
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		// *url.Error repeats the method and URL this message already gives.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("%s %s: %w", method, u.Redacted(), err)
	}
	defer resp.Body.Close()
	if c.OnStale != nil && resp.Header.Get(StaleHeader) == "true" {
		c.OnStale(method, path)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read response: %w", method, u.Redacted(), err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return decodeError(resp.StatusCode, data)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decode response: %w", method, u.Redacted(), err)
	}
	return nil
}

func decodeError(status int, data []byte) error {
	var eb ErrorBody
	if err := json.Unmarshal(data, &eb); err == nil && (eb.Error != "" || eb.Code != "") {
		return &Error{Status: status, Code: eb.Code, Message: eb.Error}
	}
	// Not our JSON (a proxy, or not a forknode node): keep a bounded excerpt.
	msg := strings.TrimSpace(string(data))
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	if msg == "" {
		msg = http.StatusText(status)
	}
	if status == http.StatusBadRequest && strings.Contains(msg, "HTTP request to an HTTPS server") {
		msg += " (the node serves its API over TLS, --api-tls: use an https:// address)"
	}
	return &Error{Status: status, Code: codeForStatus(status), Message: fmt.Sprintf("HTTP %d: %s", status, msg)}
}

func codeForStatus(status int) string {
	switch status {
	case http.StatusBadRequest:
		return CodeInvalid
	case http.StatusUnauthorized, http.StatusForbidden:
		return CodeUnauthorized
	case http.StatusNotFound:
		return CodeNotFound
	case http.StatusMethodNotAllowed:
		return CodeMethodNotAllowed
	case http.StatusConflict:
		return CodeConflict
	case http.StatusRequestEntityTooLarge:
		return CodeTooLarge
	case http.StatusServiceUnavailable:
		return CodeUnavailable
	}
	return CodeInternal
}

func esc(s string) string { return url.PathEscape(s) }

// Status returns the node's view of the cluster and per-host capacity.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var s Status
	if err := c.Do(ctx, http.MethodGet, "/v1/status", nil, &s, nil); err != nil {
		return nil, err
	}
	return &s, nil
}

// Volumes lists the catalog's volumes.
func (c *Client) Volumes(ctx context.Context) ([]Volume, error) {
	var l VolumeList
	if err := c.Do(ctx, http.MethodGet, "/v1/volumes", nil, &l, nil); err != nil {
		return nil, err
	}
	return l.Volumes, nil
}

// Volume returns one volume by id or name.
func (c *Client) Volume(ctx context.Context, idOrName string) (*Volume, error) {
	var v Volume
	if err := c.Do(ctx, http.MethodGet, "/v1/volumes/"+esc(idOrName), nil, &v, nil); err != nil {
		return nil, err
	}
	return &v, nil
}

// CreateVolume creates a volume. With wait, the server answers once the
// owning host made it ready (or it failed).
func (c *Client) CreateVolume(ctx context.Context, req CreateVolumeRequest, wait bool) (*Volume, error) {
	p := "/v1/volumes"
	if wait {
		p += "?wait=1"
	}
	var v Volume
	if err := c.Do(ctx, http.MethodPost, p, req, &v, nil); err != nil {
		return nil, err
	}
	return &v, nil
}

// DeleteVolume marks a volume deleting; its host removes the data.
func (c *Client) DeleteVolume(ctx context.Context, idOrName string) (*Volume, error) {
	var v Volume
	if err := c.Do(ctx, http.MethodDelete, "/v1/volumes/"+esc(idOrName), nil, &v, nil); err != nil {
		return nil, err
	}
	return &v, nil
}

// SetTTL makes a volume expire ttl from now (rounded down to whole
// seconds), or never with ttl 0.
func (c *Client) SetTTL(ctx context.Context, idOrName string, ttl time.Duration) (*Volume, error) {
	var v Volume
	req := SetTTLRequest{TTLSeconds: int64(ttl / time.Second)}
	if err := c.Do(ctx, http.MethodPost, "/v1/volumes/"+esc(idOrName)+"/ttl", req, &v, nil); err != nil {
		return nil, err
	}
	return &v, nil
}

// RevokeToken revokes an API token by id until exp (unix seconds; 0: for
// ever). Every node refuses it once the revocation has replicated.
func (c *Client) RevokeToken(ctx context.Context, id string, exp int64) (*RevokeTokenResponse, error) {
	var out RevokeTokenResponse
	if err := c.Do(ctx, http.MethodPost, "/v1/tokens/revoke", RevokeTokenRequest{ID: id, Expires: exp}, &out, nil); err != nil {
		return nil, err
	}
	return &out, nil
}

// RevokedTokens lists the catalog's revocations.
func (c *Client) RevokedTokens(ctx context.Context) ([]RevokedToken, error) {
	var out RevokedTokenList
	if err := c.Do(ctx, http.MethodGet, "/v1/tokens/revoked", nil, &out, nil); err != nil {
		return nil, err
	}
	return out.Revoked, nil
}

// RemoveNode removes a dead node from the cluster for good (raft voters and
// catalog). An alive node is refused: stopping it makes it leave.
func (c *Client) RemoveNode(ctx context.Context, name string) error {
	return c.Do(ctx, http.MethodDelete, "/v1/nodes/"+esc(name), nil, nil, nil)
}

// Attach exposes a volume as a block device on its host.
func (c *Client) Attach(ctx context.Context, idOrName string) (*AttachResponse, error) {
	var r AttachResponse
	if err := c.Do(ctx, http.MethodPost, "/v1/volumes/"+esc(idOrName)+"/attach", nil, &r, nil); err != nil {
		return nil, err
	}
	return &r, nil
}

// Detach removes the volume's block device on its host.
func (c *Client) Detach(ctx context.Context, idOrName string) (*AttachResponse, error) {
	var r AttachResponse
	if err := c.Do(ctx, http.MethodPost, "/v1/volumes/"+esc(idOrName)+"/detach", nil, &r, nil); err != nil {
		return nil, err
	}
	return &r, nil
}

// CreateFork asks for a fork. A non-empty idempotencyKey makes retries safe:
// the same key returns the first fork instead of making another.
func (c *Client) CreateFork(ctx context.Context, req CreateForkRequest, idempotencyKey string) (*Fork, error) {
	var h map[string]string
	if idempotencyKey != "" {
		h = map[string]string{IdempotencyHeader: idempotencyKey}
	}
	var f Fork
	if err := c.Do(ctx, http.MethodPost, "/v1/forks", req, &f, h); err != nil {
		return nil, err
	}
	return &f, nil
}

// Forks lists forks.
func (c *Client) Forks(ctx context.Context) ([]Fork, error) {
	var l ForkList
	if err := c.Do(ctx, http.MethodGet, "/v1/forks", nil, &l, nil); err != nil {
		return nil, err
	}
	return l.Forks, nil
}

// Fork returns one fork by id.
func (c *Client) Fork(ctx context.Context, id string) (*Fork, error) {
	var f Fork
	if err := c.Do(ctx, http.MethodGet, "/v1/forks/"+esc(id), nil, &f, nil); err != nil {
		return nil, err
	}
	return &f, nil
}

// ForkCancelledError is the error a fork records when an operator cancels
// it (POST /v1/forks/{id}/cancel).
const ForkCancelledError = "cancelled by the operator"

// CancelFork stops a fork in flight: the fork ends failed, its host removes
// the target volume and the source releases its snapshot, all
// asynchronously. Cancelling a failed fork returns it unchanged, with
// Already set; a ready fork is refused with CodeConflict (remove its volume
// instead), and an unknown one with CodeNotFound.
func (c *Client) CancelFork(ctx context.Context, id string) (*CancelForkResponse, error) {
	var f CancelForkResponse
	if err := c.Do(ctx, http.MethodPost, "/v1/forks/"+esc(id)+"/cancel", nil, &f, nil); err != nil {
		return nil, err
	}
	return &f, nil
}

// WaitFork polls a fork every interval until it is ready or failed, calling
// progress (if non-nil) with each observation. A failed fork is returned
// with an error carrying its message. Transient errors (no leader, timeout)
// are retried until ctx ends.
func (c *Client) WaitFork(ctx context.Context, id string, interval time.Duration, progress func(Fork)) (*Fork, error) {
	if interval <= 0 {
		interval = 500 * time.Millisecond
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		// Polls read the node's own catalog (?stale=1): states only move
		// forward, so the answer is never wrong, at most a moment late,
		// and polling costs the leader nothing.
		var f *Fork
		err := c.Do(ctx, http.MethodGet, "/v1/forks/"+esc(id)+"?stale=1", nil, &f, nil)
		switch {
		case err == nil:
			if progress != nil {
				progress(*f)
			}
			if f.State == "failed" {
				return f, fmt.Errorf("fork %s failed: %s", f.ID, f.Error)
			}
			if f.Finished() {
				return f, nil
			}
		case IsCode(err, CodeNoLeader) || IsCode(err, CodeTimeout) || IsCode(err, CodeUnavailable):
			// keep polling: a leader election is not a fork failure
		default:
			return nil, err
		}
		select {
		case <-ctx.Done():
			return f, fmt.Errorf("waiting for fork %s: %w", id, ctx.Err())
		case <-t.C:
		}
	}
}
