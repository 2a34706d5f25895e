package transfer

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// fakeSource answers every hello with the frames script returns.
func fakeSource(t *testing.T, script func() []byte) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var hdr [HeaderSize]byte
				if _, _, err := ReadFrame(c, &hdr, nil); err != nil {
					return
				}
				c.Write(script())
				// Read (and drop) until the puller hangs up.
				var sink [4096]byte
				for {
					if _, err := c.Read(sink[:]); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

func accept(size int64, grid uint32) []byte {
	return AppendFrame(nil, Header{Type: TypeAccept, Length: size}, binary.LittleEndian.AppendUint32(nil, grid))
}

// TestHostileSource: a source that lies must make Pull fail with the right
// sentinel, never succeed and never panic.
func TestHostileSource(t *testing.T) {
	const g = 64 << 10
	const size = 2 * g
	block := bytes.Repeat([]byte("x"), g)
	raw := func(off int64) []byte {
		return AppendFrame(nil, Header{Type: TypeData, Flags: CodecNone, Offset: off, Length: g}, block)
	}
	h := blockHash(block)
	goodDigest := volumeDigest([][16]byte{h, h})
	done := func(d [32]byte, data int64) []byte {
		return AppendFrame(nil, Header{Type: TypeDone, Length: size}, encodeDone(doneInfo{DataBytes: data, Digest: d}))
	}
	_, s2Payload, _ := compress(CodecS2, make([]byte, 0, 2*g), bytes.Repeat([]byte("ab"), g/4)) // decodes to g/2 bytes
	cases := []struct {
		name   string
		script func() []byte
		want   error
	}{
		{"grid too small", func() []byte { return accept(size, 4096) }, ErrProtocol},
		{"larger than target", func() []byte { return accept(size*4, g) }, ErrProtocol},
		{"wrong resume offset", func() []byte {
			return AppendFrame(nil, Header{Type: TypeAccept, Offset: g, Length: size}, binary.LittleEndian.AppendUint32(nil, g))
		}, ErrProtocol},
		{"misaligned data", func() []byte { return append(accept(size, g), raw(100)...) }, ErrProtocol},
		{"data past the end", func() []byte { return append(accept(size, g), raw(size)...) }, ErrProtocol},
		{"zero past the end", func() []byte {
			return append(accept(size, g), AppendFrame(nil, Header{Type: TypeZero, Offset: g, Length: size}, nil)...)
		}, ErrProtocol},
		{"decodes to the wrong size", func() []byte {
			return append(accept(size, g), AppendFrame(nil, Header{Type: TypeData, Flags: CodecS2, Length: g}, s2Payload)...)
		}, ErrCorrupt},
		{"done before all data", func() []byte {
			return bytes.Join([][]byte{accept(size, g), raw(0), done(goodDigest, size)}, nil)
		}, ErrProtocol},
		{"wrong digest", func() []byte {
			return bytes.Join([][]byte{accept(size, g), raw(0), raw(g), done([32]byte{1}, size)}, nil)
		}, ErrCorrupt},
		{"wrong totals", func() []byte {
			return bytes.Join([][]byte{accept(size, g), raw(0), raw(g), done(goodDigest, g)}, nil)
		}, ErrCorrupt},
		{"garbage", func() []byte { return append(accept(size, g), bytes.Repeat([]byte{0xEE}, 100)...) }, ErrProtocol},
		{"unexpected hello", func() []byte {
			p, _ := encodeHello("f", "h")
			return append(accept(size, g), AppendFrame(nil, Header{Type: TypeHello}, p)...)
		}, ErrProtocol},
		{"fatal error frame", func() []byte {
			return AppendFrame(nil, Header{Type: TypeError, Flags: ErrCodeFatal}, []byte("snapshot gone"))
		}, ErrAborted},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			addr := fakeSource(t, tc.script)
			sink := &memDev{b: make([]byte, size)}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			st, err := Pull(ctx, dialer(addr), "fork-1", "h", sink, Options{Logger: testLogger(t), GiveUp: 500 * time.Millisecond, IOTimeout: 300 * time.Millisecond})
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if st.Digest != "" && err == nil {
				t.Fatal("success reported")
			}
		})
	}

	// The honest version of the same script succeeds: the cases above fail
	// for the reason they name, not because the fake is broken.
	addr := fakeSource(t, func() []byte {
		return bytes.Join([][]byte{accept(size, g), raw(g), raw(0), done(goodDigest, size)}, nil)
	})
	sink := &memDev{b: make([]byte, size)}
	if _, err := Pull(context.Background(), dialer(addr), "fork-1", "h", sink, Options{Logger: testLogger(t)}); err != nil {
		t.Fatalf("honest fake: %v", err)
	}
	if !bytes.Equal(sink.b, append(block, block...)) {
		t.Fatal("honest fake: data differs")
	}
}

// TestHostilePuller: the server answers bad hellos with an error frame and
// never calls the Opener for them.
func TestHostilePuller(t *testing.T) {
	const size = 3 << 20
	src, _, _ := makeImage(t, t.TempDir(), size, 1<<20, []int{blkText}, 13)
	var opens atomic.Int32
	_, addr := startServer(t, fileOpener(t, src, size, nil, &opens), Options{Logger: testLogger(t), IOTimeout: 500 * time.Millisecond})
	hello := func(off, length int64) []byte {
		p, _ := encodeHello("fork-1", "target-a")
		return AppendFrame(nil, Header{Type: TypeHello, Offset: off, Length: length}, p)
	}
	cases := []struct {
		name  string
		send  []byte
		opens int32 // Opener calls this case adds
	}{
		{"garbage", bytes.Repeat([]byte{0x42}, 64), 0},
		{"ack instead of hello", AppendFrame(nil, Header{Type: TypeAck}, nil), 0},
		{"bad hello payload", AppendFrame(nil, Header{Type: TypeHello}, []byte{9, 0, 'a', 'b'}), 0},
		{"misaligned resume", hello(12345, size), 1},
		{"resume past the end", hello(size+1<<20, size), 1},
		{"size changed", hello(1<<20, size+1), 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := opens.Load()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(tc.send); err != nil {
				t.Fatal(err)
			}
			var hdr [HeaderSize]byte
			h, p, err := ReadFrame(c, &hdr, nil)
			if err != nil || h.Type != TypeError || h.Flags != ErrCodeFatal {
				t.Fatalf("got %v %q %v, want a fatal error frame", h, p, err)
			}
			if got := opens.Load() - before; got != tc.opens {
				t.Fatalf("Opener called %d times, want %d", got, tc.opens)
			}
		})
	}
	// Silence: the server drops the connection after its IOTimeout.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	var b [1]byte
	c.Read(b[:]) // error frame or EOF, either way after the timeout
	if d := time.Since(start); d < 400*time.Millisecond || d > 3*time.Second {
		t.Fatalf("silent client dropped after %s", d)
	}
}
