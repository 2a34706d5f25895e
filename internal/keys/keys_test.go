package keys

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRoundTripAndDerivations(t *testing.T) {
	m, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "cluster.key")
	if err := m.Write(path); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", st.Mode().Perm())
	}
	m2, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(m.GossipKey()) != string(m2.GossipKey()) || m.APIToken() != m2.APIToken() {
		t.Fatal("derived secrets differ after reload")
	}
	if len(m.GossipKey()) != 32 {
		t.Fatalf("gossip key %d bytes", len(m.GossipKey()))
	}
	other, _ := Generate()
	if other.APIToken() == m.APIToken() {
		t.Fatal("two keys derive the same token")
	}
}

func TestLoadRejects(t *testing.T) {
	dir := t.TempDir()
	m, _ := Generate()
	other, _ := Generate()
	mixed := m.raw
	mixed.CAKey = other.raw.CAKey
	cases := map[string]string{
		"not json":      "hello",
		"wrong version": `{"version":9}`,
		"no ca":         `{"version":1,"ca_cert":"","ca_key":"","secret":""}`,
		"short secret":  `{"version":1,"ca_cert":` + quote(m.raw.CACert) + `,"ca_key":` + quote(m.raw.CAKey) + `,"secret":"AAAA"}`,
		"mismatched":    `{"version":1,"ca_cert":` + quote(mixed.CACert) + `,"ca_key":` + quote(mixed.CAKey) + `,"secret":` + quote(m.raw.Secret) + `}`,
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(dir, name)
			os.WriteFile(p, []byte(body), 0o600)
			if _, err := Load(p); !errors.Is(err, ErrBadKey) {
				t.Fatalf("got %v, want ErrBadKey", err)
			}
		})
	}
	if _, err := Load(filepath.Join(dir, "missing")); !errors.Is(err, ErrBadKey) {
		t.Fatalf("missing file: %v", err)
	}
}

func quote(s string) string {
	b := []byte{'"'}
	for _, r := range s {
		if r == '\n' {
			b = append(b, '\\', 'n')
			continue
		}
		b = append(b, byte(r))
	}
	return string(append(b, '"'))
}

// A peer whose certificate comes from another cluster's CA cannot complete
// the handshake in either direction.
func TestMutualTLS(t *testing.T) {
	a, _ := Generate()
	b, _ := Generate()
	cases := []struct {
		name     string
		server   *Material
		client   *Material
		wantPeer string
	}{
		{"same key", a, a, "client"},
		{"client from other cluster", a, b, ""},
		{"server from other cluster", b, a, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv, _, err := tc.server.TLS("server")
			if err != nil {
				t.Fatal(err)
			}
			_, cli, err := tc.client.TLS("client")
			if err != nil {
				t.Fatal(err)
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			peer := make(chan string, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					peer <- ""
					return
				}
				defer c.Close()
				tc := tls.Server(c, srv)
				if err := tc.Handshake(); err != nil {
					peer <- ""
					return
				}
				peer <- PeerName(tc.ConnectionState())
			}()
			c, err := tls.Dial("tcp", ln.Addr().String(), cli)
			if err == nil {
				// TLS 1.3 reports a rejected client certificate on first read.
				c.Write([]byte{1})
				var one [1]byte
				c.Read(one[:])
				c.Close()
			}
			if got := <-peer; got != tc.wantPeer {
				t.Fatalf("server saw peer %q, want %q", got, tc.wantPeer)
			}
		})
	}
}

// The API's TLS: a client holding the cluster's CA verifies any node
// without a certificate of its own; another cluster's CA, or none, fails.
func TestAPITLS(t *testing.T) {
	a, _ := Generate()
	b, _ := Generate()
	srv, err := a.APIServerTLS("n1")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	for _, tc := range []struct {
		name  string
		ca    []byte
		ok    bool
		setup string // "" or the error APIClientTLS must give
	}{
		{name: "the cluster's CA", ca: a.CAPEM(), ok: true},
		{name: "another cluster's CA", ca: b.CAPEM()},
		{name: "not PEM", ca: []byte("hello"), setup: "no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := APIClientTLS(tc.ca)
			if tc.setup != "" {
				if err == nil || !errors.Is(err, ErrBadKey) || !strings.Contains(err.Error(), tc.setup) {
					t.Fatalf("APIClientTLS: %v, want %q", err, tc.setup)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
			if tc.ok != (err == nil) {
				t.Fatalf("dial: %v, want ok=%v", err, tc.ok)
			}
			if err == nil {
				c.Close()
			}
		})
	}
}
