package transfer

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// fileDev is a file-backed Source/Sink like the cow file backend: Zero
// punches a hole.
type fileDev struct {
	*os.File
	size int64
}

func (d *fileDev) Size() int64 { return d.size }
func (d *fileDev) Zero(off, n int64) error {
	return unix.Fallocate(int(d.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

func openDev(t testing.TB, path string, size int64) *fileDev {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &fileDev{File: f, size: size}
}

// memDev is an in-memory Sink that records writes (for "nothing written").
type memDev struct {
	mu     sync.Mutex
	b      []byte
	writes atomic.Int64
}

func (m *memDev) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
func (m *memDev) WriteAt(p []byte, off int64) (int, error) {
	m.writes.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(m.b[off:], p), nil
}
func (m *memDev) Size() int64 { return int64(len(m.b)) }
func (m *memDev) Sync() error { return nil }
func (m *memDev) Zero(off, n int64) error {
	m.writes.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.b[off : off+n])
	return nil
}

// blockKind patterns for synthetic images.
const (
	blkRandom = iota
	blkText
	blkZeroWritten // literal zeros on disk
	blkHole        // never written
)

var words = []string{"select", "insert", "into", "pg_class", "relfilenode", "WAL", "checkpoint",
	"vacuum", "tuple", "xmin", "xmax", "index", "btree", "page", "lsn", "0/16B3740", "users", "orders"}

func fillBlock(rng *rand.Rand, b []byte, kind int) {
	switch kind {
	case blkRandom:
		for i := 0; i+8 <= len(b); i += 8 {
			binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
		}
	case blkText:
		var buf bytes.Buffer
		for buf.Len() < len(b) {
			buf.WriteString(words[rng.IntN(len(words))])
			buf.WriteByte(" \n,;"[rng.IntN(4)])
			if rng.IntN(8) == 0 {
				binary.Write(&buf, binary.LittleEndian, rng.Uint32())
			}
		}
		copy(b, buf.Bytes())
	default:
		clear(b)
	}
}

// makeImage writes a sparse image of size bytes made of blk-byte blocks
// following kinds (cycled), and returns its path, its content and its data
// extents (what SEEK_DATA would report, block granular).
func makeImage(t testing.TB, dir string, size int64, blk int, kinds []int, seed uint64) (string, []byte, []Extent) {
	t.Helper()
	path := filepath.Join(dir, "src.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	content := make([]byte, size)
	var ext []Extent
	for i, off := 0, int64(0); off < size; i, off = i+1, off+int64(blk) {
		n := min(int64(blk), size-off)
		k := kinds[i%len(kinds)]
		b := content[off : off+n]
		fillBlock(rng, b, k)
		if k == blkHole {
			continue
		}
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		ext = append(ext, Extent{off, n})
	}
	return path, content, ext
}

func startServer(t testing.TB, open Opener, opts Options) (*Server, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts.PlainPeers = true // plain TCP: the hello names the puller
	s := NewServer(open, opts)
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	return s, l.Addr().String()
}

func dialer(addr string) func(ctx context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
}

// fileOpener serves path for fork "fork-1" to host "target-a".
func fileOpener(t testing.TB, path string, size int64, ext []Extent, opens *atomic.Int32) Opener {
	return func(ctx context.Context, forkID, peer string) (Source, []Extent, func(), error) {
		if opens != nil {
			opens.Add(1)
		}
		if forkID != "fork-1" {
			return nil, nil, nil, errors.New("no such fork " + forkID)
		}
		if peer != "target-a" {
			return nil, nil, nil, ErrUnauthorized
		}
		f, err := os.Open(path)
		if err != nil {
			return nil, nil, nil, err
		}
		return &fileDev{File: f, size: size}, ext, func() { f.Close() }, nil
	}
}

// proxy forwards 127.0.0.1 connections to target. For the source→puller
// direction it parses frames so that tests can cut or corrupt them.
type proxy struct {
	l      net.Listener
	target string
	conns  atomic.Int32
	// cutAfter: on connection number cutConn (1-based), close both sides
	// after this many source→puller bytes.
	cutConn  int32
	cutAfter int64
	// corrupt(connNo, dataFrameNo) says whether to flip a payload byte.
	corrupt func(conn int32, dataFrame int) bool
	flipped atomic.Int32
	// stall: stop forwarding (without closing) on connections > stallFrom.
	stallFrom int32
	closed    chan struct{}
	// firstData[conn] = offset of the first data or zero frame forwarded.
	firstData sync.Map
}

func newProxy(t testing.TB, target string, configure func(*proxy)) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, target: target, closed: make(chan struct{})}
	t.Cleanup(func() { l.Close(); close(p.closed) })
	configure(p)
	go p.serve()
	return p
}

func (p *proxy) addr() string { return p.l.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		n := p.conns.Add(1)
		go p.handle(c, n)
	}
}

func (p *proxy) handle(c net.Conn, n int32) {
	defer c.Close()
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer s.Close()
	go func() { io.Copy(s, c); s.Close() }()
	var hdr [HeaderSize]byte
	var sent int64
	dataNo := 0
	buf := make([]byte, MaxPayload)
	for {
		if _, err := io.ReadFull(s, hdr[:]); err != nil {
			return
		}
		pn := binary.LittleEndian.Uint32(hdr[24:])
		if pn > MaxPayload {
			return
		}
		pl := buf[:pn]
		if _, err := io.ReadFull(s, pl); err != nil {
			return
		}
		if t := FrameType(hdr[5]); t == TypeData || t == TypeZero {
			p.firstData.LoadOrStore(n, int64(binary.LittleEndian.Uint64(hdr[8:])))
		}
		if FrameType(hdr[5]) == TypeData {
			dataNo++
			if p.corrupt != nil && len(pl) > 0 && p.corrupt(n, dataNo) {
				pl[len(pl)/2] ^= 0x40
				p.flipped.Add(1)
			}
		}
		if p.stallFrom > 0 && n > p.stallFrom {
			<-p.closed // hold the connection open, silent: the puller's read deadline must fire
			return
		}
		frame := append(hdr[:], pl...)
		if n == p.cutConn && sent+int64(len(frame)) > p.cutAfter {
			c.Write(frame[:p.cutAfter-sent])
			return
		}
		if _, err := c.Write(frame); err != nil {
			return
		}
		sent += int64(len(frame))
	}
}

func readAll(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 2)) }
