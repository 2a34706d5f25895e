package transfer

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzDecodeFrame feeds arbitrary bytes to both decoders. They must never
// panic, never hand back a payload beyond the bounds, agree with each
// other, and anything they accept must re-encode to the same bytes.
func FuzzDecodeFrame(f *testing.F) {
	f.Add(AppendFrame(nil, Header{Type: TypeData, Flags: CodecS2, Offset: 1 << 20, Length: 1 << 20}, []byte("abc")))
	f.Add(AppendFrame(nil, Header{Type: TypeZero, Offset: 0, Length: 4 << 20}, nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, p, n, err := DecodeFrame(b)
		var hdr [HeaderSize]byte
		h2, p2, err2 := ReadFrame(bytes.NewReader(b), &hdr, nil)
		if err != nil {
			if err2 == nil {
				t.Fatalf("DecodeFrame rejected (%v) what ReadFrame accepted", err)
			}
			if !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrCorrupt) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		if err2 != nil || h2 != h || !bytes.Equal(p, p2) {
			t.Fatalf("decoders disagree: %v / %v", err2, h2)
		}
		if len(p) > MaxPayload || h.Length > MaxVolume || h.Offset+h.Length > MaxVolume {
			t.Fatalf("accepted out-of-bounds frame %s", h)
		}
		if h.Type == TypeData && h.Length > MaxChunk {
			t.Fatalf("accepted oversize data frame %s", h)
		}
		if re := AppendFrame(nil, h, p); !bytes.Equal(re, b[:n]) {
			t.Fatalf("re-encoding differs")
		}
		// Payload decoders must cope with whatever passed the CRC.
		switch h.Type {
		case TypeHello:
			decodeHello(p)
		case TypeDone:
			decodeDone(p)
		case TypeData:
			decompress(h.Flags, make([]byte, h.Length), p, int(h.Length))
		}
	})
}
