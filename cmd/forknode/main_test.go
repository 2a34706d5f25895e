package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/api"
	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/keys"
)

// capture runs forknode with args and returns exit code, stdout, stderr.
func capture(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	oldOut, oldErr := os.Stdout, os.Stderr
	ro, wo, _ := os.Pipe()
	re, we, _ := os.Pipe()
	os.Stdout, os.Stderr = wo, we
	outc, errc := make(chan string), make(chan string)
	go func() { b, _ := io.ReadAll(ro); outc <- string(b) }()
	go func() { b, _ := io.ReadAll(re); errc <- string(b) }()
	code := run(args)
	wo.Close()
	we.Close()
	os.Stdout, os.Stderr = oldOut, oldErr
	return code, <-outc, <-errc
}

func TestUsageAndExitCodes(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		code    int
		out     string
		errText string
	}{
		{args: nil, code: 2, errText: "Commands:"},
		{args: []string{"help"}, code: 0, out: "fork"},
		{args: []string{"-h"}, code: 0, out: "volume"},
		{args: []string{"version"}, code: 0, out: "forknode"},
		{args: []string{"frobnicate"}, code: 2, errText: `forknode: unknown command "frobnicate"`},
		{args: []string{"agent"}, code: 2, errText: "forknode keygen"},
		{args: []string{"agent", "--key", "k", "--codec", "lz4"}, code: 2, errText: "--codec"},
		{args: []string{"agent", "--bogus"}, code: 2, errText: "flag provided but not defined"},
		{args: []string{"agent", "--key", "k", "--fork-retention", "-1h"}, code: 2, errText: "--fork-retention -1h0m0s is negative"},
		{args: []string{"agent", "--key", "k", "--sweep-interval", "1ms"}, code: 2, errText: "--sweep-interval 1ms"},
		{args: []string{"agent", "--key", "k", "--fork-retention", "7days"}, code: 2, errText: `"7days": want a duration such as`},
		{args: []string{"agent", "--key", "k", "--name", "Bad!"}, code: 2, errText: `--name "Bad!": character '!'`},
		{args: []string{"agent", "--key", "k", "--region", "eu west"}, code: 2, errText: `--region "eu west"`},
		{args: []string{"agent", "--key", "k", "--name", "n", "--data-dir", "/nonexistent/forknode", "--bootstrap-expect", "0"}, code: 2, errText: "no --join"},
		{args: []string{"token", "bogus"}, code: 2, errText: "unknown subcommand"},
		{args: []string{"volume"}, code: 2, errText: "want a subcommand"},
		{args: []string{"volume", "create", "x", "--token", "t"}, code: 2, errText: "--size is required"},
		{args: []string{"volume", "create", "x", "--size", "0", "--token", "t"}, code: 2, errText: "--size must be positive"},
		{args: []string{"volume", "create", "x", "--size", "0GiB", "--token", "t"}, code: 2, errText: "--size must be positive"},
		{args: []string{"volume", "create", "x", "--size", "1 parsec", "--token", "t"}, code: 2, errText: "unknown unit"},
		{args: []string{"fork", "only-source", "--token", "t"}, code: 2, errText: "want SOURCE NAME"},
		{args: []string{"forks", "explode"}, code: 2, errText: "unknown subcommand"},
		{args: []string{"forks", "help"}, code: 0, out: "forknode forks cancel ID [--json] [--wait]"},
		{args: []string{"help"}, code: 0, out: "forks cancel ID"},
		{args: []string{"help"}, code: 0, out: "rm, attach, detach, expire\n"},
		{args: []string{"token"}, code: 2, errText: "--key FILE is required"},
		{args: []string{"token", "--key", "/nonexistent/k"}, code: 1, errText: "forknode keygen"},
	} {
		t.Setenv("FORKNODE_TOKEN", "")
		code, out, errOut := capture(t, tc.args...)
		if code != tc.code || !strings.Contains(out, tc.out) || !strings.Contains(errOut, tc.errText) {
			t.Errorf("forknode %v: code %d (want %d)\nstdout: %s\nstderr: %s", tc.args, code, tc.code, out, errOut)
		}
	}
}

func TestStatusNeedsToken(t *testing.T) {
	t.Setenv("FORKNODE_TOKEN", "")
	code, _, errOut := capture(t, "status", "--addr", "127.0.0.1:1")
	if code != 2 || !strings.Contains(errOut, "FORKNODE_TOKEN") {
		t.Fatalf("code %d: %s", code, errOut)
	}
}

