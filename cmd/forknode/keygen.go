package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/forknode/forknode/internal/api"
	"github.com/forknode/forknode/internal/keys"
)

func runKeygen(args []string) error {
	fs := newFlagSet("keygen", "keygen [-o cluster.key] [--force]")
	out := fs.String("o", "cluster.key", "where to write the key file (mode 0600)")
	force := fs.Bool("force", false, "overwrite an existing key file (every node then needs the new one)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("keygen", pos, 0, "no arguments"); err != nil {
		return err
	}
	if _, err := os.Stat(*out); err == nil && !*force {
		return fmt.Errorf("%s already exists; a new key locks its cluster's nodes out. Use --force to overwrite it", *out)
	}
	// The key is written through a temp file beside it, so a missing
	// directory would otherwise be reported under the temp file's name.
	if dir := filepath.Dir(*out); dir != "" {
		if st, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("directory %s does not exist; create it first (mkdir -p %s)", dir, dir)
		} else if err == nil && !st.IsDir() {
			return fmt.Errorf("%s is not a directory", dir)
		}
	}
	m, err := keys.Generate()
	if err != nil {
		return err
	}
	if err := m.Write(*out); err != nil {
		return err
	}
	fmt.Printf("wrote %s (fingerprint %s)\n", *out, m.Fingerprint())
	fmt.Printf("copy it to every node (agent --key %s), and give the CLI an issued token:\n", *out)
	fmt.Printf("  export FORKNODE_TOKEN=$(forknode token issue --key %s --ttl 30d --name ops)\n", *out)
	fmt.Printf("(forknode token --key %s prints the cluster token: admin, never expires)\n", *out)
	return nil
}

func runToken(args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "issue":
			return tokenIssue(args[1:])
		case "revoke":
			return tokenRevoke(args[1:])
		case "revoked":
			return tokenRevoked(args[1:])
		}
		if !strings.HasPrefix(args[0], "-") {
			return usagef("token: unknown subcommand %q: want issue, revoke or revoked, or flags only (token --key FILE)", args[0])
		}
	}
	fs := newFlagSet("token", "token --key FILE   (the cluster token; see also: token issue | revoke | revoked)")
	m, err := keyCommand("token", fs, args)
	if err != nil {
		return err
	}
	fmt.Println(m.APIToken())
	return nil
}

// tokenIssue signs a token with the cluster key: offline, on the host that
// holds the key, so operators and CI get a credential that expires, can
// be read-only, and can be revoked, instead of the cluster token.
func tokenIssue(args []string) error {
	fs := newFlagSet("token issue", "token issue --key FILE [--ttl 30d] [--read-only] [--name NAME] [--json]")
	ttl := fs.String("ttl", "30d", "how long the token is valid (e.g. 12h, 30d); 0 for ever")
	readOnly := fs.Bool("read-only", false, "the token may only read (GET): status, ls, show")
	name := fs.String("name", "", "who or what the token is for, carried in the token")
	asJSON := fs.Bool("json", false, "print the token and its claims as JSON")
	m, err := keyCommand("token issue", fs, args)
	if err != nil {
		return err
	}
	c := keys.TokenClaims{Name: *name, Scope: keys.ScopeAdmin}
	if *readOnly {
		c.Scope = keys.ScopeRead
	}
	now := time.Now()
	if *ttl != "0" {
		d, err := parseTTL(*ttl)
		if err != nil {
			return usagef("token issue: %v", err)
		}
		c.Expires = now.Add(d).Unix()
	}
	tok, c, err := m.IssueToken(c, now)
	if err != nil {
		return usagef("token issue: %v", err)
	}
	if *asJSON {
		return printJSON(struct {
			Token string `json:"token"`
			keys.TokenClaims
		}{tok, c})
	}
	fmt.Println(tok)
	expires := "never expires"
	if c.Expires != 0 {
		expires = "expires " + expiresAt(c.Expires*int64(time.Second))
	}
	fmt.Fprintf(os.Stderr, "token %s (%s scope) %s; revoke it with: forknode token revoke %s\n", c.ID, c.Scope, expires, c.ID)
	return nil
}

