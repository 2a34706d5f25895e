package keys

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Issued API tokens. The cluster token (APIToken) is one credential for
// everything that never expires; an issued token carries its own claims,
// signed with a key derived from the cluster secret:
//
//	fkt1.<base64url(JSON claims)>.<base64url(HMAC-SHA256)>
//
// Any node verifies one without a lookup. An id lets the catalog revoke it.

const (
	tokenPrefix = "fkt1."
	// maxTokenLen bounds what VerifyToken parses: a header can be large.
	maxTokenLen = 1024

	// ScopeAdmin may do anything; ScopeRead may only read (GET).
	ScopeAdmin = "admin"
	ScopeRead  = "read"

	// ClusterTokenID names the cluster token in claims and revocations:
	// revoking it leaves issued tokens as the only way in.
	ClusterTokenID = "cluster"
)

var (
	// ErrTokenInvalid: not a token of this cluster (or malformed).
	ErrTokenInvalid = errors.New("invalid API token")
	// ErrTokenExpired: a valid token past its expiry.
	ErrTokenExpired = errors.New("API token expired")
)

// TokenClaims are what an issued token says about itself. Times are unix
// seconds; Expires 0 never expires.
type TokenClaims struct {
	ID      string `json:"id"`
	Name    string `json:"name,omitempty"`
	Scope   string `json:"scope"`
	Issued  int64  `json:"iat"`
	Expires int64  `json:"exp,omitempty"`
}

func (m *Material) tokenMAC(payload []byte) []byte {
	h := hmac.New(sha256.New, m.derive("api-token-signing"))
	h.Write(payload)
	return h.Sum(nil)
}

// IssueToken signs c. An empty ID gets a random one; Issued is set to now.
func (m *Material) IssueToken(c TokenClaims, now time.Time) (string, TokenClaims, error) {
	if c.Scope != ScopeAdmin && c.Scope != ScopeRead {
		return "", c, fmt.Errorf("%w: scope %q: want %s or %s", ErrTokenInvalid, c.Scope, ScopeAdmin, ScopeRead)
	}
	if c.ID == "" {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", c, err
		}
		c.ID = "tok_" + hex.EncodeToString(b[:])
	}
	if !issuedID(c.ID) {
		return "", c, fmt.Errorf("%w: id %q: want tok_ and 16 hex digits", ErrTokenInvalid, c.ID)
	}
	c.Issued = now.Unix()
	payload, err := json.Marshal(c)
	if err != nil {
		return "", c, err
	}
	enc := base64.RawURLEncoding
	tok := tokenPrefix + enc.EncodeToString(payload) + "." + enc.EncodeToString(m.tokenMAC(payload))
	if len(tok) > maxTokenLen {
		return "", c, fmt.Errorf("%w: %d bytes, at most %d (a shorter name?)", ErrTokenInvalid, len(tok), maxTokenLen)
	}
	return tok, c, nil
}

// VerifyToken checks a presented bearer token: the cluster token (claims
// of id "cluster", admin, no expiry) or a token issued by this cluster's
// key that has not expired at now. Revocation is the caller's to check.
func (m *Material) VerifyToken(tok string, now time.Time) (TokenClaims, error) {
	if !strings.HasPrefix(tok, tokenPrefix) {
		if tok != "" && hmac.Equal([]byte(tok), []byte(m.APIToken())) {
			return TokenClaims{ID: ClusterTokenID, Scope: ScopeAdmin}, nil
		}
		return TokenClaims{}, ErrTokenInvalid
	}
	c, payload, mac, err := parseToken(tok)
	if err != nil {
		return TokenClaims{}, err
	}
	if !hmac.Equal(mac, m.tokenMAC(payload)) {
		return TokenClaims{}, ErrTokenInvalid
	}
	if c.Scope != ScopeAdmin && c.Scope != ScopeRead || !issuedID(c.ID) {
		return TokenClaims{}, ErrTokenInvalid
	}
	if c.Expires != 0 && now.Unix() >= c.Expires {
		return c, fmt.Errorf("%w: token %s expired at %s", ErrTokenExpired, c.ID, time.Unix(c.Expires, 0).UTC().Format(time.RFC3339))
	}
	return c, nil
}

// ValidTokenID reports whether id can name a token: "cluster", or tok_
// and 16 lowercase hex digits as IssueToken makes them. Revocations take
// only these, so a secret pasted by mistake is refused, never stored.
func ValidTokenID(id string) bool { return id == ClusterTokenID || issuedID(id) }

// issuedID reports an id as IssueToken makes them: tok_ and 16 hex digits.
func issuedID(id string) bool {
	hexPart, ok := strings.CutPrefix(id, "tok_")
	if !ok || len(hexPart) != 16 {
		return false
	}
	for _, c := range hexPart {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// ParseTokenClaims reads an issued token's claims without verifying them
// (e.g. to revoke it by id). The cluster token has none.
func ParseTokenClaims(tok string) (TokenClaims, error) {
	c, _, _, err := parseToken(tok)
	return c, err
}

func parseToken(tok string) (TokenClaims, []byte, []byte, error) {
	var c TokenClaims
	if len(tok) > maxTokenLen {
		return c, nil, nil, fmt.Errorf("%w: too long", ErrTokenInvalid)
	}
	body, ok := strings.CutPrefix(tok, tokenPrefix)
	if !ok {
		return c, nil, nil, fmt.Errorf("%w: not an issued token", ErrTokenInvalid)
	}
	p64, m64, ok := strings.Cut(body, ".")
	if !ok {
		return c, nil, nil, fmt.Errorf("%w: malformed", ErrTokenInvalid)
	}
	payload, err1 := base64.RawURLEncoding.DecodeString(p64)
	mac, err2 := base64.RawURLEncoding.DecodeString(m64)
	if err1 != nil || err2 != nil || len(mac) != sha256.Size {
		return c, nil, nil, fmt.Errorf("%w: malformed", ErrTokenInvalid)
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, nil, nil, fmt.Errorf("%w: malformed claims", ErrTokenInvalid)
	}
	return c, payload, mac, nil
}
