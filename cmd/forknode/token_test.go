package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/keys"
)

func TestTokenIssue(t *testing.T) {
	key := filepath.Join(t.TempDir(), "cluster.key")
	if code, _, errOut := capture(t, "keygen", "-o", key); code != 0 {
		t.Fatalf("keygen: %s", errOut)
	}
	m, err := keys.Load(key)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		args      []string
		code      int
		errText   string
		scope     string
		expiresIn time.Duration // 0: never
	}{
		{"default: admin, 30 days", nil, 0, "(admin scope) expires ", keys.ScopeAdmin, 30 * 24 * time.Hour},
		{"read-only, 12h", []string{"--read-only", "--ttl", "12h", "--name", "grafana"}, 0, "(read scope)", keys.ScopeRead, 12 * time.Hour},
		{"for ever", []string{"--ttl", "0"}, 0, "never expires", keys.ScopeAdmin, 0},
		{"bad ttl", []string{"--ttl", "soon"}, 2, `ttl "soon"`, "", 0},
		{"no key", []string{"--key", ""}, 2, "--key FILE is required", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"token", "issue", "--key", key}, tc.args...)
			code, out, errOut := capture(t, args...)
			if code != tc.code || !strings.Contains(errOut, tc.errText) {
				t.Fatalf("code %d (want %d), stderr %q (want %q)", code, tc.code, errOut, tc.errText)
			}
			if code != 0 {
				return
			}
			c, err := m.VerifyToken(strings.TrimSpace(out), time.Now())
			if err != nil {
				t.Fatalf("issued token does not verify: %v", err)
			}
			if c.Scope != tc.scope || !strings.Contains(errOut, "forknode token revoke "+c.ID) {
				t.Fatalf("claims %+v, stderr %q", c, errOut)
			}
			if tc.expiresIn == 0 && c.Expires != 0 ||
				tc.expiresIn != 0 && (c.Expires-time.Now().Add(tc.expiresIn).Unix() > 5 || time.Now().Add(tc.expiresIn).Unix()-c.Expires > 5) {
				t.Fatalf("expires %d, want about now + %s", c.Expires, tc.expiresIn)
			}
		})
	}
	code, out, _ := capture(t, "token", "issue", "--key", key, "--read-only", "--json")
	var js struct {
		Token string `json:"token"`
		Scope string `json:"scope"`
		ID    string `json:"id"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &js) != nil || js.Scope != keys.ScopeRead || !strings.HasPrefix(js.Token, "fkt1.") || js.ID == "" {
		t.Fatalf("--json: %d %q", code, out)
	}
	code, _, errOut := capture(t, "token", "revoke")
	if code != 2 || !strings.Contains(errOut, "TOKEN or ID") {
		t.Fatalf("revoke without an argument: %d %q", code, errOut)
	}
	// The cluster token itself (a secret) is refused before anything is
	// sent: the address given is not even dialled.
	code, _, errOut = capture(t, "token", "revoke", m.APIToken(), "--addr", "127.0.0.1:1", "--token", "x")
	if code != 2 || !strings.Contains(errOut, "neither an issued token") || strings.Contains(errOut, m.APIToken()) {
		t.Fatalf("revoke of the cluster token's value: %d %q", code, errOut)
	}
}