func TestKeygenToken(t *testing.T) {
	dir := t.TempDir()
	k := filepath.Join(dir, "cluster.key")
	code, out, errOut := capture(t, "keygen", "-o", k)
	if code != 0 || !strings.Contains(out, "fingerprint") || !strings.Contains(out, "FORKNODE_TOKEN") {
		t.Fatalf("keygen: %d %s %s", code, out, errOut)
	}
	st, err := os.Stat(k)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", err, st.Mode())
	}
	before, _ := os.ReadFile(k)
	if code, _, errOut := capture(t, "keygen", "-o", k); code != 1 || !strings.Contains(errOut, "--force") {
		t.Fatalf("overwrite without --force: %d %s", code, errOut)
	}
	if after, _ := os.ReadFile(k); string(after) != string(before) {
		t.Fatal("key file changed without --force")
	}
	if code, _, _ := capture(t, "keygen", "-o", k, "--force"); code != 0 {
		t.Fatal("--force failed")
	}
	// A missing directory is named, not the temp file the key goes through.
	missing := filepath.Join(dir, "sub", "dir")
	if code, _, errOut := capture(t, "keygen", "-o", filepath.Join(missing, "k.key")); code != 1 ||
		!strings.Contains(errOut, "directory "+missing+" does not exist") || strings.Contains(errOut, ".key-") {
		t.Fatalf("keygen into a missing dir: %d %s", code, errOut)
	}
	if code, _, errOut := capture(t, "keygen", "-o", filepath.Join(k, "k.key")); code != 1 || !strings.Contains(errOut, k+" is not a directory") {
		t.Fatalf("keygen under a file: %d %s", code, errOut)
	}
	m, err := keys.Load(k)
	if err != nil {
		t.Fatal(err)
	}
	code, out, _ = capture(t, "token", "--key", k)
	if code != 0 || strings.TrimSpace(out) != m.APIToken() {
		t.Fatalf("token: %d %q", code, out)
	}
	// --token-file accepts the key file itself, or a file with the token.
	if tok, err := readTokenFile(k); err != nil || tok != m.APIToken() {
		t.Fatalf("token file (key): %v %q", err, tok)
	}
	tf := filepath.Join(dir, "tok")
	os.WriteFile(tf, []byte(m.APIToken()+"\n"), 0o600)
	if tok, err := readTokenFile(tf); err != nil || tok != m.APIToken() {
		t.Fatalf("token file: %v %q", err, tok)
	}
}

