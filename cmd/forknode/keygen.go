package main

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"

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
	fmt.Printf("copy it to every node (agent --key %s), and for the CLI:\n", *out)
	fmt.Printf("  export FORKNODE_TOKEN=$(forknode token --key %s)\n", *out)
	return nil
}

func runToken(args []string) error {
	fs := newFlagSet("token", "token --key FILE")
	m, err := keyCommand("token", fs, args)
	if err != nil {
		return err
	}
	fmt.Println(m.APIToken())
	return nil
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
