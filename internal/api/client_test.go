package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/fsm"
)

func TestHTTPClientAddr(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		bad      bool
	}{
		{in: "127.0.0.1:7400", want: "http://127.0.0.1:7400"},
		{in: "http://127.0.0.1:7400/", want: "http://127.0.0.1:7400"},
		{in: "https://example.test", want: "https://example.test"},
		{in: "", bad: true},
		{in: "ftp://x", bad: true},
		{in: "http://", bad: true},
	} {
		c, err := NewClient(tc.in, "tok")
		if tc.bad {
			if err == nil {
				t.Errorf("NewClient(%q): want error", tc.in)
			}
			continue
		}
		if err != nil {
			t.Fatalf("NewClient(%q): %v", tc.in, err)
		}
		if got := c.BaseURL(); got != tc.want {
			t.Errorf("NewClient(%q).BaseURL() = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestHTTPClientErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/volumes/missing":
			w.WriteHeader(404)
			json.NewEncoder(w).Encode(ErrorBody{Error: `volume "missing": not found`, Code: CodeNotFound})
		case "/v1/volumes/proxy":
			w.WriteHeader(502)
			w.Write([]byte("<html>bad gateway</html>"))
		case "/v1/volumes/garbage":
			w.Write([]byte("{not json"))
		default:
			w.WriteHeader(401)
			json.NewEncoder(w).Encode(ErrorBody{Error: "bad token", Code: CodeUnauthorized})
		}
	}))
	defer srv.Close()
	c, err := NewClient(srv.URL, "tok")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	_, err = c.Volume(ctx, "missing")
	var ae *Error
	if !errors.As(err, &ae) || ae.Status != 404 || ae.Code != CodeNotFound || !strings.Contains(ae.Message, "missing") {
		t.Fatalf("404: got %#v", err)
	}
	if !IsCode(err, CodeNotFound) || IsCode(err, CodeExists) {
		t.Fatal("IsCode mismatch")
	}
	_, err = c.Volume(ctx, "proxy")
	if !errors.As(err, &ae) || ae.Status != 502 || ae.Code != CodeInternal || !strings.Contains(ae.Message, "bad gateway") {
		t.Fatalf("502: got %#v", err)
	}
	_, err = c.Volume(ctx, "garbage")
	if err == nil || !strings.Contains(err.Error(), "decode response") {
		t.Fatalf("garbage 200: got %v", err)
	}
	_, err = c.Status(ctx)
	if !IsCode(err, CodeUnauthorized) {
		t.Fatalf("401: got %v", err)
	}
}

func TestHTTPClientSendsTokenBodyAndIdempotencyKey(t *testing.T) {
	var gotAuth, gotKey, gotPath, gotQuery string
	var gotBody CreateForkRequest
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth = r.Header.Get("Authorization")
		gotKey = r.Header.Get(IdempotencyHeader)
		gotPath, gotQuery = r.URL.EscapedPath(), r.URL.RawQuery
		if r.Method == http.MethodPost && r.URL.Path == "/v1/forks" {
			json.NewDecoder(r.Body).Decode(&gotBody)
		}
		w.WriteHeader(201)
		json.NewEncoder(w).Encode(Fork{Fork: fsm.Fork{ID: "fork_1", Name: gotBody.Name, State: fsm.ForkPending}})
	}))
	defer srv.Close()
	c, _ := NewClient(srv.URL, "s3cret")
	f, err := c.CreateFork(context.Background(), CreateForkRequest{Source: "db", Name: "pr-1", Via: "stream"}, "key-1")
	if err != nil {
		t.Fatal(err)
	}
	if gotAuth != "Bearer s3cret" || gotKey != "key-1" || gotBody.Source != "db" || gotBody.Via != "stream" {
		t.Fatalf("request: auth=%q key=%q body=%+v", gotAuth, gotKey, gotBody)
	}
	if f.ID != "fork_1" || f.Name != "pr-1" {
		t.Fatalf("response: %+v", f)
	}
	if _, err := c.CreateVolume(context.Background(), CreateVolumeRequest{Name: "a", Size: 4096}, true); err != nil {
		t.Fatal(err)
	}
	if gotPath != "/v1/volumes" || gotQuery != "wait=1" {
		t.Fatalf("wait create: path=%q query=%q", gotPath, gotQuery)
	}
	c.Volume(context.Background(), "a/b")
	if gotPath != "/v1/volumes/a%2Fb" {
		t.Fatalf("escaped path = %q", gotPath)
	}
}

