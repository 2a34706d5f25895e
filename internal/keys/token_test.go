package keys

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestIssuedTokens(t *testing.T) {
	m, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	other, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	admin, ac, err := m.IssueToken(TokenClaims{Name: "ops", Scope: ScopeAdmin, Expires: now.Add(time.Hour).Unix()}, now)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(ac.ID, "tok_") || ac.Issued != now.Unix() {
		t.Fatalf("claims %+v", ac)
	}
	read, _, err := m.IssueToken(TokenClaims{Scope: ScopeRead}, now)
	if err != nil {
		t.Fatal(err)
	}
	// Forge: the read token's claims with admin scope, the old signature.
	_, rest, _ := strings.Cut(read, ".")
	p64, mac, _ := strings.Cut(rest, ".")
	payload, _ := base64.RawURLEncoding.DecodeString(p64)
	forged := tokenPrefix + base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(payload), `"read"`, `"admin"`, 1))) + "." + mac
	foreign, _, _ := other.IssueToken(TokenClaims{Scope: ScopeAdmin}, now)

	for _, tc := range []struct {
		name      string
		tok       string
		at        time.Time
		wantErr   error
		wantScope string
		wantID    string
	}{
		{"the cluster token", m.APIToken(), now, nil, ScopeAdmin, ClusterTokenID},
		{"an admin token before its expiry", admin, now.Add(59 * time.Minute), nil, ScopeAdmin, ac.ID},
		{"an admin token at its expiry", admin, now.Add(time.Hour), ErrTokenExpired, "", ""},
		{"a read token that never expires", read, now.Add(10 * 365 * 24 * time.Hour), nil, ScopeRead, ""},
		{"a forged scope", forged, now, ErrTokenInvalid, "", ""},
		{"another cluster's token", foreign, now, ErrTokenInvalid, "", ""},
		{"another cluster's cluster token", other.APIToken(), now, ErrTokenInvalid, "", ""},
		{"empty", "", now, ErrTokenInvalid, "", ""},
		{"garbage after the prefix", "fkt1.!!!.???", now, ErrTokenInvalid, "", ""},
		{"no signature", "fkt1." + p64, now, ErrTokenInvalid, "", ""},
		{"too long", "fkt1." + strings.Repeat("A", 4096) + "." + mac, now, ErrTokenInvalid, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := m.VerifyToken(tc.tok, tc.at)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if c.Scope != tc.wantScope || tc.wantID != "" && c.ID != tc.wantID {
				t.Fatalf("claims %+v", c)
			}
		})
	}

	for _, bad := range []TokenClaims{{Scope: "root"}, {Scope: ScopeAdmin, ID: ClusterTokenID}, {Scope: ScopeAdmin, ID: "a.b"}, {Scope: ScopeAdmin, Name: strings.Repeat("n", 2000)}} {
		if _, _, err := m.IssueToken(bad, now); !errors.Is(err, ErrTokenInvalid) {
			t.Errorf("IssueToken(%+v): %v, want ErrTokenInvalid", bad, err)
		}
	}
	if c, err := ParseTokenClaims(read); err != nil || c.Scope != ScopeRead {
		t.Errorf("ParseTokenClaims: %+v %v", c, err)
	}
}
