package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/forknode/forknode/internal/api"
	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/keys"
)

// defaultAddr is the API of an agent with default flags, and of `forknode
// dev`'s first node (its --base-port default is that port).
const defaultAddr = "http://" + defaultAPIAddr

// clientFlags are shared by every client command.
type clientFlags struct {
	addr, token, tokenFile, ca string
	json                       bool
	timeout                    time.Duration
}

func addClientFlags(fs *flag.FlagSet, cf *clientFlags, read bool) {
	fs.StringVar(&cf.addr, "addr", "", "node API address (default $FORKNODE_ADDR, else "+defaultAddr+")")
	fs.StringVar(&cf.token, "token", "", "API token (default: --token-file, else $FORKNODE_TOKEN); other users see it in ps, so prefer the variable or --token-file")
	fs.StringVar(&cf.tokenFile, "token-file", "", "file holding the API token, or the cluster key file itself (wins over $FORKNODE_TOKEN)")
	fs.StringVar(&cf.ca, "ca", "", "for an https:// address of an agent run with --api-tls: the cluster CA PEM (from: forknode ca --key K) or the cluster key file (default $FORKNODE_CA, else the --token-file key, else the system's CAs)")
	fs.DurationVar(&cf.timeout, "timeout", 30*time.Second, "bound on each API request")
	if read {
		fs.BoolVar(&cf.json, "json", false, "print JSON instead of a table")
	}
}

func (cf *clientFlags) client() (*api.Client, error) {
	addr := cf.addr
	if addr == "" {
		addr = os.Getenv("FORKNODE_ADDR")
	}
	if addr == "" {
		addr = defaultAddr
	}
	// Stray whitespace (a newline from $(...) or a pasted value) is never
	// part of a token, and net/http refuses a header that holds it.
	tok := strings.TrimSpace(cf.token)
	if tok == "" && cf.tokenFile != "" {
		var err error
		if tok, err = readTokenFile(cf.tokenFile); err != nil {
			return nil, err
		}
	}
	if tok == "" {
		tok = strings.TrimSpace(os.Getenv("FORKNODE_TOKEN"))
	}
	if tok == "" {
		return nil, usagef("no API token: set FORKNODE_TOKEN=$(forknode token issue --key cluster.key --ttl 30d), or pass --token or --token-file")
	}
	// A CA named explicitly means TLS is wanted: an address without a
	// scheme gets https, and a plain http:// one is refused rather than
	// sending the token in clear while the CA goes unused.
	if cf.ca != "" || os.Getenv("FORKNODE_CA") != "" {
		switch lower := strings.ToLower(addr); {
		case strings.HasPrefix(lower, "http://"):
			return nil, usagef("a CA was given (--ca or FORKNODE_CA) but %s is plain http, which would send the token unencrypted: use https:// with an agent run with --api-tls, or drop the CA", addr)
		case !strings.Contains(addr, "://"):
			addr = "https://" + addr
		}
	}
	c, err := api.NewClient(addr, tok)
	if err != nil {
		return nil, usagef("%v", err)
	}
	if strings.HasPrefix(strings.ToLower(addr), "https://") {
		tlsCfg, err := cf.apiTLS()
		if err != nil {
			return nil, err
		}
		if tlsCfg != nil {
			tr := http.DefaultTransport.(*http.Transport).Clone()
			tr.TLSClientConfig = tlsCfg
			c.SetTransport(tr)
		}
	}
	c.Timeout = cf.timeout
	var warned bool
	c.OnStale = func(_, _ string) {
		if !warned { // once per command, however many requests it makes
			warned = true
			fmt.Fprintf(os.Stderr, "forknode: warning: %s could not reach the cluster's leader and answered from its own copy of the catalog, which may miss recent changes\n", addr)
		}
	}
	return c, nil
}

// apiTLS is how an https:// API is verified: against the cluster CA from
// --ca / $FORKNODE_CA (a CA PEM or the key file), else from a --token-file
// that is the key file; nil leaves the system's CAs (a node behind a proxy
// with a public certificate).
func (cf *clientFlags) apiTLS() (*tls.Config, error) {
	path := cf.ca
	if path == "" {
		path = os.Getenv("FORKNODE_CA")
	}
	if path == "" && cf.tokenFile != "" && isKeyFile(cf.tokenFile) {
		path = cf.tokenFile
	}
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ca file: %w", err)
	}
	if isKeyJSON(b) {
		m, err := keys.Load(path)
		if err != nil {
			return nil, err
		}
		b = m.CAPEM()
	}
	cfg, err := keys.APIClientTLS(b)
	if err != nil {
		return nil, fmt.Errorf("ca file %s: %w", path, err)
	}
	return cfg, nil
}

