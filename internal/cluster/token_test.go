package cluster

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/api"
	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/keys"
	"github.com/forknode/forknode/internal/testutil"
)

// TestClusterIssuedTokens: issued tokens work on every node within their
// scope and expiry, and a revocation through one node holds on the others,
// for an issued token and for the cluster token itself.
func TestClusterIssuedTokens(t *testing.T) {
	tc := newTestCluster(t, []int64{100 * MiB, 100 * MiB}, nil)
	testutil.Eventually(t, 10*time.Second, "catalog version 2", func() bool {
		return tc.nodes[0].Status().CatalogVersion >= 2 && tc.nodes[1].Status().CatalogVersion >= 2
	})
	now := time.Now()
	issue := func(c keys.TokenClaims) string {
		tok, _, err := tc.key.IssueToken(c, now)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	admin := issue(keys.TokenClaims{ID: "tok_000000000000ad01", Scope: keys.ScopeAdmin, Expires: now.Add(time.Hour).Unix()})
	read := issue(keys.TokenClaims{ID: "tok_00000000000000e1", Scope: keys.ScopeRead})
	expired := issue(keys.TokenClaims{ID: "tok_00000000000000d1", Scope: keys.ScopeAdmin, Expires: now.Add(-time.Minute).Unix()})
	client := func(n *Node, tok string) *api.Client {
		c, err := api.NewClient(n.APIAddr(), tok)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ctx := context.Background()
	n1, n2 := tc.nodes[0], tc.nodes[1]
	write := func(c *api.Client) error {
		_, err := c.CreateVolume(ctx, api.CreateVolumeRequest{Name: "v-" + NewID(""), Size: MiB}, false)
		return err
	}
	read1 := func(c *api.Client) error { _, err := c.Status(ctx); return err }

	for _, step := range []struct {
		name     string
		tok      string
		n        *Node
		op       func(*api.Client) error
		wantCode string
		wantText string
	}{
		{"admin token reads", admin, n2, read1, "", ""},
		{"admin token writes", admin, n1, write, "", ""},
		{"read token reads", read, n1, read1, "", ""},
		{"read token may not write", read, n2, write, api.CodeForbidden, "may only read"},
		{"expired token", expired, n1, read1, api.CodeUnauthorized, "expired"},
		{"cluster token", n1.APIToken(), n2, write, "", ""},
	} {
		err := step.op(client(step.n, step.tok))
		if step.wantCode == "" && err != nil || step.wantCode != "" && !api.IsCode(err, step.wantCode) {
			t.Fatalf("%s: %v, want %q", step.name, err, step.wantCode)
		}
		if err != nil && !strings.Contains(err.Error(), step.wantText) {
			t.Fatalf("%s: %v, want it to say %q", step.name, err, step.wantText)
		}
	}
	if _, err := client(n2, read).RevokeToken(ctx, "tok_000000000000ad01", 0); !api.IsCode(err, api.CodeForbidden) {
		t.Fatalf("a read token revoked a token: %v", err)
	}
	// The cluster token pasted as an id: refused, not stored, not echoed.
	if _, err := client(n1, n1.APIToken()).RevokeToken(ctx, n1.APIToken(), 0); !api.IsCode(err, api.CodeInvalid) ||
		strings.Contains(err.Error(), n1.APIToken()[:8]) {
		t.Fatalf("revoking a secret as an id: %v, want invalid without the secret", err)
	}

	// Revoke the admin token through n1; n2 refuses it too.
	claims, _ := keys.ParseTokenClaims(admin)
	if res, err := client(n1, n1.APIToken()).RevokeToken(ctx, claims.ID, claims.Expires); err != nil || res.Already {
		t.Fatalf("revoke: %+v %v", res, err)
	}
	if res, err := client(n1, n1.APIToken()).RevokeToken(ctx, claims.ID, claims.Expires); err != nil || !res.Already {
		t.Fatalf("revoke again: %+v %v, want already", res, err)
	}
	testutil.Eventually(t, 10*time.Second, "the revoked token refused on n2", func() bool {
		err := read1(client(n2, admin))
		return api.IsCode(err, api.CodeUnauthorized) && strings.Contains(err.Error(), "revoked")
	})
	// The cluster token can be revoked too, leaving issued tokens.
	admin2 := issue(keys.TokenClaims{ID: "tok_000000000000ad02", Scope: keys.ScopeAdmin})
	if _, err := client(n2, admin2).RevokeToken(ctx, keys.ClusterTokenID, 0); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the cluster token refused on n1", func() bool {
		return api.IsCode(read1(client(n1, n1.APIToken())), api.CodeUnauthorized)
	})
	if err := write(client(n1, admin2)); err != nil {
		t.Fatalf("issued admin token after the cluster token's revocation: %v", err)
	}
	list, err := client(n1, read).RevokedTokens(ctx)
	if err != nil || len(list) != 2 || list[0].ID != keys.ClusterTokenID || list[1].ID != "tok_000000000000ad01" || list[1].Expires != claims.Expires {
		t.Fatalf("revoked list %+v %v", list, err)
	}
	var n int
	n1.View(func(s *fsm.State) { n = len(s.RevokedTokens()) })
	if n != 2 {
		t.Fatalf("catalog holds %d revocations", n)
	}
}

// TestRevokeNeedsVersion2: on a cluster whose servers apply only catalog
// version 1, a revocation is refused alike through the leader and through
// a follower (which forwards it): 409 upgrade_required, not a 500.
func TestRevokeNeedsVersion2(t *testing.T) {
	tc := newTestClusterWith(t, []int64{100 * MiB, 100 * MiB}, nil, func(c *Config) { c.catalogVersion = 1 })
	ctx := context.Background()
	for _, n := range []*Node{tc.leader(), tc.follower()} {
		c, err := api.NewClient(n.APIAddr(), n.APIToken())
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.RevokeToken(ctx, "tok_0123456789abcdef", 0)
		if !api.IsCode(err, api.CodeUpgradeRequired) || !strings.Contains(err.Error(), "catalog version 2") {
			t.Fatalf("revoke through %s on a version-1 cluster: %v, want upgrade_required", n.Name(), err)
		}
	}
}
