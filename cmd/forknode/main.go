package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/forknode/forknode/internal/api"
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
token from --token, else --token-file, else $FORKNODE_TOKEN. Run 'forknode COMMAND -h' for flags.
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
		jsonPrinted = false
		err := c.run(args[1:])
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		}
		msg := strings.TrimPrefix(err.Error(), "forknode: ")
		fmt.Fprintf(os.Stderr, "forknode: %s\n", msg)
		hint := errorHint(err)
		if hint != "" {
			fmt.Fprintf(os.Stderr, "forknode: %s\n", hint)
		}
		var ue *usageError
		isUsage := errors.As(err, &ue)
		if wantsJSON(args[1:]) && !jsonPrinted {
			// A script that asked for JSON gets its error as JSON too, on
			// stdout, with the API's stable code to branch on (unless the
			// command printed its document already: a failed fork under
			// --wait --json is that fork, with its error, and one document
			// is what a script parses).
			body := jsonError{Error: msg, Hint: hint}
			var ae *api.Error
			switch {
			case errors.As(err, &ae):
				body.Code, body.Status = ae.Code, ae.Status
			case isUsage:
				body.Code = "usage"
			}
			_ = printJSON(body)
		}
		if isUsage {
			return 2
		}
		return 1
	}
	fmt.Fprintf(os.Stderr, "forknode: unknown command %q (run 'forknode help')\n", name)
	return 2
}

// jsonError is what a command run with --json prints on stdout when it
// fails (its text goes to stderr as always).
type jsonError struct {
	Error  string `json:"error"`
	Code   string `json:"code,omitempty"`   // the API's code (api.Code*), or "usage"
	Status int    `json:"status,omitempty"` // HTTP status, for errors from a node
	Hint   string `json:"hint,omitempty"`
}

// wantsJSON reports whether the command's own arguments ask for --json.
func wantsJSON(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "--json", "-json", "--json=true", "-json=true":
			return true
		}
	}
	return false
}

// errorHint suggests the fix for errors whose message alone does not.
func errorHint(err error) string {
	var ce *tls.CertificateVerificationError
	switch {
	case errors.As(err, &ce):
		return "an agent run with --api-tls is verified with the cluster CA: pass --ca FILE (from `forknode ca --key cluster.key`), set FORKNODE_CA, or use --token-file with the key file"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "no forknode API listens there: is the agent (or forknode dev) running? Check --addr or FORKNODE_ADDR (default " + defaultAddr + "; forknode dev prints its address)"
	case errors.Is(err, context.DeadlineExceeded):
		return "no answer in time: the node may be overloaded or unreachable; --timeout raises the bound (default 30s)"
	}
	return ""
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
