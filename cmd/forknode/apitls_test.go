package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/forknode/forknode/internal/keys"
)

// Where an https:// client finds the CA to verify --api-tls agents.
func TestClientAPITLS(t *testing.T) {
	dir := t.TempDir()
	m, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "cluster.key")
	if err := m.Write(keyFile); err != nil {
		t.Fatal(err)
	}
	pemFile := filepath.Join(dir, "ca.pem")
	tokFile := filepath.Join(dir, "token")
	junk := filepath.Join(dir, "junk.pem")
	for p, b := range map[string][]byte{pemFile: m.CAPEM(), tokFile: []byte(m.APIToken()), junk: []byte("not a certificate")} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name    string
		cf      clientFlags
		env     string
		wantTLS bool
		errText string
	}{
		{name: "--ca PEM", cf: clientFlags{ca: pemFile}, wantTLS: true},
		{name: "--ca key file", cf: clientFlags{ca: keyFile}, wantTLS: true},
		{name: "FORKNODE_CA", env: pemFile, wantTLS: true},
		{name: "--token-file key file", cf: clientFlags{tokenFile: keyFile}, wantTLS: true},
		{name: "--token-file token: system CAs", cf: clientFlags{tokenFile: tokFile}},
		{name: "nothing: system CAs"},
		{name: "--ca not PEM", cf: clientFlags{ca: junk}, errText: "no PEM certificate"},
		{name: "--ca missing", cf: clientFlags{ca: filepath.Join(dir, "nope")}, errText: "ca file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("FORKNODE_CA", tc.env)
			cfg, err := tc.cf.apiTLS()
			if tc.errText != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("err %v, want %q", err, tc.errText)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (cfg != nil) != tc.wantTLS {
				t.Fatalf("tls config %v, want one: %v", cfg, tc.wantTLS)
			}
			if cfg != nil && (cfg.ServerName != keys.ServerName || cfg.RootCAs == nil) {
				t.Fatalf("tls config %+v", cfg)
			}
		})
	}
}

func TestCACommand(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "k")
	if code, _, errOut := capture(t, "keygen", "-o", key); code != 0 {
		t.Fatalf("keygen: %s", errOut)
	}
	code, out, _ := capture(t, "ca", "--key", key)
	if code != 0 || !strings.HasPrefix(out, "-----BEGIN CERTIFICATE-----") {
		t.Fatalf("ca: %d %q", code, out)
	}
	pem := filepath.Join(dir, "ca.pem")
	if code, _, errOut := capture(t, "ca", "--key", key, "-o", pem); code != 0 {
		t.Fatalf("ca -o: %s", errOut)
	}
	if b, err := os.ReadFile(pem); err != nil || string(b) != out {
		t.Fatalf("ca -o wrote %q, %v", b, err)
	}
	if code, _, errOut := capture(t, "ca"); code != 2 || !strings.Contains(errOut, "--key FILE is required") {
		t.Fatalf("ca without --key: %d %s", code, errOut)
	}
}

// A CA given explicitly means TLS: a scheme-less address gets https, and a
// plain http:// one is refused rather than sending the token in clear.
func TestClientCAWantsHTTPS(t *testing.T) {
	dir := t.TempDir()
	m, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	pemFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(pemFile, m.CAPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, addr, ca, env string
		wantBase, errText   string
		wantTLS             bool
	}{
		{name: "--ca, no scheme", addr: "10.0.0.1:7948", ca: pemFile, wantBase: "https://10.0.0.1:7948"},
		{name: "FORKNODE_CA, no scheme", addr: "10.0.0.1:7948", env: pemFile, wantBase: "https://10.0.0.1:7948"},
		{name: "--ca, https", addr: "https://10.0.0.1:7948", ca: pemFile, wantBase: "https://10.0.0.1:7948"},
		{name: "--ca, http", addr: "http://10.0.0.1:7948", ca: pemFile, errText: "plain http, which would send the token unencrypted"},
		{name: "FORKNODE_CA, http", addr: "http://10.0.0.1:7948", env: pemFile, errText: "plain http"},
		{name: "--ca, HTTP in capitals", addr: "HTTP://10.0.0.1:7948", ca: pemFile, errText: "plain http"},
		{name: "--ca, HTTPS in capitals", addr: "HTTPS://10.0.0.1:7948", ca: pemFile, wantBase: "https://10.0.0.1:7948", wantTLS: true},
		{name: "no CA, no scheme: http as before", addr: "127.0.0.1:7400", wantBase: "http://127.0.0.1:7400"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("FORKNODE_CA", tc.env)
			cf := clientFlags{addr: tc.addr, ca: tc.ca, token: "tok"}
			c, err := cf.client()
			if tc.errText != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("err %v, want %q", err, tc.errText)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.BaseURL() != tc.wantBase {
				t.Fatalf("base %s, want %s", c.BaseURL(), tc.wantBase)
			}
			if tc.wantTLS && !c.HasTLSConfig() {
				t.Fatal("a CA was given for an https address and is not used")
			}
		})
	}
}

func TestLoopbackAddrAndKeyMode(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:7948": true, "[::1]:7948": true, "localhost:7948": true, "127.9.9.9:1": true,
		":7948": false, "0.0.0.0:7948": false, "10.0.0.1:7948": false, "[::]:7948": false, "nonsense": false,
	} {
		if got := loopbackAddr(addr); got != want {
			t.Errorf("loopbackAddr(%q) = %v, want %v", addr, got, want)
		}
	}
	path := filepath.Join(t.TempDir(), "k")
	for mode, want := range map[os.FileMode]bool{0o600: false, 0o400: false, 0o640: true, 0o644: true, 0o604: true} {
		if err := os.WriteFile(path, []byte("{}"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		if _, got := looseKeyMode(path); got != want {
			t.Errorf("looseKeyMode(%04o) = %v, want %v", mode, got, want)
		}
	}
}
