package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

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
	keyFile := fs.String("key", "", "cluster key file (required)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("token", pos, 0, "no arguments"); err != nil {
		return err
	}
	if *keyFile == "" {
		return usagef("token: --key FILE is required")
	}
	m, err := loadKey(*keyFile)
	if err != nil {
		return err
	}
	fmt.Println(m.APIToken())
	return nil
}

func runCA(args []string) error {
	fs := newFlagSet("ca", "ca --key FILE [-o ca.pem]")
	keyFile := fs.String("key", "", "cluster key file (required)")
	out := fs.String("o", "", "write the PEM here instead of stdout")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("ca", pos, 0, "no arguments"); err != nil {
		return err
	}
	if *keyFile == "" {
		return usagef("ca: --key FILE is required")
	}
	m, err := loadKey(*keyFile)
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

func loadKey(path string) (*keys.Material, error) {
	m, err := keys.Load(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("key file %s does not exist; create one with `forknode keygen -o %s`", path, path)
	}
	return m, err
}