// isKeyJSON tells a cluster key file (JSON) from a token or a PEM file.
func isKeyJSON(b []byte) bool { return strings.HasPrefix(strings.TrimSpace(string(b)), "{") }

func isKeyFile(path string) bool {
	b, err := os.ReadFile(path)
	return err == nil && isKeyJSON(b)
}

// readTokenFile accepts a file holding the token, or the cluster key file
// (the token is derived from it).
func readTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	if isKeyJSON(b) {
		m, err := keys.Load(path)
		if err != nil {
			return "", err
		}
		return m.APIToken(), nil
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return tok, nil
}

// jsonPrinted records that this command printed its JSON document, so
// that a failure after it (a fork that failed under --wait --json) adds
// no second document to stdout.
var jsonPrinted bool

func printJSON(v any) error {
	jsonPrinted = true
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// flagSet reports whether the flag name was given on the command line, to
// tell "missing" from an explicit zero.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func table(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func ago(unixNanos int64) string {
	if unixNanos == 0 {
		return "-"
	}
	d := time.Since(time.Unix(0, unixNanos)).Round(time.Second)
	if d < 0 {
		d = 0
	}
	return d.String() + " ago"
}

// ---- status

func runStatus(args []string) error {
	var cf clientFlags
	fs := newFlagSet("status", "status [--json]")
	addClientFlags(fs, &cf, true)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("status", pos, 0, "no arguments"); err != nil {
		return err
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	st, err := c.Status(context.Background())
	if err != nil {
		return err
	}
	if cf.json {
		return printJSON(st)
	}
	leader := st.Leader
	if leader == "" {
		leader = "(none)"
	}
	fmt.Printf("node %s (region %s, raft %s), leader %s\n", st.Node, st.Region, st.RaftState, leader)
	fmt.Printf("catalog version %d", st.CatalogVersion)
	if st.NodeCatalogVersion > st.CatalogVersion {
		fmt.Printf(" (this node applies up to %d; the leader raises it once every server does)", st.NodeCatalogVersion)
	}
	fmt.Println()
	for _, m := range st.Members {
		if m.Status == "alive" && m.CatalogVersion < st.CatalogVersion {
			fmt.Printf("member %s applies catalog version %d, older than the cluster's: upgrade it, it is kept out of the catalog until then\n",
				m.Name, m.CatalogVersion)
		}
	}
	if p := st.Pace; p != nil {
		why := "idle"
		switch {
		case p.Congested != "":
			why = "backing off: " + p.Congested
		case p.Active:
			why = "forks running"
		}
		fmt.Printf("fork I/O pacing: %s/s of %s/s (%s)\n", humanSize(p.Rate), humanSize(p.Ceiling), why)
	}
	fmt.Println()
	tw := table(os.Stdout)
	fmt.Fprintln(tw, "MEMBER\tREGION\tSTATUS\tVOTER\tAPI")
	for _, m := range st.Members {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\n", m.Name, m.Region, m.Status, m.Voter, dash(m.APIAddr))
	}
	tw.Flush()
	fmt.Println()
	tw = table(os.Stdout)
	fmt.Fprintln(tw, "HOST\tREGION\tBACKEND\tCLONE\tALIVE\tVOLUMES\tBUDGET\tUSED\tFREE")
	for _, h := range st.Hosts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%v\t%d\t%s\t%s\t%s\n", h.ID, h.Region, h.Backend, h.CanClone, h.Alive,
			h.Volumes, humanSize(h.Budget), humanSize(h.Used), humanSize(h.Free))
	}
	return tw.Flush()
}

// ---- volumes

