package e2e

// Acceptance tests for cluster security, against agents in network
// namespaces: a node with another key cannot join, the API answers 401
// without the token and says nothing, the cluster port drops anyone
// without a certificate from the cluster CA, and a block stream on the
// wire carries none of the volume's plaintext.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/api"
	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/keys"
	"github.com/forknode/forknode/internal/testutil"
	"github.com/klauspost/compress/s2"
)

// ftMemberNames and ftHostIDs summarise a status for comparison.
func ftMemberNames(st *api.Status) []string {
	var out []string
	for _, m := range st.Members {
		out = append(out, fmt.Sprintf("%s voter=%v", m.Name, m.Voter))
	}
	sort.Strings(out)
	return out
}

func ftHostIDs(st *api.Status) []string {
	var out []string
	for _, h := range st.Hosts {
		out = append(out, h.ID)
	}
	sort.Strings(out)
	return out
}

// TestSecurityForeignKeyCannotJoin starts an agent with another cluster key
// that names the real cluster's gossip addresses: it must never show up as
// a member, a voter or a host, and it must not learn the catalog.
func TestSecurityForeignKeyCannotJoin(t *testing.T) {
	c := startFaultCluster(t, faultOpts{nodes: 2, namespaces: 3})
	c.createVolume("real-secret-vol", 4*mib, 0)
	ctx := context.Background()
	before, err := c.client(0).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantMembers, wantHosts := ftMemberNames(before), ftHostIDs(before)

	other := filepath.Join(c.dir, "other.key")
	if out, err := runRoot(c.bin, "keygen", "-o", other); err != nil {
		t.Fatalf("keygen: %v: %s", err, out)
	}
	otherTok, err := runRoot(c.bin, "token", "--key", other)
	if err != nil {
		t.Fatal(err)
	}
	h := c.env.hosts[2]
	intruder := h.StartAgent(c.bin, c.logs,
		"--name", "intruder", "--data-dir", filepath.Join(c.dir, "intruder"),
		"--gossip-addr", h.IP+":7946", "--cluster-addr", h.IP+":7947", "--api-addr", h.IP+":7948",
		"--bootstrap-expect", "3", "--region", "r1", "--key", other, "--log-level", "debug",
		"--join", c.gossipAddr(0)+","+c.gossipAddr(1))

	// For 5 s (plus), every real node's view stays exactly what it was.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for i := 0; i < c.n; i++ {
			st, err := c.client(i).Status(ctx)
			if err != nil {
				t.Fatalf("status of %s: %v", c.name(i), err)
			}
			if m, hs := ftMemberNames(st), ftHostIDs(st); !slices.Equal(m, wantMembers) || !slices.Equal(hs, wantHosts) {
				t.Fatalf("%s's view changed with a foreign-key agent about: members %v hosts %v, were %v %v", c.name(i), m, hs, wantMembers, wantHosts)
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	for i := 0; i < c.n; i++ {
		if l := c.logLines(i, "intruder"); len(l) > 0 {
			t.Errorf("%s learnt of the intruder: %s", c.name(i), l[0])
		}
	}
	// The intruder must still be running: one that died at once would
	// pass everything above without ever having tried to join.
	if intruder.Exited() {
		t.Fatalf("the intruder exited (%v) instead of trying to join (its log follows)", intruder.err)
	}
	// The intruder's own API (with its own token) answers and knows
	// nothing of the real cluster.
	ic := h.APIClient(t, "http://"+h.IP+":7948", strings.TrimSpace(otherTok))
	ic.Timeout = 5 * time.Second
	st, err := ic.Status(ctx)
	if err != nil {
		t.Errorf("the intruder's API did not answer its status: %v", err)
	} else {
		var self bool
		for _, m := range st.Members {
			if m.Name == "intruder" {
				self = true
			} else {
				t.Errorf("the intruder sees member %s", m.Name)
			}
		}
		if !self {
			t.Errorf("the intruder's status does not list the intruder itself (members %v): not the intruder's API?", ftMemberNames(st))
		}
		if len(st.Hosts) > 0 {
			t.Errorf("the intruder sees hosts %v", ftHostIDs(st))
		}
	}
	if vols, err := ic.Volumes(ctx); err != nil {
		t.Errorf("the intruder's API did not answer its volume list: %v", err)
	} else if len(vols) > 0 {
		t.Errorf("the intruder reads volumes: %+v", vols)
	}
	// The intruder really knocked: it logged failed joins, and a real node
	// logged the rejection of gossip (memberlist cannot decrypt a packet
	// sealed with another key) or of a TLS handshake on the cluster port,
	// from the intruder's address.
	if l := c.logLines(2, "gossip join failed"); len(l) == 0 {
		t.Errorf("the intruder never logged a failed gossip join")
	} else {
		t.Logf("intruder: %s", l[0])
	}
	rejected := func(line string) bool {
		return strings.Contains(line, "no installed keys could decrypt the message from="+h.IP+":") ||
			(strings.Contains(line, "rejected cluster connection") && strings.Contains(line, "remote="+h.IP+":"))
	}
	var rejections []string
	for i := 0; i < c.n; i++ {
		for _, line := range c.logLines(i, h.IP) {
			if rejected(line) {
				rejections = append(rejections, c.name(i)+": "+line)
			}
		}
	}
	if len(rejections) == 0 {
		t.Errorf("no real node logged a rejected gossip or TLS attempt from the intruder's address %s", h.IP)
	} else {
		t.Logf("%d rejections of %s, first: %s", len(rejections), h.IP, rejections[0])
	}
}

// TestSecurityAPIRequiresToken sends requests without a valid token to
// every route: each gets 401 and a body that names nothing in the catalog.
func TestSecurityAPIRequiresToken(t *testing.T) {
	c := startFaultCluster(t, faultOpts{nodes: 1})
	v := c.createVolume("tok-secret-vol", 4*mib, 0)
	ctx := context.Background()
	f, err := c.client(0).CreateFork(ctx, api.CreateForkRequest{Source: v.Name, Name: "tok-secret-fork"}, "")
	if err != nil {
		t.Fatal(err)
	}
	secrets := []string{v.Name, v.ID, f.ID, f.Name, f.TargetVolume}

	other := filepath.Join(c.dir, "other.key")
	if out, err := runRoot(c.bin, "keygen", "-o", other); err != nil {
		t.Fatalf("keygen: %v: %s", err, out)
	}
	otherTok, _ := runRoot(c.bin, "token", "--key", other)
	auths := map[string]string{
		"none":              "",
		"empty bearer":      "Bearer ",
		"other key's token": "Bearer " + strings.TrimSpace(otherTok),
		"token prefix":      "Bearer " + c.token[:len(c.token)-1],
		"token plus a byte": "Bearer " + c.token + "0",
		"basic scheme":      "Basic " + c.token,
		"bare token":        c.token,
	}
	routes := []struct{ method, path, body string }{
		{"GET", "/v1/status", ""},
		{"GET", "/v1/volumes", ""},
		{"POST", "/v1/volumes", `{"name":"x","size":4096}`},
		{"GET", "/v1/volumes/" + v.Name, ""},
		{"GET", "/v1/volumes/" + v.ID, ""},
		{"DELETE", "/v1/volumes/" + v.Name, ""},
		{"POST", "/v1/volumes/" + v.Name + "/attach", ""},
		{"POST", "/v1/volumes/" + v.Name + "/detach", ""},
		{"GET", "/v1/forks", ""},
		{"POST", "/v1/forks", `{"source":"tok-secret-vol","name":"y"}`},
		{"GET", "/v1/forks/" + f.ID, ""},
		{"POST", "/v1/volumes/" + v.Name + "/ttl", `{"ttl_seconds":60}`},
		{"GET", "/v1/nope", ""},
		{"GET", "/", ""},
		{"PUT", "/v1/status", ""},
	}
	hc := c.env.hosts[0].HTTPClient(10 * time.Second)
	do := func(method, path, body, auth string) (int, []byte, http.Header) {
		var r io.Reader
		if body != "" {
			r = strings.NewReader(body)
		}
		req, err := http.NewRequest(method, c.apiAddr(0)+path, r)
		if err != nil {
			t.Fatal(err)
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b, resp.Header
	}
	// Control: with the token the secrets are there to leak.
	if code, b, _ := do("GET", "/v1/volumes", "", "Bearer "+c.token); code != 200 || !bytes.Contains(b, []byte(v.Name)) {
		t.Fatalf("with the token: %d %s", code, b)
	}
	for name, auth := range auths {
		for _, r := range routes {
			code, b, hdr := do(r.method, r.path, r.body, auth)
			if code != http.StatusUnauthorized {
				t.Errorf("%s, %s %s: status %d, want 401 (%s)", name, r.method, r.path, code, b)
				continue
			}
			var all bytes.Buffer
			all.Write(b)
			for k, vs := range hdr {
				fmt.Fprintf(&all, "\n%s: %s", k, strings.Join(vs, ","))
			}
			for _, s := range secrets {
				if bytes.Contains(all.Bytes(), []byte(s)) {
					t.Errorf("%s, %s %s: the 401 reveals %q: %s", name, r.method, r.path, s, all.Bytes())
				}
			}
		}
	}
	_, b, _ := do("GET", "/v1/volumes", "", "")
	t.Logf("401 body: %s", bytes.TrimSpace(b))
	// Nothing was changed by the refused writes.
	vols, err := c.client(0).Volumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range vols {
		if x.Name == "x" || x.Name == "y" || (x.Name == v.Name && x.State != fsm.VolumeReady) {
			t.Errorf("a refused request changed the catalog: %+v", x)
		}
	}
}

// ftSelfSigned makes a throwaway certificate no cluster CA signed.
func ftSelfSigned(t *testing.T, cn string) tls.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

// ftReadAllUntil reads until EOF/error or timeout, returning the bytes and
// the final error.
func ftReadAllUntil(c net.Conn, d time.Duration) (int, error) {
	_ = c.SetReadDeadline(time.Now().Add(d))
	n, err := io.Copy(io.Discard, c)
	if err == nil {
		err = io.EOF
	}
	return int(n), err
}

func ftIsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestSecurityClusterPortRejectsStrangers connects to the cluster port
// (raft, forwarding and transfer share it) without the cluster's
// credentials: plain TCP speaking each protocol byte, TLS without a
// certificate, with a self-signed one, and with one from another forknode
// key. Each is dropped within a few seconds having received no
// application data.
func TestSecurityClusterPortRejectsStrangers(t *testing.T) {
	c := startFaultCluster(t, faultOpts{nodes: 1, namespaces: 2})
	c.createVolume("port-secret-vol", 4*mib, 0)
	from := c.env.hosts[1]
	addr := c.clusterAddr(0)
	ctx := context.Background()
	dial := func(t *testing.T) net.Conn {
		t.Helper()
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		conn, err := from.DialContext(dctx, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		return conn
	}
	junk := make([]byte, 4096)
	mrand.NewChaCha8([32]byte{9}).Read(junk)
	// A transfer hello header with a plausible magic: still no TLS.
	hello := append([]byte{'F', 'K', 'B', 'S', 1, 1}, junk[:64]...)

	for _, tc := range []struct {
		name string
		send []byte
	}{
		{"plain R + junk", append([]byte{'R'}, junk...)},
		{"plain T + hello", append([]byte{'T'}, hello...)},
		{"plain F + http", []byte("FPOST /v1/forks HTTP/1.1\r\nHost: x\r\n\r\n")},
		{"plain R only", []byte{'R'}},
		{"silent", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := dial(t)
			defer conn.Close()
			if len(tc.send) > 0 {
				if _, err := conn.Write(tc.send); err != nil && !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
					t.Fatal(err)
				}
			}
			begin := time.Now()
			n, err := ftReadAllUntil(conn, 10*time.Second)
			if ftIsTimeout(err) {
				t.Fatalf("still connected after %s", time.Since(begin).Round(time.Millisecond))
			}
			if n != 0 {
				t.Fatalf("got %d bytes back", n)
			}
			t.Logf("dropped after %s: %v", time.Since(begin).Round(time.Millisecond), err)
		})
	}

	other := filepath.Join(c.dir, "other.key")
	if out, err := runRoot(c.bin, "keygen", "-o", other); err != nil {
		t.Fatalf("keygen: %v: %s", err, out)
	}
	om, err := keys.Load(other)
	if err != nil {
		t.Fatal(err)
	}
	otherCert, err := om.NodeCertificate("n1")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		certs []tls.Certificate
	}{
		{"tls without a certificate", nil},
		{"tls self-signed", []tls.Certificate{ftSelfSigned(t, "n0")}},
		{"tls other key's certificate", []tls.Certificate{otherCert}},
	} {
		for _, proto := range []byte{'R', 'T', 'F'} {
			t.Run(fmt.Sprintf("%s %c", tc.name, proto), func(t *testing.T) {
				raw := dial(t)
				defer raw.Close()
				cfg := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}
				if len(tc.certs) > 0 {
					// Always present it: Go would otherwise send no
					// certificate when its issuer is not among the
					// server's acceptable CAs.
					cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tc.certs[0], nil }
				}
				tc := tls.Client(raw, cfg)
				_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
				begin := time.Now()
				if err := tc.Handshake(); err != nil {
					// Refused during the handshake: nothing got through.
					t.Logf("handshake refused after %s: %v", time.Since(begin).Round(time.Millisecond), err)
					return
				}
				// TLS 1.3: the client finishes before the server has
				// checked its certificate; the verdict comes on read.
				_, _ = tc.Write(append([]byte{proto}, hello...))
				_ = raw.SetDeadline(time.Time{})
				n, err := ftReadAllUntil(tc, 10*time.Second)
				if ftIsTimeout(err) {
					t.Fatalf("still connected after %s", time.Since(begin).Round(time.Millisecond))
				}
				if n != 0 {
					t.Fatalf("got %d application bytes", n)
				}
				t.Logf("dropped after %s: %v", time.Since(begin).Round(time.Millisecond), err)
			})
		}
	}

	// Control: a certificate from the real key is accepted and the
	// connection stays open (raft waits for an RPC), so the drops above
	// are the credentials' doing.
	t.Run("control: the real key", func(t *testing.T) {
		km, err := keys.Load(c.key)
		if err != nil {
			t.Fatal(err)
		}
		_, cli, err := km.TLS("n1")
		if err != nil {
			t.Fatal(err)
		}
		raw := dial(t)
		defer raw.Close()
		tc := tls.Client(raw, cli)
		if err := tc.Handshake(); err != nil {
			t.Fatalf("handshake with the real key: %v", err)
		}
		if _, err := tc.Write([]byte{'R'}); err != nil {
			t.Fatal(err)
		}
		_, err = ftReadAllUntil(tc, 2*time.Second)
		if !ftIsTimeout(err) {
			t.Fatalf("a real member was dropped: %v", err)
		}
	})

	st, err := c.client(0).Status(ctx)
	if err != nil || st.Leader != "n0" {
		t.Fatalf("node after the probes: %v %+v", err, st)
	}
	if n := len(c.logLines(0, "rejected cluster connection")); n == 0 {
		t.Errorf("n0 logged no rejected cluster connection")
	}
}

