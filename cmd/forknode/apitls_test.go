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
