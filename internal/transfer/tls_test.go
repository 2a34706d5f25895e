package transfer

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newCA(t *testing.T) *testCA {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

func (ca *testCA) issue(t *testing.T, cn string, serial int64) tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestTLSPeerIsCertificateName: over TLS the Opener sees the verified
// client-certificate CN, not the host name claimed in the hello.
func TestTLSPeerIsCertificateName(t *testing.T) {
	const size = 3 << 20
	dir := t.TempDir()
	src, content, _ := makeImage(t, dir, size, 1<<20, []int{blkText}, 11)
	ca := newCA(t)
	srvCfg := &tls.Config{
		Certificates: []tls.Certificate{ca.issue(t, "source", 2)},
		ClientCAs:    ca.pool, ClientAuth: tls.VerifyClientCertIfGiven, MinVersion: tls.VersionTLS13,
	}
	var peers atomic.Value
	inner := fileOpener(t, src, size, nil, nil)
	srv := NewServer(func(ctx context.Context, forkID, peer string) (Source, []Extent, func(), error) {
		peers.Store(peer)
		return inner(ctx, forkID, peer)
	}, Options{Logger: testLogger(t)})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	// A port multiplexer would accept and hand over; do the same here.
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go srv.ServeConn(tls.Server(c, srvCfg))
		}
	}()
	t.Cleanup(func() { l.Close() })
	tlsDial := func(cert *tls.Certificate) func(context.Context) (net.Conn, error) {
		return func(ctx context.Context) (net.Conn, error) {
			cfg := &tls.Config{RootCAs: ca.pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}
			if cert != nil {
				cfg.Certificates = []tls.Certificate{*cert}
			}
			d := tls.Dialer{Config: cfg}
			return d.DialContext(ctx, "tcp", l.Addr().String())
		}
	}

	good := ca.issue(t, "target-a", 3)
	sink := &memDev{b: make([]byte, size)}
	if _, err := Pull(context.Background(), tlsDial(&good), "fork-1", "claims-anything", sink, Options{Logger: testLogger(t)}); err != nil {
		t.Fatalf("Pull with cert CN target-a: %v", err)
	}
	if peers.Load() != "target-a" || !bytes.Equal(sink.b, content) {
		t.Fatalf("peer %v, data equal %v", peers.Load(), bytes.Equal(sink.b, content))
	}

	// No certificate: claiming the right host name in the hello is not enough.
	sink2 := &memDev{b: make([]byte, size)}
	_, err = Pull(context.Background(), tlsDial(nil), "fork-1", "target-a", sink2, Options{Logger: testLogger(t)})
	if !errors.Is(err, ErrUnauthorized) || peers.Load() != "" || sink2.writes.Load() != 0 {
		t.Fatalf("no cert: err %v, peer %q, writes %d", err, peers.Load(), sink2.writes.Load())
	}
}