// tokenRevoke revokes a token through the API, by the token itself (its
// expiry then bounds how long the catalog keeps the revocation) or its id.
func tokenRevoke(args []string) error {
	var cf clientFlags
	fs := newFlagSet("token revoke", "token revoke TOKEN|ID [--json]   (ID \""+keys.ClusterTokenID+"\": the cluster token)")
	addClientFlags(fs, &cf, true)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("token revoke", pos, 1, "TOKEN or ID"); err != nil {
		return err
	}
	id, exp := pos[0], int64(0)
	if strings.HasPrefix(id, "fkt1.") {
		c, err := keys.ParseTokenClaims(id)
		if err != nil {
			return usagef("token revoke: %v", err)
		}
		id, exp = c.ID, c.Expires
	}
	if !keys.ValidTokenID(id) {
		// Perhaps the cluster token itself: it is revoked by its id, and
		// is not sent anywhere from here.
		return usagef("token revoke: that is neither an issued token (fkt1.…) nor a token id (tok_…, or %q for the cluster token)", keys.ClusterTokenID)
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	res, err := c.RevokeToken(context.Background(), id, exp)
	if err != nil {
		return err
	}
	if cf.json {
		return printJSON(res)
	}
	if res.Already {
		fmt.Printf("token %s was already revoked\n", id)
	} else {
		fmt.Printf("token %s revoked\n", id)
	}
	if id == keys.ClusterTokenID {
		fmt.Println("the cluster token (forknode token --key, --token-file with the key file) no longer works; use issued tokens: forknode token issue --key K")
	}
	return nil
}

func tokenRevoked(args []string) error {
	var cf clientFlags
	fs := newFlagSet("token revoked", "token revoked [--json]")
	addClientFlags(fs, &cf, true)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("token revoked", pos, 0, "no arguments"); err != nil {
		return err
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	list, err := c.RevokedTokens(context.Background())
	if err != nil {
		return err
	}
	if cf.json {
		return printJSON(api.RevokedTokenList{Revoked: list})
	}
	tw := table(os.Stdout)
	fmt.Fprintln(tw, "ID\tKEPT UNTIL")
	for _, r := range list {
		until := "for ever"
		if r.Expires != 0 {
			until = expiresAt(r.Expires * int64(time.Second)) // the token's own expiry
		}
		fmt.Fprintf(tw, "%s\t%s\n", r.ID, until)
	}
	return tw.Flush()
}

func runCA(args []string) error {
	fs := newFlagSet("ca", "ca --key FILE [-o ca.pem]")
	out := fs.String("o", "", "write the PEM here instead of stdout")
	m, err := keyCommand("ca", fs, args)
	if err != nil {
		return err
	}
	if *out == "" {
		_, err = os.Stdout.Write(m.CAPEM())
		return err
	}
	// The CA certificate is public: it lets a client verify nodes, nothing more.
	return os.WriteFile(*out, m.CAPEM(), 0o644)
}

// keyCommand parses a command that reads the cluster key (--key, required,
// no arguments) and loads it; fs may carry more flags.
func keyCommand(name string, fs *flag.FlagSet, args []string) (*keys.Material, error) {
	keyFile := fs.String("key", "", "cluster key file (required)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return nil, err
	}
	if err := wantArgs(name, pos, 0, "no arguments"); err != nil {
		return nil, err
	}
	if *keyFile == "" {
		return nil, usagef("%s: --key FILE is required", name)
	}
	return loadKey(*keyFile)
}

// looseKeyMode reports a key file that group or others may read.
func looseKeyMode(path string) (fs.FileMode, bool) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, false
	}
	return st.Mode().Perm(), st.Mode().Perm()&0o077 != 0
}

// loopbackAddr reports a host:port whose host is a loopback address (or
// localhost); ":port" and 0.0.0.0 listen on every interface.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func loadKey(path string) (*keys.Material, error) {
	m, err := keys.Load(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("key file %s does not exist; create one with `forknode keygen -o %s`", path, path)
	}
	return m, err
}