func TestParseInterspersed(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	size := fs.String("size", "", "")
	wait := fs.Bool("wait", false, "")
	pos, err := parseInterspersed(fs, []string{"create", "db", "--size", "1GiB", "extra", "--wait", "--", "--literal"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(pos, ",") != "create,db,extra,--literal" || *size != "1GiB" || !*wait {
		t.Fatalf("pos=%v size=%q wait=%v", pos, *size, *wait)
	}
}

// fakeAPI answers a few routes like a node would.
func fakeAPI(t *testing.T) *httptest.Server {
	var targetPolls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			w.WriteHeader(401)
			json.NewEncoder(w).Encode(api.ErrorBody{Error: "missing or invalid bearer token", Code: api.CodeUnauthorized})
			return
		}
		w.Header().Set("Content-Type", "application/json")
		switch r.Method + " " + r.URL.Path {
		case "GET /v1/status":
			json.NewEncoder(w).Encode(api.Status{Node: "n1", Leader: "n1", RaftState: "Leader", CatalogVersion: 2, NodeCatalogVersion: 3,
				Members: []api.Member{{Name: "n1", Status: "alive", Voter: true, CatalogVersion: 3}, {Name: "n9", Status: "alive", CatalogVersion: 1}},
				Hosts:   []api.HostStatus{{ID: "n1", Backend: "file", Alive: true, Budget: 10 << 30, Used: 3 << 29, Free: 10<<30 - 3<<29}}})
		case "GET /v1/volumes":
			json.NewEncoder(w).Encode(api.VolumeList{Volumes: []api.Volume{
				{ID: "vol_1", Name: "db", Host: "n1", Size: 1 << 30, State: fsm.VolumeReady},
				{ID: "vol_2", Name: "pr-old", Host: "n1", Size: 1 << 30, State: fsm.VolumeReady, CreatedAt: 1, ExpiresAt: 2},
				{ID: "vol_3", Name: "pr-new", Host: "n1", Size: 1 << 30, State: fsm.VolumeReady, CreatedAt: 3, ExpiresAt: time.Now().Add(49 * time.Hour).UnixNano()},
			}})
		case "POST /v1/volumes/db/ttl":
			var req api.SetTTLRequest
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
				w.WriteHeader(400)
				return
			}
			v := api.Volume{ID: "vol_1", Name: "db", Host: "n1", Size: 1 << 30, State: fsm.VolumeReady}
			if req.TTLSeconds > 0 {
				v.ExpiresAt = time.Now().Add(time.Duration(req.TTLSeconds)*time.Second + 500*time.Millisecond).UnixNano()
			}
			json.NewEncoder(w).Encode(v)
		case "GET /v1/forks/fork_1":
			json.NewEncoder(w).Encode(api.Derive(fsm.Fork{ID: "fork_1", Name: "pr", State: fsm.ForkReady, Path: fsm.PathStream,
				BytesDone: 1 << 30, BytesTotal: 1 << 30, WireBytes: 1 << 28, RateLimit: 64 << 20, CreatedAt: 1e9, FinishedAt: 3e9}))
		case "GET /v1/forks/fork_run", "GET /v1/forks/fork_race", "GET /v1/forks/fork_lost":
			json.NewEncoder(w).Encode(api.Derive(fsm.Fork{ID: r.URL.Path[len("/v1/forks/"):], Name: "pr-run", State: fsm.ForkRunning, Path: fsm.PathStream,
				TargetVolume: "vol_t", TargetHost: "n2", BytesTotal: 1 << 30, WireBytes: 40 << 10,
				CreatedAt: time.Now().Add(-65 * time.Second).UnixNano(), UpdatedAt: time.Now().Add(-60 * time.Second).UnixNano()}))
		case "POST /v1/forks/fork_race/cancel": // failed on its own since the GET
			json.NewEncoder(w).Encode(api.Derive(fsm.Fork{ID: "fork_race", Name: "pr-run", State: fsm.ForkFailed,
				TargetVolume: "vol_t", TargetHost: "n2", Error: "source host died"}))
		case "POST /v1/forks/fork_lost/cancel": // cancelled through another node since the GET
			json.NewEncoder(w).Encode(api.CancelForkResponse{Fork: api.Derive(fsm.Fork{ID: "fork_lost", Name: "pr-run", State: fsm.ForkFailed,
				TargetVolume: "vol_t", TargetHost: "n2", Error: api.ForkCancelledError}), Already: true})
		case "GET /v1/forks/fork_dead":
			json.NewEncoder(w).Encode(api.Derive(fsm.Fork{ID: "fork_dead", Name: "pr-dead", State: fsm.ForkFailed,
				TargetVolume: "vol_d", TargetHost: "n2", Error: "source host died"}))
		case "GET /v1/forks/fork_cxl":
			json.NewEncoder(w).Encode(api.Derive(fsm.Fork{ID: "fork_cxl", Name: "pr-cxl", State: fsm.ForkFailed,
				TargetVolume: "vol_c", TargetHost: "n2", Error: api.ForkCancelledError}))
		case "POST /v1/forks/fork_dead/cancel", "POST /v1/forks/fork_cxl/cancel":
			// A finished fork is reported by the CLI, not cancelled again.
			w.WriteHeader(500)
			json.NewEncoder(w).Encode(api.ErrorBody{Error: "cancel of a finished fork was sent", Code: api.CodeInternal})
		case "GET /v1/forks/fork_nope":
			w.WriteHeader(404)
			json.NewEncoder(w).Encode(api.ErrorBody{Error: `fork "fork_nope": not found`, Code: api.CodeNotFound})
		case "DELETE /v1/nodes/n9":
			w.WriteHeader(204)
		case "DELETE /v1/volumes/db":
			json.NewEncoder(w).Encode(api.Volume{ID: "vol_1", Name: "db", Host: "n1", Size: 1 << 30, State: fsm.VolumeDeleting})
		case "POST /v1/forks/fork_run/cancel":
			json.NewEncoder(w).Encode(api.Derive(fsm.Fork{ID: "fork_run", Name: "pr-run", State: fsm.ForkFailed, Path: fsm.PathStream,
				TargetVolume: "vol_t", TargetHost: "n2", Error: api.ForkCancelledError, BytesDone: 1 << 28, BytesTotal: 1 << 30}))
		case "POST /v1/forks/fork_1/cancel":
			w.WriteHeader(409)
			json.NewEncoder(w).Encode(api.ErrorBody{Error: "conflict: fork fork_1 is already ready; remove its volume with `forknode volume rm pr` instead", Code: api.CodeConflict})
		case "GET /v1/volumes/vol_t":
			// The target's host removes it a moment after the cancel.
			if targetPolls.Add(1) < 3 {
				json.NewEncoder(w).Encode(api.Volume{ID: "vol_t", Name: "pr-run", Host: "n2", State: fsm.VolumeFailed})
				return
			}
			w.WriteHeader(404)
			json.NewEncoder(w).Encode(api.ErrorBody{Error: `volume "vol_t": not found`, Code: api.CodeNotFound})
		case "POST /v1/forks":
			var req api.CreateForkRequest
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Source != "db" || req.Via != "stream" {
				w.WriteHeader(400)
				json.NewEncoder(w).Encode(api.ErrorBody{Error: "bad request body", Code: api.CodeInvalid})
				return
			}
			if req.TTLSeconds != 0 { // the flag's value arrives in seconds
				w.WriteHeader(201)
				json.NewEncoder(w).Encode(api.Derive(fsm.Fork{ID: "fork_ttl", Name: fmt.Sprintf("ttl-%d", req.TTLSeconds), State: fsm.ForkPending, Path: fsm.PathStream}))
				return
			}
			if req.Name == "pr-dead" { // one that fails
				w.WriteHeader(201)
				json.NewEncoder(w).Encode(api.Derive(fsm.Fork{ID: "fork_dead", Name: req.Name, State: fsm.ForkPending, Path: fsm.PathStream}))
				return
			}
			if req.Name == "pr-run" { // one that runs on
				w.WriteHeader(201)
				json.NewEncoder(w).Encode(api.Derive(fsm.Fork{ID: "fork_run", Name: req.Name, State: fsm.ForkPending, Path: fsm.PathStream}))
				return
			}
			if req.RateLimit != 0 { // the flag's value arrives parsed
				w.WriteHeader(201)
				json.NewEncoder(w).Encode(api.Derive(fsm.Fork{ID: "fork_rl", Name: req.Name, State: fsm.ForkPending, Path: fsm.PathStream, RateLimit: req.RateLimit}))
				return
			}
			w.WriteHeader(409)
			json.NewEncoder(w).Encode(api.ErrorBody{Error: "no host has room: need 1 GiB", Code: api.CodeNoRoom})
		default:
			w.WriteHeader(404)
			json.NewEncoder(w).Encode(api.ErrorBody{Error: "volume \"x\": not found", Code: api.CodeNotFound})
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestClientCommands(t *testing.T) {
	srv := fakeAPI(t)
	t.Setenv("FORKNODE_ADDR", srv.URL)
	t.Setenv("FORKNODE_TOKEN", "tok")
	for _, tc := range []struct {
		args    []string
		code    int
		out     []string
		notOut  []string
		errText string
	}{
		{args: []string{"status"}, out: []string{"leader n1", "HOST", "10 GiB", "1.5 GiB", "8.5 GiB",
			"catalog version 2 (this node applies up to 3;", "member n9 applies catalog version 1, older than the cluster's: upgrade it"}},
		{args: []string{"status", "--json"}, out: []string{`"leader": "n1"`, `"budget": 10737418240`}},
		{args: []string{"volume", "ls"}, out: []string{"ID", "vol_1", "db", "1 GiB", "ready"}},
		{args: []string{"forks", "show", "fork_1"}, out: []string{"compression ratio 4.00", "rate:", "512 MiB/s", "rate limit:", "64 MiB/s (this fork's own cap)", "took:"}},
		{args: []string{"forks", "show", "fork_run"}, out: []string{"running for:  1m5s", "wire:         40 KiB\n"}, notOut: []string{"took:", "ratio"}},
		{args: []string{"forks", "show", "fork_run", "--json"}, notOut: []string{"compression_ratio"}},
		// --wait comes back to a fork (after Ctrl-C on fork --wait, say).
		{args: []string{"forks", "show", "fork_1", "--wait"}, out: []string{"fork fork_1 ready: volume pr"}, notOut: []string{"rate limit:"}},
		{args: []string{"forks", "show", "fork_dead", "--wait"}, code: 1},
		{args: []string{"forks", "show", "fork_dead", "--wait", "--json"}, code: 1, out: []string{`"state": "failed"`, `"error": "source host died"`}},
		{args: []string{"node", "rm", "n9"}, out: []string{"node n9 removed from the cluster"}},
		{args: []string{"node", "rm", "n9", "--json"}, out: []string{`"node": "n9"`, `"removed": true`}},
		{args: []string{"volume", "rm", "db", "--wait"}, out: []string{"volume db (vol_1) on n1: deleted"}},
		{args: []string{"volume", "rm", "db", "--wait", "--json"}, out: []string{`"state": "deleted"`}},
		{args: []string{"volume", "rm", "db", "--json"}, out: []string{`"state": "deleting"`}},
		{args: []string{"fork", "db", "pr", "--via", "stream", "--rate-limit", "20MiB", "--json"}, out: []string{`"rate_limit": 20971520`}},
		{args: []string{"fork", "db", "pr", "--rate-limit", "fast"}, code: 2, errText: `size "fast"`},
		{args: []string{"volume", "ls"}, out: []string{"EXPIRES", "expired", "in 49h0m0s"}},
		{args: []string{"fork", "db", "pr", "--via", "stream", "--ttl", "3d"}, out: []string{"ttl-259200"}},
		{args: []string{"fork", "db", "pr", "--ttl", "soon"}, code: 2, errText: `ttl "soon"`},
		{args: []string{"fork", "db", "pr", "--via", "stream", "--ttl", "1d12h"}, out: []string{"ttl-129600"}},
		{args: []string{"fork", "db", "pr", "--ttl", "-3d"}, code: 2, errText: `ttl "-3d": want a positive duration of at least 1s`},
		{args: []string{"volume", "create", "x", "--size", "1GiB", "--ttl", "-1h"}, code: 2, errText: `ttl "-1h": want a positive duration of at least 1s`},
		{args: []string{"volume", "expire", "db", "--in", "2h"}, out: []string{"volume db (vol_1): expires 20", "(in 2h0m0s)"}},
		{args: []string{"volume", "expire", "db", "--never"}, out: []string{"expires never"}},
		{args: []string{"volume", "expire", "db", "--in", "1d", "--json"}, out: []string{`"expires_at": `}},
		{args: []string{"volume", "expire", "db"}, code: 2, errText: "exactly one of --in DUR or --never"},
		{args: []string{"volume", "expire", "db", "--in", "2h", "--never"}, code: 2, errText: "exactly one of"},
		{args: []string{"volume", "show", "x"}, code: 1, errText: "forknode: volume \"x\": not found"},
		{args: []string{"fork", "db", "pr", "--via", "stream"}, code: 1, errText: "forknode: no host has room"},
		{args: []string{"status", "--token", "wrong"}, code: 1, errText: "bearer token"},
		{args: []string{"forks", "cancel", "fork_run"}, out: []string{"fork fork_run cancelled (target volume pr-run is being removed)"}},
		{args: []string{"forks", "cancel", "fork_run", "--json"}, out: []string{`"state": "failed"`, `"error": "cancelled by the operator"`, `"already": false`}},
		{args: []string{"forks", "cancel", "fork_run", "--wait"}, out: []string{"fork fork_run cancelled", "target volume pr-run (vol_t) removed from n2"}},
		{args: []string{"forks", "cancel", "fork_dead"}, out: []string{"fork fork_dead already failed: source host died\n"}, notOut: []string{"cancelled"}},
		{args: []string{"forks", "cancel", "fork_cxl"}, out: []string{"fork fork_cxl already cancelled\n"}, notOut: []string{"being removed"}},
		{args: []string{"forks", "cancel", "fork_cxl", "--json"}, out: []string{`"id": "fork_cxl"`, `"error": "cancelled by the operator"`, `"already": true`}},
		{args: []string{"forks", "cancel", "fork_dead", "--json"}, out: []string{`"error": "source host died"`, `"already": true`}},
		{args: []string{"forks", "cancel", "fork_race"}, out: []string{"fork fork_race had already failed (source host died); target volume pr-run is being removed"}},
		{args: []string{"forks", "cancel", "fork_race", "--json"}, out: []string{`"error": "source host died"`, `"already": true`}},
		{args: []string{"forks", "cancel", "fork_lost"}, out: []string{"fork fork_lost already cancelled\n"}, notOut: []string{"being removed"}},
		{args: []string{"forks", "cancel", "fork_lost", "--json"}, out: []string{`"id": "fork_lost"`, `"already": true`}},
		{args: []string{"forks", "cancel", "fork_1"}, code: 1, errText: "forknode: conflict: fork fork_1 is already ready; remove its volume with `forknode volume rm pr` instead"},
		{args: []string{"forks", "cancel", "fork_nope"}, code: 1, errText: `forknode: fork "fork_nope": not found`},
		{args: []string{"forks", "cancel"}, code: 2, errText: "want ID"},
	} {
		code, out, errOut := capture(t, tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.errText) {
			t.Errorf("forknode %v: code %d (want %d)\nstdout: %s\nstderr: %s", tc.args, code, tc.code, out, errOut)
			continue
		}
		for _, want := range tc.out {
			if !strings.Contains(out, want) {
				t.Errorf("forknode %v: stdout lacks %q:\n%s", tc.args, want, out)
			}
		}
		for _, bad := range tc.notOut {
			if strings.Contains(out, bad) {
				t.Errorf("forknode %v: stdout has %q:\n%s", tc.args, bad, out)
			}
		}
	}
}

func TestBuildVersion(t *testing.T) {
	vcs := func(rev, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}
	}
	const rev = "3081599de5b00caaecfd3b44ad3fe43a893f1d0c"
	for _, tc := range []struct {
		name string
		bi   debug.BuildInfo
		want string
	}{
		{"no vcs", debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}}, "forknode (devel) go1.26.8"},
		{"empty version", debug.BuildInfo{GoVersion: "go1.26.8"}, "forknode (devel) go1.26.8"},
		{"vcs, clean", debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}, Settings: vcs(rev, "false")},
			"forknode (devel) rev 3081599 go1.26.8"},
		{"untagged pseudo-version, dirty", debug.BuildInfo{GoVersion: "go1.26.8",
			Main: debug.Module{Version: "v0.0.0-20261124154532-3081599de5b0+dirty"}, Settings: vcs(rev, "true")},
			"forknode (devel) rev 3081599+dirty go1.26.8"},
		{"tag-based pseudo-version", debug.BuildInfo{GoVersion: "go1.26.8",
			Main: debug.Module{Version: "v1.2.4-0.20261124154532-3081599de5b0"}, Settings: vcs(rev, "false")},
			"forknode v1.2.4-0.20261124154532-3081599de5b0 go1.26.8"},
		{"go install of a tag", debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.3"}}, "forknode v1.2.3 go1.26.8"},
	} {
		if got := buildVersion(&tc.bi); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	// A stamped version wins; the help does not start with a version.
	defer func(v string) { version = v }(version)
	version = "v9.9.9"
	if code, out, _ := capture(t, "version"); code != 0 || out != "forknode v9.9.9\n" {
		t.Errorf("stamped version: %d %q", code, out)
	}
	if _, out, _ := capture(t, "-h"); !strings.HasPrefix(out, "forknode: block-level forks") || strings.Contains(out, "v9.9.9") {
		t.Errorf("help: %q", out)
	}
}