// TestSecurityStreamCapture captures the target's cluster and gossip
// traffic while a volume with known plaintext markers streams to it, and
// searches the capture for the markers and for the catalog's names. The source uses the s2 codec, whose output keeps incompressible
// literals verbatim: without TLS the markers would be on the wire (checked
// below as a control), so finding none shows the stream is encrypted.
func TestSecurityStreamCapture(t *testing.T) {
	testutil.RequireCmd(t, "tcpdump")
	const size = 32 * mib
	const markerLen = 64 << 10
	c := startFaultCluster(t, faultOpts{nodes: 2, extra: func(i int) []string {
		return []string{"--capacity", "1GiB", "--codec", "s2"}
	}})
	src := c.createVolume("capture-src", size, 0)
	// Each MiB: 64 KiB of random hex text at a block-dependent offset, the
	// rest random bytes.
	var markers [][]byte
	var s2Block0 []byte
	c.fillImage(0, src.ID, size, 3, func(n int, b []byte) {
		raw := make([]byte, markerLen/2)
		mrand.NewChaCha8([32]byte{byte(n), 0x4d}).Read(raw)
		m := []byte(hex.EncodeToString(raw))
		copy(b[ftMarkerOffset(n):], m)
		markers = append(markers, m)
		if n == 0 {
			s2Block0 = s2.Encode(nil, b)
		}
	})
	var needles [][]byte
	set := map[string]bool{}
	for _, m := range markers {
		for off := 0; off+32 <= len(m); off += 2048 {
			needles = append(needles, m[off:off+32])
			set[string(m[off:off+32])] = true
		}
	}
	// Control: block 0 as the s2 codec puts it in a frame shows its
	// markers to this very search, so without TLS the capture would too.
	if got := len(ftFindNeedles(s2Block0, set)); got < 8 {
		t.Fatalf("control: only %d markers found in an s2-encoded block; the capture check would prove nothing", got)
	}

	b := c.env.hosts[1]
	pcap := filepath.Join(t.TempDir(), "stream.pcap")
	cmd := exec.Command("ip", "netns", "exec", b.NS, "tcpdump", "-i", b.Dev, "-s", "0", "-B", "16384", "-U", "-n", "-w", pcap, "port", "7947", "or", "port", "7946")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		_ = cmd.Process.Signal(syscall.SIGTERM) // `ip netns exec` exec'd: this PID is tcpdump
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	defer stop()
	testutil.Eventually(t, 10*time.Second, "tcpdump listening", func() bool {
		time.Sleep(50 * time.Millisecond)
		return strings.Contains(stderr.String(), "listening on")
	})

	forkStart := time.Now()
	f := c.startFork(1, api.CreateForkRequest{Source: "capture-src", Name: "capture-far", Host: "n1", Via: "stream"})
	f = c.waitFinished(1, f.ID, 60*time.Second)
	t.Logf("fork %s after %s", f.State, time.Since(forkStart).Round(time.Millisecond))
	if f.State != fsm.ForkReady {
		t.Fatalf("fork: %s (%s)", f.State, f.Error)
	}
	time.Sleep(500 * time.Millisecond)
	stopStart := time.Now()
	stop()
	t.Logf("tcpdump stopped in %s", time.Since(stopStart).Round(time.Millisecond))
	t.Logf("tcpdump: %s", strings.TrimSpace(stderr.String()))
	ftSameImage(t, c.imgPath(0, src.ID), c.imgPath(1, f.TargetVolume))

	data, err := os.ReadFile(pcap)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(data)) < size/10 {
		t.Fatalf("capture is %d bytes, want > %d: the stream was not captured", len(data), size/10)
	}
	// Control: the markers are in the fork where they were written (the
	// fork equals the source, checked above).
	img, err := os.ReadFile(c.imgPath(1, f.TargetVolume))
	if err != nil {
		t.Fatal(err)
	}
	for n, m := range markers {
		at := int64(n)*mib + int64(ftMarkerOffset(n))
		if !bytes.Equal(img[at:at+int64(len(m))], m) {
			t.Fatalf("control: marker %d not in the forked volume", n)
		}
	}
	found := ftFindNeedles(data, set)
	for i, n := range found {
		if i < 3 {
			t.Errorf("plaintext marker %q is in the capture", n)
		}
	}
	if len(found) > 0 {
		t.Fatalf("%d plaintext markers on the wire (of %d searched)", len(found), len(needles))
	}
	// The fork command itself crossed the cluster port during the capture
	// (forwarded to the leader and/or replicated by raft), and gossip
	// carried node metadata: none of the catalog's names may show.
	for _, name := range []string{"capture-far", "capture-src", src.ID, f.ID, f.TargetVolume} {
		if bytes.Contains(data, []byte(name)) {
			t.Errorf("catalog name %q is in the capture", name)
		}
	}
	t.Logf("capture %d bytes (volume %d), %d markers searched, none found", len(data), size, len(needles))
}

