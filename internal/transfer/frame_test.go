package transfer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
)

func mustHello(t testing.TB) []byte {
	p, err := encodeHello("fork-1", "host-a")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFrameRoundTrip(t *testing.T) {
	acc := binary.LittleEndian.AppendUint32(nil, 1<<20)
	cases := []struct {
		h       Header
		payload []byte
	}{
		{Header{Type: TypeHello, Offset: 3 << 20, Length: 10 << 20}, mustHello(t)},
		{Header{Type: TypeAccept, Offset: 0, Length: 10 << 20}, acc},
		{Header{Type: TypeData, Flags: CodecZstd, Offset: 1 << 20, Length: 1 << 20}, []byte("compressed")},
		{Header{Type: TypeData, Flags: CodecNone, Offset: 0, Length: 5}, []byte("hello")},
		{Header{Type: TypeZero, Offset: 4 << 20, Length: 1 << 40}, nil},
		{Header{Type: TypeAck, Offset: 7 << 20}, nil},
		{Header{Type: TypeDone, Length: 10 << 20}, encodeDone(doneInfo{DataBytes: 1, ZeroBytes: 2, Digest: [32]byte{3}})},
		{Header{Type: TypeError, Flags: ErrCodeUnauthorized}, []byte("go away")},
		{Header{Type: TypeError, Flags: ErrCodeNotReady}, []byte("snapshot being taken")},
	}
	for _, tc := range cases {
		t.Run(tc.h.Type.String(), func(t *testing.T) {
			b := AppendFrame(nil, tc.h, tc.payload)
			if len(b) != HeaderSize+len(tc.payload) {
				t.Fatalf("encoded %d bytes", len(b))
			}
			h, p, n, err := DecodeFrame(b)
			if err != nil {
				t.Fatal(err)
			}
			if n != len(b) || !bytes.Equal(p, tc.payload) || h.Type != tc.h.Type || h.Flags != tc.h.Flags ||
				h.Offset != tc.h.Offset || h.Length != tc.h.Length || int(h.PayloadLen) != len(tc.payload) {
				t.Fatalf("decoded %+v %q", h, p)
			}
			var hdr [HeaderSize]byte
			h2, p2, err := ReadFrame(bytes.NewReader(b), &hdr, nil)
			if err != nil || h2 != h || !bytes.Equal(p2, tc.payload) {
				t.Fatalf("ReadFrame: %+v %q %v", h2, p2, err)
			}
		})
	}
}

// reseal recomputes the CRC after a test tampers with header fields, so the
// test reaches the check it means to exercise.
func reseal(b []byte) []byte {
	binary.LittleEndian.PutUint32(b[28:], frameCRC(b[:HeaderSize], b[HeaderSize:]))
	return b
}

func TestFrameRejections(t *testing.T) {
	good := func() []byte {
		return AppendFrame(nil, Header{Type: TypeData, Flags: CodecZstd, Offset: 1 << 20, Length: 1 << 20}, []byte("payload!"))
	}
	cases := []struct {
		name   string
		frame  func() []byte
		want   error
		substr string
	}{
		{"bad magic", func() []byte { b := good(); b[0] ^= 1; return reseal(b) }, ErrProtocol, "magic"},
		{"bad version", func() []byte { b := good(); b[4] = 2; return reseal(b) }, ErrProtocol, "version"},
		{"unknown type", func() []byte { b := good(); b[5] = 99; return reseal(b) }, ErrProtocol, "unknown frame type"},
		{"type zero", func() []byte { b := good(); b[5] = 0; return reseal(b) }, ErrProtocol, "unknown frame type"},
		{"unknown codec", func() []byte { b := good(); b[6] = 9; return reseal(b) }, ErrProtocol, "codec"},
		{"data too long", func() []byte {
			b := good()
			binary.LittleEndian.PutUint64(b[16:], MaxChunk+1)
			return reseal(b)
		}, ErrProtocol, "data length"},
		{"data length zero", func() []byte {
			b := good()
			binary.LittleEndian.PutUint64(b[16:], 0)
			return reseal(b)
		}, ErrProtocol, "data length"},
		{"payload too long", func() []byte {
			b := good()
			binary.LittleEndian.PutUint32(b[24:], MaxPayload+1)
			return b
		}, ErrProtocol, "payload"},
		{"payload 4 GiB", func() []byte {
			b := good()
			binary.LittleEndian.PutUint32(b[24:], 0xFFFFFFFF)
			return b
		}, ErrProtocol, "payload"},
		{"offset beyond 1 PiB", func() []byte {
			b := good()
			binary.LittleEndian.PutUint64(b[8:], 1<<63)
			return reseal(b)
		}, ErrProtocol, "out of range"},
		{"offset+length overflow", func() []byte {
			b := AppendFrame(nil, Header{Type: TypeZero, Offset: MaxVolume - 10, Length: 11}, nil)
			return b
		}, ErrProtocol, "out of range"},
		{"raw payload != length", func() []byte {
			return AppendFrame(nil, Header{Type: TypeData, Flags: CodecNone, Length: 10}, []byte("short"))
		}, ErrProtocol, "raw payload"},
		{"zero with payload", func() []byte {
			return AppendFrame(nil, Header{Type: TypeZero, Length: 10}, []byte("x"))
		}, ErrProtocol, "zero range"},
		{"empty zero range", func() []byte { return AppendFrame(nil, Header{Type: TypeZero, Offset: 5}, nil) }, ErrProtocol, "zero range"},
		{"ack with length", func() []byte { return AppendFrame(nil, Header{Type: TypeAck, Length: 1}, nil) }, ErrProtocol, "ack"},
		{"done short", func() []byte { return AppendFrame(nil, Header{Type: TypeDone, Length: 1}, []byte("x")) }, ErrProtocol, "done"},
		{"hello too long", func() []byte {
			return AppendFrame(nil, Header{Type: TypeHello}, make([]byte, maxHello+1))
		}, ErrProtocol, "hello"},
		{"error bad code", func() []byte { return AppendFrame(nil, Header{Type: TypeError, Flags: 77}, []byte("x")) }, ErrProtocol, "error frame"},
		{"error code past the last", func() []byte {
			return AppendFrame(nil, Header{Type: TypeError, Flags: ErrCodeNotReady + 1}, []byte("x"))
		}, ErrProtocol, "error frame"},
		{"error too long", func() []byte {
			return AppendFrame(nil, Header{Type: TypeError, Flags: ErrCodeFatal}, make([]byte, maxError+1))
		}, ErrProtocol, "error frame"},
		{"crc payload flip", func() []byte { b := good(); b[HeaderSize+2] ^= 0x10; return b }, ErrCorrupt, "crc32c"},
		{"crc header flip", func() []byte { b := good(); b[9] ^= 0x10; return b }, ErrCorrupt, "crc32c"},
		{"crc field flip", func() []byte { b := good(); b[30] ^= 0x10; return b }, ErrCorrupt, "crc32c"},
		{"truncated header", func() []byte { return good()[:HeaderSize-1] }, io.ErrUnexpectedEOF, "header"},
		{"truncated payload", func() []byte { b := good(); return b[:len(b)-1] }, io.ErrUnexpectedEOF, "offset=1048576"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.frame()
			_, _, _, err := DecodeFrame(b)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.substr) {
				t.Fatalf("DecodeFrame: %v, want %v containing %q", err, tc.want, tc.substr)
			}
			var hdr [HeaderSize]byte
			_, _, err = ReadFrame(bytes.NewReader(b), &hdr, nil)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.substr) {
				t.Fatalf("ReadFrame: %v, want %v containing %q", err, tc.want, tc.substr)
			}
		})
	}
}