// The token's sources in order (--token, --token-file, $FORKNODE_TOKEN),
// each trimmed of the newline a $(...) or a paste leaves.
func TestClientTokenSources(t *testing.T) {
	srv := fakeAPI(t)
	t.Setenv("FORKNODE_ADDR", srv.URL)
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte("tok\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		env  string
		args []string
		code int
	}{
		{env: "tok\n", code: 0},
		{env: " tok ", code: 0},
		{env: "wrong", args: []string{"--token-file", file}, code: 0},
		{env: "wrong", args: []string{"--token", "tok\n"}, code: 0},
		{env: "tok", args: []string{"--token", "wrong"}, code: 1},
	} {
		t.Setenv("FORKNODE_TOKEN", tc.env)
		code, _, errOut := capture(t, append([]string{"status"}, tc.args...)...)
		if code != tc.code {
			t.Errorf("env %q args %q: exit %d, want %d: %s", tc.env, tc.args, code, tc.code, errOut)
		}
	}
}

// With --json a failure is a JSON document on stdout too, carrying the
// API's code; some failures get a hint naming the fix.
func TestClientErrorsJSONAndHints(t *testing.T) {
	srv := fakeAPI(t)
	t.Setenv("FORKNODE_ADDR", srv.URL)
	t.Setenv("FORKNODE_TOKEN", "wrong")
	code, out, _ := capture(t, "status", "--json")
	var e jsonError
	if err := json.Unmarshal([]byte(out), &e); code != 1 || err != nil || e.Code != api.CodeUnauthorized || e.Status != 401 || e.Error == "" {
		t.Fatalf("status --json with a wrong token: exit %d, %+v, %v:\n%s", code, e, err, out)
	}
	code, out, _ = capture(t, "volume", "create", "x", "--size", "1.5", "--json")
	if err := json.Unmarshal([]byte(out), &e); code != 2 || err != nil || e.Code != "usage" {
		t.Fatalf("a usage error under --json: exit %d, %+v, %v:\n%s", code, e, err, out)
	}
	if code, out, _ = capture(t, "status"); code != 1 || out != "" {
		t.Fatalf("without --json a failure prints nothing on stdout: exit %d:\n%s", code, out)
	}
	// Port 1 on loopback: nothing listens there.
	code, _, errOut := capture(t, "status", "--addr", "127.0.0.1:1")
	if code != 1 || !strings.Contains(errOut, "no forknode API listens there") || strings.Count(errOut, "127.0.0.1:1/v1/status") != 1 {
		t.Fatalf("connection refused: exit %d:\n%s", code, errOut)
	}
}

