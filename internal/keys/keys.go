package keys

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// ErrBadKey: the key file is missing, malformed or inconsistent.
var ErrBadKey = errors.New("bad cluster key")

// ServerName is the DNS SAN in every node certificate; clients verify it, so
// the CA signature is what authenticates a peer, not its address.
const ServerName = "forknode.cluster"

const fileVersion = 1

type file struct {
	Version int    `json:"version"`
	CACert  string `json:"ca_cert"`
	CAKey   string `json:"ca_key"`
	Secret  string `json:"secret"`
}

// Material is loaded key material.
type Material struct {
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	pool   *x509.CertPool
	secret []byte
	raw    file
}

// Generate makes fresh key material.
func Generate() (*Material, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "forknode cluster CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("self-sign CA: %w", err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	f := file{
		Version: fileVersion,
		CACert:  string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		CAKey:   string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})),
		Secret:  base64.StdEncoding.EncodeToString(secret),
	}
	return parse(f)
}

// Write stores the material at path with mode 0600, atomically: a crash
// leaves either the old file or the new one.
func (m *Material) Write(path string) error {
	b, err := json.MarshalIndent(m.raw, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".key-*")
	if err != nil {
		return fmt.Errorf("write key: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// Load reads key material from path.
func Load(path string) (*Material, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadKey, err)
	}
	var f file
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%w: %s: not a forknode key file: %v", ErrBadKey, path, err)
	}
	m, err := parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

func parse(f file) (*Material, error) {
	if f.Version != fileVersion {
		return nil, fmt.Errorf("%w: unsupported version %d", ErrBadKey, f.Version)
	}
	cb, _ := pem.Decode([]byte(f.CACert))
	if cb == nil {
		return nil, fmt.Errorf("%w: no CA certificate", ErrBadKey)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: CA certificate: %v", ErrBadKey, err)
	}
	kb, _ := pem.Decode([]byte(f.CAKey))
	if kb == nil {
		return nil, fmt.Errorf("%w: no CA key", ErrBadKey)
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: CA key: %v", ErrBadKey, err)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return nil, fmt.Errorf("%w: CA key does not match CA certificate", ErrBadKey)
	}
	secret, err := base64.StdEncoding.DecodeString(f.Secret)
	if err != nil || len(secret) != 32 {
		return nil, fmt.Errorf("%w: secret must be 32 bytes of base64", ErrBadKey)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &Material{caCert: cert, caKey: key, pool: pool, secret: secret, raw: f}, nil
}

func (m *Material) derive(label string) []byte {
	h := hmac.New(sha256.New, m.secret)
	h.Write([]byte("forknode/" + label))
	return h.Sum(nil)
}

// GossipKey is the 32-byte memberlist SecretKey (AES-256).
func (m *Material) GossipKey() []byte { return m.derive("gossip") }

// APIToken is the bearer token API clients present.
func (m *Material) APIToken() string { return hex.EncodeToString(m.derive("api-token")) }

// Fingerprint identifies the key material without revealing it (for logs).
func (m *Material) Fingerprint() string { return hex.EncodeToString(m.derive("fingerprint")[:6]) }

// NodeCertificate issues a certificate for node name, signed by the CA.
func (m *Material) NodeCertificate(name string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{ServerName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(1, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, m.caCert, &key.PublicKey, m.caKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("sign node certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// TLS returns server and client configs for node name: TLS 1.3, both sides
// must present a certificate signed by the cluster CA.
func (m *Material) TLS(name string) (server, client *tls.Config, err error) {
	cert, err := m.NodeCertificate(name)
	if err != nil {
		return nil, nil, err
	}
	server = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    m.pool,
	}
	client = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      m.pool,
		ServerName:   ServerName,
	}
	return server, client, nil
}

// APIServerTLS is the HTTP API's TLS config (agent --api-tls): the node's
// certificate, TLS 1.2 or later for ordinary clients, and no client
// certificate, since API clients authenticate with the token.
func (m *Material) APIServerTLS(name string) (*tls.Config, error) {
	cert, err := m.NodeCertificate(name)
	if err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}, nil
}

// CAPEM is the cluster CA certificate, PEM-encoded: what an API client
// needs to verify a node's --api-tls certificate (`forknode ca`).
func (m *Material) CAPEM() []byte { return []byte(m.raw.CACert) }

// APIClientTLS verifies an --api-tls node against the CA certificates in
// caPEM. The name checked is ServerName, which every node certificate
// carries, so the CA signature, not the address dialled, proves that the
// server is a node of the cluster.
func APIClientTLS(caPEM []byte) (*tls.Config, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%w: no PEM certificate in the CA file", ErrBadKey)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, ServerName: ServerName}, nil
}

// PeerName returns the verified CommonName of a TLS peer, or "".
func PeerName(cs tls.ConnectionState) string {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return ""
	}
	return cs.VerifiedChains[0][0].Subject.CommonName
}