func TestReadFrameCleanEOF(t *testing.T) {
	var hdr [HeaderSize]byte
	if _, _, err := ReadFrame(bytes.NewReader(nil), &hdr, nil); err != io.EOF {
		t.Fatalf("empty stream: %v, want io.EOF", err)
	}
}

func TestHelloPayload(t *testing.T) {
	f, h, err := decodeHello(mustHello(t))
	if err != nil || f != "fork-1" || h != "host-a" {
		t.Fatalf("%q %q %v", f, h, err)
	}
	for _, bad := range [][]byte{nil, {1}, {0, 0, 0, 0}, {5, 0, 'a'}, {1, 0, 'a', 3, 0, 'b'}} {
		if _, _, err := decodeHello(bad); !errors.Is(err, ErrProtocol) {
			t.Errorf("decodeHello(%v) = %v", bad, err)
		}
	}
	if _, err := encodeHello("", "h"); !errors.Is(err, ErrProtocol) {
		t.Error("empty fork id accepted")
	}
	if _, err := encodeHello(strings.Repeat("x", 2000), "h"); !errors.Is(err, ErrProtocol) {
		t.Error("oversize fork id accepted")
	}
}

func TestCodecs(t *testing.T) {
	text := bytes.Repeat([]byte("checkpoint starting: time 0/16B3740 "), 30000)[:1<<20]
	random := make([]byte, 64<<10)
	fillBlock(newRand(1), random, blkRandom)
	for _, codec := range []uint16{CodecZstd, CodecS2, CodecNone} {
		for _, in := range [][]byte{text, random} {
			used, p, err := compress(codec, make([]byte, 0, len(in)+len(in)/8+1024), in)
			if err != nil {
				t.Fatal(err)
			}
			if len(p) > len(in) {
				t.Fatalf("codec %d grew %d → %d", codec, len(in), len(p))
			}
			if len(in) == len(random) && used != CodecNone {
				t.Fatalf("codec %d: random data not sent raw", codec)
			}
			out, err := decompress(used, make([]byte, len(in)), p, len(in))
			if err != nil || !bytes.Equal(out, in) {
				t.Fatalf("codec %d round trip: %v", codec, err)
			}
			// Asking for a different size must fail, not over-allocate.
			if used != CodecNone {
				if _, err := decompress(used, make([]byte, len(in)), p, len(in)-1); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("codec %d: wrong size accepted: %v", codec, err)
				}
				bad := bytes.Clone(p)
				bad[len(bad)/2] ^= 0xFF
				if out, err := decompress(used, make([]byte, len(in)), bad, len(in)); err == nil && bytes.Equal(out, in) {
					t.Fatalf("codec %d: corrupt payload decoded to the original", codec)
				}
			}
		}
	}
	if _, _, err := parseCodec("lz4"); !errors.Is(err, ErrProtocol) {
		t.Fatal("unknown codec accepted")
	}
}