// ftMarkerOffset is where block n's marker starts inside the block.
func ftMarkerOffset(n int) int { return (n * 40960) % (int(mib) - 64<<10) }

// ftFindNeedles returns the 32-byte needles (all lowercase hex) found in
// data. It looks only inside runs of ≥ 32 hex characters, which random or
// encrypted bytes practically never contain, so one pass over a large
// capture suffices.
func ftFindNeedles(data []byte, needles map[string]bool) []string {
	var found []string
	isHex := func(b byte) bool { return (b >= '0' && b <= '9') || (b >= 'a' && b <= 'f') }
	run := 0
	for i := 0; i <= len(data); i++ {
		if i < len(data) && isHex(data[i]) {
			run++
			continue
		}
		for j := i - run; j+32 <= i; j++ {
			if needles[string(data[j:j+32])] {
				found = append(found, string(data[j:j+32]))
			}
		}
		run = 0
	}
	return found
}

// TestSecurityAPITLS: an agent run with --api-tls answers only TLS, with a
// certificate that the cluster CA verifies. The CLI finds the CA in the key
// file or in `forknode ca`'s PEM; without it the connection is refused
// before the token is sent, and a plain-HTTP request gets no API answer.
func TestSecurityAPITLS(t *testing.T) {
	c := startFaultCluster(t, faultOpts{nodes: 1, apiTLS: true})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	addr := c.apiAddr(0)
	if !strings.HasPrefix(addr, "https://") {
		t.Fatalf("api address %s", addr)
	}
	ca := filepath.Join(c.dir, "ca.pem")
	if out, err := runRoot(c.bin, "ca", "--key", c.key, "-o", ca); err != nil {
		t.Fatalf("forknode ca: %v: %s", err, out)
	}
	pem, err := os.ReadFile(ca)
	if err != nil || !bytes.HasPrefix(pem, []byte("-----BEGIN CERTIFICATE-----")) {
		t.Fatalf("ca.pem: %v %q", err, pem)
	}
	h := c.env.hosts[0]
	for _, tc := range []struct {
		name    string
		args    []string
		errText string
	}{
		{"CA from the key file", []string{"--token-file", c.key}, ""},
		{"CA from forknode ca", []string{"--token", c.token, "--ca", ca}, ""},
		{"no CA", []string{"--token", c.token}, "pass --ca FILE"},
		{"CA but a wrong token", []string{"--token", "nope", "--ca", ca}, "bearer token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"status", "--addr", addr}, tc.args...)
			out, err := h.Exec(ctx, c.bin, args...)
			if tc.errText == "" {
				if err != nil || !strings.Contains(out, "leader n0") {
					t.Fatalf("forknode %v: %v: %s", args, err, out)
				}
				return
			}
			if err == nil || !strings.Contains(out, tc.errText) {
				t.Fatalf("forknode %v: want an error about %q, got %v: %s", args, tc.errText, err, out)
			}
		})
	}
	// Plain HTTP to the TLS port: no API answer, whatever the token.
	resp, err := h.HTTPClient(10 * time.Second).Get("http://" + c.ip(0) + ":7948/v1/status")
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || bytes.Contains(body, []byte("leader")) {
			t.Fatalf("plain HTTP on a TLS API: %d %s", resp.StatusCode, body)
		}
	}
	// The typed client with the CA: a write and a read.
	cl := c.client(0)
	v, err := cl.CreateVolume(ctx, api.CreateVolumeRequest{Name: "tls-vol", Size: 4 * mib}, true)
	if err != nil || v.State != fsm.VolumeReady {
		t.Fatalf("create over TLS: %v %+v", err, v)
	}
}