func TestHTTPClientTimeout(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(block)
	c, _ := NewClient(srv.URL, "t")
	c.Timeout = 100 * time.Millisecond
	start := time.Now()
	_, err := c.Status(context.Background())
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want deadline exceeded, got %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("timeout took %s", d)
	}
}

func TestHTTPClientWaitFork(t *testing.T) {
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		f := Fork{Fork: fsm.Fork{ID: "fork_1", State: fsm.ForkRunning, BytesDone: int64(calls), BytesTotal: 3}}
		switch {
		case r.URL.Path == "/v1/forks/fork_bad":
			f.ID, f.State, f.Error = "fork_bad", fsm.ForkFailed, "source host died"
		case calls == 1:
			w.WriteHeader(503)
			json.NewEncoder(w).Encode(ErrorBody{Error: "no leader", Code: CodeNoLeader})
			return
		case calls >= 3:
			f.State = fsm.ForkReady
		}
		json.NewEncoder(w).Encode(f)
	}))
	defer srv.Close()
	c, _ := NewClient(srv.URL, "t")
	var seen []int64
	f, err := c.WaitFork(context.Background(), "fork_1", time.Millisecond, func(f Fork) { seen = append(seen, f.BytesDone) })
	if err != nil || f.State != fsm.ForkReady {
		t.Fatalf("WaitFork: %v %+v", err, f)
	}
	if len(seen) != 2 || seen[1] != 3 {
		t.Fatalf("progress calls: %v", seen)
	}
	_, err = c.WaitFork(context.Background(), "fork_bad", time.Millisecond, nil)
	if err == nil || !strings.Contains(err.Error(), "source host died") {
		t.Fatalf("failed fork: %v", err)
	}
}

func TestHTTPDerive(t *testing.T) {
	s := int64(time.Second)
	for _, tc := range []struct {
		name             string
		f                fsm.Fork
		pct, ratio, rate float64
		eta              float64
	}{
		{"pending", fsm.Fork{State: fsm.ForkPending, BytesTotal: 100, CreatedAt: s, UpdatedAt: s}, 0, 0, 0, 0},
		{"running stream", fsm.Fork{State: fsm.ForkRunning, BytesDone: 50 << 20, BytesTotal: 100 << 20, WireBytes: 10 << 20, CreatedAt: s, UpdatedAt: 6 * s}, 50, 5, 10 << 20, 5},
		{"stream start: wire before done", fsm.Fork{State: fsm.ForkRunning, BytesDone: 0, BytesTotal: 100 << 20, WireBytes: 100 << 10, CreatedAt: s, UpdatedAt: 2 * s}, 0, 0, 0, 0},
		{"little done yet", fsm.Fork{State: fsm.ForkRunning, BytesDone: 512 << 10, BytesTotal: 1 << 30, WireBytes: 128 << 10, CreatedAt: s, UpdatedAt: 2 * s}, 100 * float64(512<<10) / (1 << 30), 0, 512 << 10, 2047},
		{"empty volume: header only", fsm.Fork{State: fsm.ForkReady, BytesDone: 1 << 30, BytesTotal: 1 << 30, WireBytes: 964, CreatedAt: s, FinishedAt: 2 * s}, 100, 0, 1 << 30, 0},
		{"wire ahead of done while running", fsm.Fork{State: fsm.ForkRunning, BytesDone: 4 << 20, BytesTotal: 64 << 20, WireBytes: 6 << 20, CreatedAt: s, UpdatedAt: 2 * s}, 6.25, 0, 4 << 20, 15},
		{"ratio at the thresholds", fsm.Fork{State: fsm.ForkReady, BytesDone: minRatioBytesDone, BytesTotal: minRatioBytesDone, WireBytes: minRatioWireBytes, CreatedAt: s, FinishedAt: 2 * s}, 100, 16, minRatioBytesDone, 0},
		{"ready uses finish time", fsm.Fork{State: fsm.ForkReady, BytesDone: 100, BytesTotal: 100, CreatedAt: s, UpdatedAt: 2 * s, FinishedAt: 3 * s}, 100, 0, 50, 0},
		{"clamped percent", fsm.Fork{State: fsm.ForkRunning, BytesDone: 200, BytesTotal: 100, CreatedAt: s, UpdatedAt: 2 * s}, 100, 0, 200, 0},
	} {
		d := Derive(tc.f)
		if d.Percent != tc.pct || d.CompressionRatio != tc.ratio || d.RateBytesPerSec != tc.rate || d.ETASeconds != tc.eta {
			t.Errorf("%s: got pct=%v ratio=%v rate=%v eta=%v", tc.name, d.Percent, d.CompressionRatio, d.RateBytesPerSec, d.ETASeconds)
		}
	}
	// The embedded fork's fields stay flat in JSON.
	b, _ := json.Marshal(Derive(fsm.Fork{ID: "fork_x", State: fsm.ForkReady, BytesDone: 4 << 20, WireBytes: 2 << 20}))
	if !strings.Contains(string(b), `"id":"fork_x"`) || !strings.Contains(string(b), `"compression_ratio":2`) {
		t.Fatalf("json: %s", b)
	}
	// No ratio yet: the field is absent, not 0 or a million.
	b, _ = json.Marshal(Derive(fsm.Fork{ID: "fork_y", BytesDone: 1 << 30, WireBytes: 964}))
	if strings.Contains(string(b), "compression_ratio") {
		t.Fatalf("json carries a meaningless ratio: %s", b)
	}
}