func TestAutoPicker(t *testing.T) {
	a := newAutoPicker(2)
	// Fast link: s2 (fast, worse ratio) must win over slow zstd.
	a.observeCompress(CodecZstd, 1<<20, 300<<10, 4e6) // 1 MiB in 4 ms ≈ 260 MB/s
	a.observeCompress(CodecS2, 1<<20, 400<<10, 1e6)   // ≈ 1 GB/s
	a.observeLink(100<<20, 1e8)                       // ≈ 1 GB/s link
	if a.choice != CodecS2 {
		t.Fatal("fast link: want s2")
	}
	// Slow link: the better ratio wins.
	b := newAutoPicker(2)
	b.observeCompress(CodecZstd, 1<<20, 300<<10, 4e6)
	b.observeCompress(CodecS2, 1<<20, 400<<10, 1e6)
	b.observeLink(1<<20, 1e8) // ≈ 10 MB/s
	if b.choice != CodecZstd {
		t.Fatal("slow link: want zstd")
	}
	seen := map[uint16]bool{}
	for range 8 {
		seen[b.pick()] = true
	}
	if !seen[CodecZstd] || !seen[CodecS2] {
		t.Fatal("warm-up must probe both codecs")
	}
}

func TestNormalizeExtents(t *testing.T) {
	got := normalizeExtents([]Extent{{100, 50}, {0, 10}, {5, 10}, {140, 20}, {-1, 5}, {300, 10}, {190, 0}}, 200)
	want := []Extent{{0, 15}, {100, 60}}
	if len(got) != len(want) {
		t.Fatalf("%v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("%v, want %v", got, want)
		}
	}
	if normalizeExtents(nil, 10) != nil {
		t.Fatal("nil must stay nil (scan)")
	}
	ec := extentCursor{ext: want}
	for _, c := range []struct {
		off, n int64
		want   bool
	}{{0, 10, true}, {15, 80, false}, {95, 10, true}, {160, 40, false}} {
		if ec.hasData(c.off, c.n) != c.want {
			t.Fatalf("hasData(%d,%d) != %v", c.off, c.n, c.want)
		}
	}
}