// An answer from a node that could not reach the leader carries
// X-Forknode-Stale; the CLI says so on stderr, once, and still prints it.
func TestClientWarnsOnStale(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(api.StaleHeader, "true")
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(api.VolumeList{Volumes: []api.Volume{{ID: "vol_1", Name: "db", Host: "n1", State: fsm.VolumeReady}}})
	}))
	t.Cleanup(srv.Close)
	t.Setenv("FORKNODE_ADDR", srv.URL)
	t.Setenv("FORKNODE_TOKEN", "tok")
	code, out, errOut := capture(t, "volume", "ls")
	if code != 0 || !strings.Contains(out, "vol_1") || strings.Count(errOut, "may miss recent changes") != 1 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
}

// Ctrl-C during fork --wait stops the waiting, says the fork goes on and
// how to stop it.
func TestForkWaitInterrupted(t *testing.T) {
	srv := fakeAPI(t)
	t.Setenv("FORKNODE_ADDR", srv.URL)
	t.Setenv("FORKNODE_TOKEN", "tok")
	old := interruptible
	t.Cleanup(func() { interruptible = old })
	interruptible = func(ctx context.Context) (context.Context, context.CancelFunc) {
		ctx, cancel := context.WithCancel(ctx)
		time.AfterFunc(500*time.Millisecond, cancel) // the operator's Ctrl-C
		return ctx, cancel
	}
	for _, args := range [][]string{
		{"fork", "db", "pr-run", "--via", "stream", "--wait"},
		{"forks", "show", "fork_run", "--wait"},
	} {
		code, _, errOut := capture(t, args...)
		if code != 1 || !strings.Contains(errOut, "interrupted: fork fork_run goes on in the cluster") ||
			!strings.Contains(errOut, "forks show fork_run --wait") || !strings.Contains(errOut, "forks cancel fork_run") {
			t.Fatalf("%v: exit %d:\n%s", args, code, errOut)
		}
	}
}

// A fork that fails under --wait --json prints one JSON document, the
// failed fork with its error, and exits 1: a second document (the error
// object) would break any script that parses stdout.
func TestForkWaitJSONFailureOneDocument(t *testing.T) {
	srv := fakeAPI(t)
	t.Setenv("FORKNODE_ADDR", srv.URL)
	t.Setenv("FORKNODE_TOKEN", "tok")
	code, out, _ := capture(t, "fork", "db", "pr-dead", "--via", "stream", "--wait", "--json")
	var f api.Fork
	dec := json.NewDecoder(strings.NewReader(out))
	if err := dec.Decode(&f); code != 1 || err != nil || f.State != fsm.ForkFailed || f.Error == "" {
		t.Fatalf("exit %d, %+v, %v:\n%s", code, f, err, out)
	}
	if dec.More() {
		t.Fatalf("more than one JSON document on stdout:\n%s", out)
	}
}