func TestHTTPClientCancelFork(t *testing.T) {
	var gotMethod, gotPath string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotMethod, gotPath = r.Method, r.URL.EscapedPath()
		switch r.URL.Path {
		case "/v1/forks/fork_1/cancel":
			json.NewEncoder(w).Encode(Derive(fsm.Fork{ID: "fork_1", State: fsm.ForkFailed, Error: ForkCancelledError}))
		case "/v1/forks/fork_2/cancel":
			json.NewEncoder(w).Encode(CancelForkResponse{Fork: Derive(fsm.Fork{ID: "fork_2", State: fsm.ForkFailed, Error: ForkCancelledError, BytesTotal: 4 << 20, BytesDone: 1 << 20}), Already: true})
		case "/v1/forks/fork_ready/cancel":
			w.WriteHeader(409)
			json.NewEncoder(w).Encode(ErrorBody{Error: "conflict: fork fork_ready is already ready", Code: CodeConflict})
		default:
			w.WriteHeader(404)
			json.NewEncoder(w).Encode(ErrorBody{Error: "not found", Code: CodeNotFound})
		}
	}))
	defer srv.Close()
	c, _ := NewClient(srv.URL, "t")
	ctx := context.Background()
	f, err := c.CancelFork(ctx, "fork_1")
	if err != nil || gotMethod != http.MethodPost || f.State != fsm.ForkFailed || f.Error != ForkCancelledError || f.Already {
		t.Fatalf("cancel: %v %s %+v", err, gotMethod, f)
	}
	// The fork's fields and the derived ones decode beside "already".
	if f, err := c.CancelFork(ctx, "fork_2"); err != nil || !f.Already || f.ID != "fork_2" || f.Percent != 25 {
		t.Fatalf("cancel of a cancelled fork: %v %+v", err, f)
	}
	if _, err := c.CancelFork(ctx, "fork_ready"); !IsCode(err, CodeConflict) || !strings.Contains(err.Error(), "already ready") {
		t.Fatalf("ready: %v", err)
	}
	if _, err := c.CancelFork(ctx, "a/b"); !IsCode(err, CodeNotFound) || gotPath != "/v1/forks/a%2Fb/cancel" {
		t.Fatalf("escaped id: %v path=%q", err, gotPath)
	}
}

func TestDecodeErrorHints(t *testing.T) {
	for _, tc := range []struct {
		status int
		body   string
		want   string
	}{
		{400, "Client sent an HTTP request to an HTTPS server.\n", "use an https:// address"},
		{502, "<html>bad gateway</html>", "HTTP 502: <html>bad gateway</html>"},
		{409, `{"error":"no host has room","code":"no_room"}`, "no host has room"},
	} {
		err := decodeError(tc.status, []byte(tc.body))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("decodeError(%d, %q) = %v, want %q", tc.status, tc.body, err, tc.want)
		}
	}
}
