package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// One mTLS port carries all node-to-node traffic. After the TLS handshake
// (both sides present a certificate signed by the cluster CA) the dialer
// writes one byte naming the protocol. One port keeps firewall rules and
// advertisement simple, and one TLS setup covers raft, forwarding and
// transfer alike.
const (
	protoRaft     byte = 'R'
	protoForward  byte = 'F'
	protoTransfer byte = 'T'
)

const handshakeTimeout = 5 * time.Second

// mux accepts TLS connections and routes them by their first byte.
type mux struct {
	ln     net.Listener
	srvTLS *tls.Config
	cliTLS *tls.Config
	logger hclog.Logger

	mu       sync.Mutex
	handlers map[byte]func(net.Conn)
	closed   chan struct{}
	once     sync.Once
}

func newMux(ln net.Listener, srv, cli *tls.Config, logger hclog.Logger) *mux {
	return &mux{ln: ln, srvTLS: srv, cliTLS: cli, logger: logger,
		handlers: map[byte]func(net.Conn){}, closed: make(chan struct{})}
}

func (m *mux) handle(proto byte, fn func(net.Conn)) {
	m.mu.Lock()
	m.handlers[proto] = fn
	m.mu.Unlock()
}

func (m *mux) serve() {
	for {
		c, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.closed:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			m.logger.Error("cluster port accept failed", "error", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		go m.route(c)
	}
}

func (m *mux) route(raw net.Conn) {
	// The handshake and protocol byte are bounded, so a client that connects
	// and says nothing is dropped instead of holding a goroutine.
	_ = raw.SetDeadline(time.Now().Add(handshakeTimeout))
	c := tls.Server(raw, m.srvTLS)
	if err := c.Handshake(); err != nil {
		m.logger.Debug("rejected cluster connection", "remote", raw.RemoteAddr().String(), "error", err)
		raw.Close()
		return
	}
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil {
		c.Close()
		return
	}
	_ = raw.SetDeadline(time.Time{})
	m.mu.Lock()
	h := m.handlers[b[0]]
	m.mu.Unlock()
	if h == nil {
		m.logger.Warn("unknown cluster protocol", "remote", raw.RemoteAddr().String(), "proto", b[0])
		c.Close()
		return
	}
	h(c)
}

// dial opens an authenticated connection for proto to a peer's cluster port.
func (m *mux) dial(ctx context.Context, addr string, proto byte) (net.Conn, error) {
	d := net.Dialer{Timeout: handshakeTimeout}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	dl := time.Now().Add(handshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	_ = raw.SetDeadline(dl)
	c := tls.Client(raw, m.cliTLS)
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls handshake with %s: %w", addr, err)
	}
	if _, err := c.Write([]byte{proto}); err != nil {
		c.Close()
		return nil, err
	}
	_ = raw.SetDeadline(time.Time{})
	return c, nil
}

func (m *mux) close() error {
	var err error
	m.once.Do(func() {
		close(m.closed)
		err = m.ln.Close()
	})
	return err
}

// raftLayer is the raft.StreamLayer over the mux.
type raftLayer struct {
	m     *mux
	conns chan net.Conn
	addr  net.Addr
}

func newRaftLayer(m *mux, advertise net.Addr) *raftLayer {
	l := &raftLayer{m: m, conns: make(chan net.Conn, 16), addr: advertise}
	m.handle(protoRaft, func(c net.Conn) {
		select {
		case l.conns <- c:
		case <-m.closed:
			c.Close()
		}
	})
	return l
}

func (l *raftLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.m.closed:
		return nil, net.ErrClosed
	}
}

func (l *raftLayer) Close() error   { return nil } // the mux owns the listener
func (l *raftLayer) Addr() net.Addr { return l.addr }

func (l *raftLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return l.m.dial(ctx, string(addr), protoRaft)
}