func runVolume(args []string) error {
	if len(args) == 0 {
		return usagef("volume: want a subcommand: create, ls, show, rm, attach, detach, expire")
	}
	switch args[0] {
	case "create":
		return volumeCreate(args[1:])
	case "ls", "list":
		return volumeList(args[1:])
	case "show", "get":
		return volumeOne("show", args[1:])
	case "rm", "delete":
		return volumeOne("rm", args[1:])
	case "attach":
		return volumeOne("attach", args[1:])
	case "detach":
		return volumeOne("detach", args[1:])
	case "expire":
		return volumeExpire(args[1:])
	case "-h", "--help", "help":
		fmt.Println("Usage: forknode volume create NAME --size SIZE [--app A] [--host H] [--region R] [--ttl DUR] [--wait]\n       forknode volume expire ID-OR-NAME --in DUR | --never\n       forknode volume ls|show ID|rm ID|attach ID|detach ID")
		return nil
	}
	return usagef("volume: unknown subcommand %q: want create, ls, show, rm, attach, detach, expire", args[0])
}

func volumeCreate(args []string) error {
	var cf clientFlags
	var req api.CreateVolumeRequest
	var ttl time.Duration
	fs := newFlagSet("volume create", "volume create NAME --size SIZE [--app A] [--host H] [--region R] [--ttl DUR] [--wait]")
	addClientFlags(fs, &cf, true)
	sizeVar(fs, &req.Size, "size", 0, "volume size, e.g. 1GiB (required)")
	fs.StringVar(&req.App, "app", "", "app the volume belongs to")
	fs.StringVar(&req.Host, "host", "", "host to place it on (default: chosen by the catalog)")
	fs.StringVar(&req.Region, "region", "", "preferred region when --host is not given")
	ttlVar(fs, &ttl, "ttl", "delete the volume this long after it is created, e.g. 36h, 7d or 1d12h (default: never)")
	wait := fs.Bool("wait", false, "wait until the host made the volume ready")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("volume create", pos, 1, "NAME"); err != nil {
		return err
	}
	req.Name = pos[0]
	req.TTLSeconds = int64(ttl / time.Second)
	if !flagSet(fs, "size") {
		return usagef("volume create: --size is required (e.g. --size 1GiB)")
	}
	if req.Size <= 0 {
		return usagef("volume create: --size must be positive, got %d (e.g. --size 1GiB)", req.Size)
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	ctx := context.Background()
	if *wait && cf.timeout < 90*time.Second {
		c.Timeout = 90 * time.Second // the server waits up to 60 s
	}
	v, err := c.CreateVolume(ctx, req, *wait)
	if err != nil {
		return err
	}
	if cf.json {
		if err := printJSON(v); err != nil {
			return err
		}
	} else {
		fmt.Printf("volume %s (%s) on %s: %s, %s%s\n", v.Name, v.ID, v.Host, humanSize(v.Size), v.State, expiresNote(v.ExpiresAt))
	}
	if *wait && v.State != "ready" {
		return fmt.Errorf("volume %s is %s, not ready", v.ID, v.State)
	}
	return nil
}

func volumeList(args []string) error {
	var cf clientFlags
	fs := newFlagSet("volume ls", "volume ls [--json]")
	addClientFlags(fs, &cf, true)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("volume ls", pos, 0, "no arguments"); err != nil {
		return err
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	vols, err := c.Volumes(context.Background())
	if err != nil {
		return err
	}
	if cf.json {
		return printJSON(api.VolumeList{Volumes: vols})
	}
	sort.Slice(vols, func(i, j int) bool {
		if vols[i].CreatedAt != vols[j].CreatedAt {
			return vols[i].CreatedAt < vols[j].CreatedAt
		}
		return vols[i].ID < vols[j].ID
	})
	tw := table(os.Stdout)
	fmt.Fprintln(tw, "ID\tNAME\tAPP\tHOST\tSIZE\tSTATE\tORIGIN\tCREATED\tEXPIRES")
	now := time.Now()
	for _, v := range vols {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.ID, v.Name, dash(v.App), v.Host, humanSize(v.Size),
			v.State, dash(v.Origin), ago(v.CreatedAt), expiresText(v.ExpiresAt, now))
	}
	return tw.Flush()
}

func volumeOne(op string, args []string) error {
	var cf clientFlags
	fs := newFlagSet("volume "+op, "volume "+op+" ID-OR-NAME")
	addClientFlags(fs, &cf, true)
	wait := false
	if op == "rm" {
		fs.BoolVar(&wait, "wait", false, "wait until the host removed the data")
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("volume "+op, pos, 1, "ID-OR-NAME"); err != nil {
		return err
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	ctx := context.Background()
	switch op {
	case "show":
		v, err := c.Volume(ctx, pos[0])
		if err != nil {
			return err
		}
		if cf.json {
			return printJSON(v)
		}
		tw := table(os.Stdout)
		for _, kv := range [][2]string{
			{"id", v.ID}, {"name", v.Name}, {"app", dash(v.App)}, {"host", v.Host},
			{"size", fmt.Sprintf("%s (%d bytes)", humanSize(v.Size), v.Size)}, {"state", string(v.State)},
			{"origin", dash(v.Origin)}, {"fork", dash(v.ForkID)}, {"created", ago(v.CreatedAt)},
			{"expires", expiresAt(v.ExpiresAt)},
		} {
			fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
		}
		return tw.Flush()
	case "rm":
		path := "/v1/volumes/" + pathEscape(pos[0])
		if wait {
			path += "?wait=1"
			if c.Timeout < 90*time.Second {
				c.Timeout = 90 * time.Second
			}
		}
		var v api.Volume
		if err := c.Do(ctx, "DELETE", path, nil, &v, nil); err != nil {
			return err
		}
		if wait {
			if _, err := c.Volume(ctx, v.ID); api.IsCode(err, api.CodeNotFound) {
				// The server answered with the volume as it was while
				// deleting; both outputs report how the wait ended.
				v.State = api.VolumeDeleted
			} else if err == nil {
				return fmt.Errorf("volume %s is still %s on %s after the wait", v.ID, v.State, v.Host)
			}
		}
		if cf.json {
			return printJSON(v)
		}
		fmt.Printf("volume %s (%s) on %s: %s\n", v.Name, v.ID, v.Host, v.State)
		return nil
	case "attach", "detach":
		var r *api.AttachResponse
		if op == "attach" {
			r, err = c.Attach(ctx, pos[0])
		} else {
			r, err = c.Detach(ctx, pos[0])
		}
		if err != nil {
			return err
		}
		if cf.json {
			return printJSON(r)
		}
		if op == "attach" {
			fmt.Printf("volume %s attached on %s at %s\n", r.Volume.ID, r.Host, r.Device)
		} else {
			fmt.Printf("volume %s detached on %s\n", r.Volume.ID, r.Host)
		}
		return nil
	}
	return usagef("volume: unknown subcommand %q", op)
}

// expiresAt renders an expiry for `volume show`: the time and how far off.
func expiresAt(unixNanos int64) string {
	if unixNanos == 0 {
		return "never"
	}
	return time.Unix(0, unixNanos).UTC().Format(time.RFC3339) + " (" + expiresText(unixNanos, time.Now()) + ")"
}

// expiresNote is a one-line summary's tail: "" or ", expires in 36h0m0s".
func expiresNote(unixNanos int64) string {
	if unixNanos == 0 {
		return ""
	}
	return ", expires " + expiresText(unixNanos, time.Now())
}

func volumeExpire(args []string) error {
	var cf clientFlags
	var in time.Duration
	fs := newFlagSet("volume expire", "volume expire ID-OR-NAME --in DUR | --never")
	addClientFlags(fs, &cf, true)
	ttlVar(fs, &in, "in", "delete the volume this long from now, e.g. 2h or 3d")
	never := fs.Bool("never", false, "clear the expiry: the volume stays until deleted by hand")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("volume expire", pos, 1, "ID-OR-NAME"); err != nil {
		return err
	}
	if (in == 0) == !*never {
		return usagef("volume expire: give exactly one of --in DUR or --never")
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	v, err := c.SetTTL(context.Background(), pos[0], in)
	if err != nil {
		return err
	}
	if cf.json {
		return printJSON(v)
	}
	fmt.Printf("volume %s (%s): expires %s\n", v.Name, v.ID, expiresAt(v.ExpiresAt))
	return nil
}

// ---- forks

func runFork(args []string) error {
	var cf clientFlags
	var req api.CreateForkRequest
	var ttl time.Duration
	fs := newFlagSet("fork", `fork SOURCE NAME [--host H] [--region R] [--via clone|copy|replica|stream] [--app A] [--rate-limit SIZE] [--ttl DUR] [--checkpoint DSN] [--idempotency-key K] [--wait]

SOURCE is a volume id (vol_...), a volume name, an app (its best ready
volume; "app:" always means the app), or app:vol_id (that volume, never a
replica). A name that is both an app and another app's volume is refused
as ambiguous. Examples:
  forknode fork shop pg-staging --wait             # the app's best volume
  forknode fork pg pg-far --via stream --wait      # the volume named pg, streamed
  forknode fork shop:vol_0123 pg-pr42 --ttl 3d     # pinned, deleted after 3 days`)
	addClientFlags(fs, &cf, true)
	fs.StringVar(&req.Host, "host", "", "target host")
	fs.StringVar(&req.Region, "region", "", "target region")
	fs.StringVar(&req.Via, "via", "", "force the path: clone, copy, replica or stream")
	fs.StringVar(&req.App, "app", "", "app of the new volume (default: none, so a fork is never taken for a replica of the source's app)")
	sizeVar(fs, &req.RateLimit, "rate-limit", 0, "cap this fork's copy or stream at SIZE bytes/s, e.g. 20MiB, below the hosts' own --rate-limit (0: the hosts' limits only)")
	ttlVar(fs, &ttl, "ttl", "delete the new volume this long after the fork, e.g. 72h, 7d or 1d12h (default: never)")
	ckpt := fs.String("checkpoint", "", "run CHECKPOINT on this PostgreSQL (postgres://...) just before the fork, for a short crash recovery")
	wait := fs.Bool("wait", false, "wait for the fork, showing progress; fail if the fork fails")
	key := fs.String("idempotency-key", "", "retry-safe key: the same key returns the same fork")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("fork", pos, 2, "SOURCE NAME"); err != nil {
		return err
	}
	req.Source, req.Name = pos[0], pos[1]
	req.TTLSeconds = int64(ttl / time.Second)
	c, err := cf.client()
	if err != nil {
		return err
	}
	ctx := context.Background()
	if *ckpt != "" {
		took, err := checkpoint(ctx, *ckpt)
		if err != nil {
			return err
		}
		if !cf.json {
			fmt.Printf("checkpoint done in %s\n", took.Round(time.Millisecond))
		}
	}
	f, err := c.CreateFork(ctx, req, *key)
	if err != nil {
		return err
	}
	if !*wait {
		if cf.json {
			return printJSON(f)
		}
		fmt.Printf("fork %s: %s -> %s via %s (%s -> %s), %s\n", f.ID, f.SourceVolume, f.Name, f.Path, f.SourceHost, f.TargetHost, f.State)
		return nil
	}
	if !cf.json {
		fmt.Printf("fork %s: %s -> %s via %s (%s -> %s)\n", f.ID, f.SourceVolume, f.Name, f.Path, f.SourceHost, f.TargetHost)
	}
	return followFork(ctx, c, f.ID, cf.json)
}

// followFork waits for fork id, showing its progress, and reports how it
// ended: fork --wait, and forks show --wait to come back to one.
func followFork(ctx context.Context, c *api.Client, id string, asJSON bool) error {
	// A redrawn bar on a terminal, plain lines when piped.
	p := newProgress(os.Stdout, isTerminal(os.Stdout))
	if asJSON {
		p = nil // JSON callers get only the final document
	}
	// Ctrl-C stops the waiting, not the fork: say so, and how to stop it.
	wctx, stop := interruptible(ctx)
	defer stop()
	final, werr := c.WaitFork(wctx, id, 300*time.Millisecond, p.update)
	p.done()
	if werr != nil && wctx.Err() != nil && ctx.Err() == nil {
		return fmt.Errorf("interrupted: fork %s goes on in the cluster; follow it again with `forknode forks show %s --wait`, stop it with `forknode forks cancel %s`", id, id, id)
	}
	if final != nil && asJSON {
		if err := printJSON(final); err != nil {
			return err
		}
	}
	if werr != nil {
		return werr
	}
	if !asJSON {
		fmt.Printf("fork %s ready: volume %s (%s) on %s, %s in %s%s\n", final.ID, final.Name, final.TargetVolume, final.TargetHost,
			humanSize(final.BytesTotal), forkDuration(*final), ratioText(*final))
	}
	return nil
}

// interruptible is ctx cancelled by SIGINT or SIGTERM (a test swaps it).
var interruptible = func(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
}

// forkDuration is how long a fork took, or for one still running how
// long it has been running: by this machine's clock, since its last
// progress update may be seconds old (a clock behind the leader's falls
// back to that update).
func forkDuration(f api.Fork) string {
	end, round := f.FinishedAt, time.Millisecond
	if end == 0 {
		end = max(f.UpdatedAt, time.Now().UnixNano())
		round = time.Second
	}
	if end <= f.CreatedAt {
		return "-"
	}
	return time.Duration(end - f.CreatedAt).Round(round).String()
}

func ratioText(f api.Fork) string {
	if f.CompressionRatio == 0 {
		return ""
	}
	return fmt.Sprintf(", %s on the wire (ratio %.2f)", humanSize(f.WireBytes), f.CompressionRatio)
}

func runForks(args []string) error {
	if len(args) == 0 {
		args = []string{"ls"}
	}
	switch args[0] {
	case "ls", "list":
		return forksList(args[1:])
	case "show", "get":
		return forkShow(args[1:])
	case "cancel":
		return forkCancel(args[1:])
	case "-h", "--help", "help":
		fmt.Println("Usage: forknode forks ls [--json] | forknode forks show ID [--json] [--wait] | forknode forks cancel ID [--json] [--wait]")
		return nil
	}
	return usagef("forks: unknown subcommand %q: want ls, show or cancel", args[0])
}

func forksList(args []string) error {
	var cf clientFlags
	fs := newFlagSet("forks ls", "forks ls [--json]")
	addClientFlags(fs, &cf, true)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("forks ls", pos, 0, "no arguments"); err != nil {
		return err
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	forks, err := c.Forks(context.Background())
	if err != nil {
		return err
	}
	if cf.json {
		return printJSON(api.ForkList{Forks: forks})
	}
	sort.Slice(forks, func(i, j int) bool {
		if forks[i].CreatedAt != forks[j].CreatedAt {
			return forks[i].CreatedAt < forks[j].CreatedAt
		}
		return forks[i].ID < forks[j].ID
	})
	tw := table(os.Stdout)
	fmt.Fprintln(tw, "ID\tNAME\tSOURCE\tPATH\tHOSTS\tSTATE\tPROGRESS\tSIZE\tELAPSED")
	for _, f := range forks {
		state := string(f.State)
		if f.Error != "" {
			state += ": " + f.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s -> %s\t%s\t%.0f%%\t%s\t%s\n", f.ID, f.Name, f.SourceVolume, f.Path,
			f.SourceHost, f.TargetHost, state, f.Percent, humanSize(f.BytesTotal), forkDuration(f))
	}
	return tw.Flush()
}

func forkShow(args []string) error {
	var cf clientFlags
	fs := newFlagSet("forks show", "forks show ID [--json] [--wait]")
	addClientFlags(fs, &cf, true)
	wait := fs.Bool("wait", false, "follow the fork until it ends, showing progress (as fork --wait); fail if it fails")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("forks show", pos, 1, "ID"); err != nil {
		return err
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	if *wait {
		return followFork(context.Background(), c, pos[0], cf.json)
	}
	f, err := c.Fork(context.Background(), pos[0])
	if err != nil {
		return err
	}
	if cf.json {
		return printJSON(f)
	}
	rows := [][2]string{
		{"id", f.ID}, {"name", f.Name}, {"state", string(f.State)}, {"path", string(f.Path)},
		{"source", fmt.Sprintf("%s on %s", f.SourceVolume, f.SourceHost)},
		{"target", fmt.Sprintf("%s on %s", f.TargetVolume, f.TargetHost)},
		{"bytes", fmt.Sprintf("%s of %s (%.1f%%)", humanSize(f.BytesDone), humanSize(f.BytesTotal), f.Percent)},
	}
	if f.WireBytes > 0 {
		wire := humanSize(f.WireBytes)
		if f.CompressionRatio > 0 { // derived only once it means something
			wire += fmt.Sprintf(" (compression ratio %.2f)", f.CompressionRatio)
		}
		rows = append(rows, [2]string{"wire", wire})
	}
	if f.RateBytesPerSec > 0 {
		rows = append(rows, [2]string{"rate", humanSize(int64(f.RateBytesPerSec)) + "/s"})
	}
	if f.RateLimit > 0 {
		rows = append(rows, [2]string{"rate limit", humanSize(f.RateLimit) + "/s (this fork's own cap)"})
	}
	if f.ETASeconds > 0 {
		rows = append(rows, [2]string{"eta", (time.Duration(f.ETASeconds * float64(time.Second))).Round(time.Second).String()})
	}
	took := "took"
	if !f.Finished() {
		took = "running for"
	}
	rows = append(rows, [2]string{"created", ago(f.CreatedAt)}, [2]string{took, forkDuration(*f)})
	if f.Error != "" {
		rows = append(rows, [2]string{"error", f.Error})
	}
	tw := table(os.Stdout)
	for _, kv := range rows {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
	}
	return tw.Flush()
}

// cancelWaitBound bounds `forks cancel --wait`: the target's host removes
// the volume on its next executor pass, seconds at most when it is alive.
const cancelWaitBound = 2 * time.Minute

func forkCancel(args []string) error {
	var cf clientFlags
	fs := newFlagSet("forks cancel", "forks cancel ID [--json] [--wait]")
	addClientFlags(fs, &cf, true)
	wait := fs.Bool("wait", false, "wait until the target volume is removed")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs("forks cancel", pos, 1, "ID"); err != nil {
		return err
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	ctx := context.Background()
	// The server's cancel returns a failed fork unchanged; look first, so
	// a second cancel says so instead of claiming to cancel it again, even
	// through a node that predates the answer's "already".
	f, err := c.Fork(ctx, pos[0])
	if err != nil {
		return err
	}
	already := f.State == fsm.ForkFailed
	raced := false // it ended between the look and the cancel
	if !already {
		// A ready fork is refused by the server with a hint to remove
		// its volume instead.
		res, err := c.CancelFork(ctx, pos[0])
		if err != nil {
			return err
		}
		f = &res.Fork
		// Only a cancel records ForkCancelledError: another error means
		// the fork failed on its own, even from a node without "already".
		already = res.Already || f.Error != api.ForkCancelledError
		raced = already
	}
	if !cf.json {
		switch {
		case already && f.Error == api.ForkCancelledError:
			fmt.Printf("fork %s already cancelled\n", f.ID)
		case raced:
			fmt.Printf("fork %s had already failed (%s); target volume %s is being removed\n", f.ID, f.Error, f.Name)
		case already:
			fmt.Printf("fork %s already failed: %s\n", f.ID, f.Error)
		default:
			fmt.Printf("fork %s cancelled (target volume %s is being removed)\n", f.ID, f.Name)
		}
	}
	if *wait {
		if err := waitVolumeGone(ctx, c, f.TargetVolume, cancelWaitBound); err != nil {
			return err
		}
		if !cf.json {
			fmt.Printf("target volume %s (%s) removed from %s\n", f.Name, f.TargetVolume, f.TargetHost)
		}
	}
	if cf.json {
		// "already": this call cancelled nothing (see api.CancelForkResponse).
		return printJSON(api.CancelForkResponse{Fork: *f, Already: already})
	}
	return nil
}

// waitVolumeGone polls until the catalog no longer knows the volume: its
// host removed the data and purged the record. A leader election on the
// way is waited out.
func waitVolumeGone(ctx context.Context, c *api.Client, id string, bound time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	t := time.NewTicker(300 * time.Millisecond)
	defer t.Stop()
	for {
		v, err := c.Volume(ctx, id)
		switch {
		case api.IsCode(err, api.CodeNotFound):
			return nil
		case err == nil, api.IsCode(err, api.CodeNoLeader), api.IsCode(err, api.CodeTimeout), api.IsCode(err, api.CodeUnavailable):
		default:
			return err
		}
		select {
		case <-ctx.Done():
			state := "unknown"
			if v != nil {
				state = fmt.Sprintf("%s on %s", v.State, v.Host)
			}
			return fmt.Errorf("volume %s still in the catalog (%s) after %s; its host removes it when it can", id, state, bound)
		case <-t.C:
		}
	}
}

// ---- nodes

func runNode(args []string) error {
	if len(args) == 0 || (args[0] != "rm" && args[0] != "remove") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Println("Usage: forknode node rm NAME [--json]   (a stopped or dead node only; or stop a running one with agent --leave-on-stop)")
			return nil
		}
		return usagef("node: want 'node rm NAME'")
	}
	var cf clientFlags
	fs := newFlagSet("node rm", "node rm NAME [--json]   (a stopped or dead node: it leaves raft and the hosts for good)")
	addClientFlags(fs, &cf, true)
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	if err := wantArgs("node rm", pos, 1, "NAME"); err != nil {
		return err
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	if err := c.RemoveNode(context.Background(), pos[0]); err != nil {
		return err
	}
	if cf.json {
		return printJSON(struct {
			Node    string `json:"node"`
			Removed bool   `json:"removed"`
		}{pos[0], true})
	}
	fmt.Printf("node %s removed from the cluster\n", pos[0])
	return nil
}
