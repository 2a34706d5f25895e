package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
)

// version is set at build time: -ldflags "-X main.version=v1.2.3". Left
// empty, versionString describes the build from its build info instead.
var version = ""

// versionString is what `forknode version` prints: the stamped version, or
// the module version, VCS revision and Go version the binary was built
// from, e.g. "forknode (devel) rev aa50995+dirty go1.26.8".
func versionString() string {
	if version != "" {
		return "forknode " + version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "forknode (devel) " + runtime.Version()
	}
	return buildVersion(bi)
}

func buildVersion(bi *debug.BuildInfo) string {
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev string
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	// An untagged module's pseudo-version (v0.0.0-20261124154532-aa50995abcde
	// +dirty) only repeats the revision, which reads better on its own.
	if len(rev) >= 12 && strings.HasPrefix(v, "v0.0.0-") && strings.Contains(v, rev[:12]) {
		v = "(devel)"
	}
	out := "forknode " + v
	if len(rev) > 7 {
		rev = rev[:7]
	}
	// A tag-based pseudo-version already names the revision.
	if rev != "" && !strings.Contains(v, rev) {
		out += " rev " + rev
		if dirty {
			out += "+dirty"
		}
	}
	goVer := bi.GoVersion
	if goVer == "" {
		goVer = runtime.Version()
	}
	return out + " " + goVer
}

// usageError marks a command-line mistake (exit code 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

type command struct {
	name    string
	summary string
	run     func(args []string) error
}

func commands() []command {
	return []command{
		{"agent", "run a forknode node on this host", runAgent},
		{"dev", "run a 3-node local cluster in this process (--demo: fork through every path)", runDev},
		{"keygen", "create a cluster key file", runKeygen},
		{"token", "API tokens: the cluster token of a key; token issue (scoped, expiring), revoke, revoked", runToken},
		{"ca", "print the cluster CA certificate, to verify agents run with --api-tls (for FORKNODE_CA)", runCA},
		{"status", "show the cluster: members, leader, per-host capacity", runStatus},
		{"volume", "manage volumes: create, ls, show, rm, attach, detach, expire", runVolume},
		{"fork", "fork a volume: fork SOURCE NAME [--via clone|copy|replica|stream] [--wait]", runFork},
		{"forks", "list, show or cancel forks: forks ls | forks show ID | forks cancel ID", runForks},
		{"node", "remove a dead node for good: node rm NAME", runNode},
		{"version", "print the version", func([]string) error { fmt.Println(versionString()); return nil }},
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, "forknode: block-level forks of database volumes\n\nUsage: forknode COMMAND [flags]\n\nCommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `  help     show this help

Client commands talk to --addr or $FORKNODE_ADDR (default `+defaultAddr+`) with the
token from --token, $FORKNODE_TOKEN or --token-file. Run 'forknode COMMAND -h' for flags.
`)
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 {
		usage(os.Stderr)
		return 2
	}
	name := args[0]
	switch name {
	case "help", "-h", "--help", "-help":
		usage(os.Stdout)
		return 0
	case "-v", "--version":
		name = "version"
	}
	for _, c := range commands() {
		if c.name != name {
			continue
		}
		err := c.run(args[1:])
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		}
		fmt.Fprintf(os.Stderr, "forknode: %s\n", strings.TrimPrefix(err.Error(), "forknode: "))
		var ce *tls.CertificateVerificationError
		if errors.As(err, &ce) {
			fmt.Fprintln(os.Stderr, "forknode: an agent run with --api-tls is verified with the cluster CA: pass --ca FILE (from `forknode ca --key cluster.key`), set FORKNODE_CA, or use --token-file with the key file")
		}
		var ue *usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	fmt.Fprintf(os.Stderr, "forknode: unknown command %q (run 'forknode help')\n", name)
	return 2
}

// parseInterspersed parses flags that may come before, between or after the
// positional arguments (`volume create NAME --size 1GiB`), which the flag
// package alone does not allow. "--" ends flag parsing.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(os.Stdout)
				fs.Usage()
				return nil, err
			}
			return nil, usagef("%s: %v", fs.Name(), err)
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func newFlagSet(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: forknode %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// wantArgs checks the number of positional arguments.
func wantArgs(cmd string, pos []string, n int, names string) error {
	if len(pos) != n {
		return usagef("%s: want %s, got %d argument(s)", cmd, names, len(pos))
	}
	return nil
}
