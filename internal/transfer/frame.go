package transfer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
)

// Wire constants; doc.go describes the layout.
const (
	Magic      uint32 = 0x53424B46 // "FKBS" little-endian
	Version    uint8  = 1
	HeaderSize        = 32

	MinChunk   = 64 << 10
	MaxChunk   = 4 << 20 // volume bytes one data frame may cover
	MaxPayload = MaxChunk
	// MaxVolume bounds offsets and lengths (1 PiB) so sums never overflow.
	MaxVolume = int64(1) << 50

	maxHello      = 1024
	maxError      = 1024
	donePayload   = 8 + 8 + 32
	acceptPayload = 4
)

// FrameType is the second byte after the magic and version.
type FrameType uint8

const (
	TypeHello  FrameType = 1 // puller → source: fork, host, resume offset
	TypeAccept FrameType = 2 // source → puller: volume size, chunk grid
	TypeData   FrameType = 3 // volume bytes, compressed by the codec in flags
	TypeZero   FrameType = 4 // a range that must read back as zeros
	TypeAck    FrameType = 5 // puller → source: durable watermark
	TypeDone   FrameType = 6 // source → puller: totals and whole-volume digest
	TypeError  FrameType = 7 // either way: code in flags, message in payload
)

func (t FrameType) String() string {
	switch t {
	case TypeHello:
		return "hello"
	case TypeAccept:
		return "accept"
	case TypeData:
		return "data"
	case TypeZero:
		return "zero"
	case TypeAck:
		return "ack"
	case TypeDone:
		return "done"
	case TypeError:
		return "error"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Codec ids carried in the flags of a data frame.
const (
	CodecNone uint16 = 0
	CodecZstd uint16 = 1
	CodecS2   uint16 = 2
)

// Error codes carried in the flags of an error frame.
const (
	ErrCodeFatal        uint16 = 1 // do not retry
	ErrCodeUnauthorized uint16 = 2
	ErrCodeRetry        uint16 = 3 // transient: reconnect and resume
	ErrCodeCorrupt      uint16 = 4
	// ErrCodeNotReady: the source is alive but still preparing (its
	// snapshot is being taken): reconnect later, and do not count the wait
	// as a stalled transfer.
	ErrCodeNotReady uint16 = 5
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Header is a decoded frame header.
type Header struct {
	Type       FrameType
	Flags      uint16
	Offset     int64
	Length     int64 // volume bytes covered
	PayloadLen uint32
	CRC        uint32
}

func (h Header) String() string {
	return fmt.Sprintf("%s frame offset=%d length=%d payload=%d", h.Type, h.Offset, h.Length, h.PayloadLen)
}

// validate checks everything a header claims before anything is allocated
// or read on its behalf.
func (h Header) validate() error {
	if h.Offset < 0 || h.Offset > MaxVolume || h.Length < 0 || h.Length > MaxVolume || h.Offset+h.Length > MaxVolume {
		return fmt.Errorf("%w: %s: offset/length out of range", ErrProtocol, h)
	}
	p := int64(h.PayloadLen)
	switch h.Type {
	case TypeHello:
		if h.Flags != 0 || p < 4 || p > maxHello {
			return fmt.Errorf("%w: %s: bad hello", ErrProtocol, h)
		}
	case TypeAccept:
		if h.Flags != 0 || p != acceptPayload {
			return fmt.Errorf("%w: %s: bad accept", ErrProtocol, h)
		}
	case TypeData:
		if h.Length == 0 || h.Length > MaxChunk {
			return fmt.Errorf("%w: %s: data length not in (0, %d]", ErrProtocol, h, MaxChunk)
		}
		if p == 0 || p > MaxPayload {
			return fmt.Errorf("%w: %s: payload not in (0, %d]", ErrProtocol, h, MaxPayload)
		}
		switch h.Flags {
		case CodecNone:
			if p != h.Length {
				return fmt.Errorf("%w: %s: raw payload must equal length", ErrProtocol, h)
			}
		case CodecZstd, CodecS2:
		default:
			return fmt.Errorf("%w: %s: unknown codec %d", ErrProtocol, h, h.Flags)
		}
	case TypeZero:
		if h.Flags != 0 || p != 0 || h.Length == 0 {
			return fmt.Errorf("%w: %s: bad zero range", ErrProtocol, h)
		}
	case TypeAck:
		if h.Flags != 0 || p != 0 || h.Length != 0 {
			return fmt.Errorf("%w: %s: bad ack", ErrProtocol, h)
		}
	case TypeDone:
		if h.Flags != 0 || p != donePayload || h.Offset != 0 {
			return fmt.Errorf("%w: %s: bad done", ErrProtocol, h)
		}
	case TypeError:
		if h.Flags < ErrCodeFatal || h.Flags > ErrCodeNotReady || p > maxError || h.Offset != 0 || h.Length != 0 {
			return fmt.Errorf("%w: %s: bad error frame", ErrProtocol, h)
		}
	default:
		return fmt.Errorf("%w: unknown frame type %d", ErrProtocol, uint8(h.Type))
	}
	return nil
}

// putHeader fills b[0:28] (everything the CRC covers besides the payload).
func putHeader(b *[HeaderSize]byte, h Header) {
	binary.LittleEndian.PutUint32(b[0:], Magic)
	b[4] = Version
	b[5] = byte(h.Type)
	binary.LittleEndian.PutUint16(b[6:], h.Flags)
	binary.LittleEndian.PutUint64(b[8:], uint64(h.Offset))
	binary.LittleEndian.PutUint64(b[16:], uint64(h.Length))
	binary.LittleEndian.PutUint32(b[24:], h.PayloadLen)
}

func frameCRC(hdr []byte, payload []byte) uint32 {
	return crc32.Update(crc32.Update(0, castagnoli, hdr[:28]), castagnoli, payload)
}

// sealHeader completes the header for payload: length and CRC.
func sealHeader(b *[HeaderSize]byte, h Header, payload []byte) {
	h.PayloadLen = uint32(len(payload))
	putHeader(b, h)
	binary.LittleEndian.PutUint32(b[28:], frameCRC(b[:], payload))
}

// AppendFrame appends the encoded frame (header and payload) to dst.
func AppendFrame(dst []byte, h Header, payload []byte) []byte {
	var b [HeaderSize]byte
	sealHeader(&b, h, payload)
	dst = append(dst, b[:]...)
	return append(dst, payload...)
}

// writeFrame sends header and payload in one writev without copying.
func writeFrame(w io.Writer, hdr *[HeaderSize]byte, h Header, payload []byte) (int64, error) {
	sealHeader(hdr, h, payload)
	if len(payload) == 0 {
		n, err := w.Write(hdr[:])
		return int64(n), err
	}
	bufs := net.Buffers{hdr[:], payload}
	return bufs.WriteTo(w)
}

// parseHeader decodes and validates a header (not yet the CRC).
func parseHeader(b []byte) (Header, error) {
	if m := binary.LittleEndian.Uint32(b[0:]); m != Magic {
		return Header{}, fmt.Errorf("%w: bad magic %#08x", ErrProtocol, m)
	}
	if v := b[4]; v != Version {
		return Header{}, fmt.Errorf("%w: unsupported version %d (want %d)", ErrProtocol, v, Version)
	}
	off := binary.LittleEndian.Uint64(b[8:])
	ln := binary.LittleEndian.Uint64(b[16:])
	if off > uint64(MaxVolume) || ln > uint64(MaxVolume) {
		return Header{}, fmt.Errorf("%w: offset %d / length %d out of range", ErrProtocol, off, ln)
	}
	h := Header{
		Type:       FrameType(b[5]),
		Flags:      binary.LittleEndian.Uint16(b[6:]),
		Offset:     int64(off),
		Length:     int64(ln),
		PayloadLen: binary.LittleEndian.Uint32(b[24:]),
		CRC:        binary.LittleEndian.Uint32(b[28:]),
	}
	return h, h.validate()
}

// DecodeFrame decodes one frame from the start of b and returns its header,
// its payload (aliasing b) and the number of bytes used.
func DecodeFrame(b []byte) (Header, []byte, int, error) {
	if len(b) < HeaderSize {
		return Header{}, nil, 0, fmt.Errorf("frame header: %w", io.ErrUnexpectedEOF)
	}
	h, err := parseHeader(b)
	if err != nil {
		return h, nil, 0, err
	}
	n := HeaderSize + int(h.PayloadLen)
	if len(b) < n {
		return h, nil, 0, fmt.Errorf("%s: have %d payload bytes: %w", h, len(b)-HeaderSize, io.ErrUnexpectedEOF)
	}
	payload := b[HeaderSize:n]
	if got := frameCRC(b[:HeaderSize], payload); got != h.CRC {
		return h, nil, 0, fmt.Errorf("%w: %s: crc32c %#08x, header says %#08x", ErrCorrupt, h, got, h.CRC)
	}
	return h, payload, n, nil
}

// ReadFrame reads one frame from r. The payload goes into buf when it is
// large enough (the caller's pooled buffer), else into a new slice of
// exactly the validated size. A clean end of stream before any header
// byte is io.EOF.
func ReadFrame(r io.Reader, hdr *[HeaderSize]byte, buf []byte) (Header, []byte, error) {
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return Header{}, nil, fmt.Errorf("frame header: %w", err)
		}
		return Header{}, nil, err
	}
	h, err := parseHeader(hdr[:])
	if err != nil {
		return h, nil, err
	}
	n := int(h.PayloadLen)
	if cap(buf) < n {
		buf = make([]byte, n) // bounded by validate: ≤ MaxPayload
	}
	payload := buf[:n]
	if _, err := io.ReadFull(r, payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return h, nil, fmt.Errorf("%s: short payload: %w", h, err)
	}
	if got := frameCRC(hdr[:], payload); got != h.CRC {
		return h, nil, fmt.Errorf("%w: %s: crc32c %#08x, header says %#08x", ErrCorrupt, h, got, h.CRC)
	}
	return h, payload, nil
}

// Hello payload: u16 len + fork id, u16 len + host name.
func encodeHello(forkID, host string) ([]byte, error) {
	if len(forkID) == 0 || len(forkID)+len(host)+4 > maxHello {
		return nil, fmt.Errorf("%w: fork id %q / host %q: empty or too long", ErrProtocol, forkID, host)
	}
	b := make([]byte, 0, 4+len(forkID)+len(host))
	b = binary.LittleEndian.AppendUint16(b, uint16(len(forkID)))
	b = append(b, forkID...)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(host)))
	return append(b, host...), nil
}

func decodeHello(p []byte) (forkID, host string, err error) {
	bad := fmt.Errorf("%w: malformed hello payload", ErrProtocol)
	if len(p) < 2 {
		return "", "", bad
	}
	n := int(binary.LittleEndian.Uint16(p))
	p = p[2:]
	if n == 0 || len(p) < n+2 {
		return "", "", bad
	}
	forkID = string(p[:n])
	p = p[n:]
	m := int(binary.LittleEndian.Uint16(p))
	p = p[2:]
	if len(p) != m {
		return "", "", bad
	}
	return forkID, string(p), nil
}

type doneInfo struct {
	DataBytes, ZeroBytes int64
	Digest               [32]byte
}

func encodeDone(d doneInfo) []byte {
	b := make([]byte, 0, donePayload)
	b = binary.LittleEndian.AppendUint64(b, uint64(d.DataBytes))
	b = binary.LittleEndian.AppendUint64(b, uint64(d.ZeroBytes))
	return append(b, d.Digest[:]...)
}

func decodeDone(p []byte) doneInfo {
	var d doneInfo // length checked by validate
	d.DataBytes = int64(binary.LittleEndian.Uint64(p))
	d.ZeroBytes = int64(binary.LittleEndian.Uint64(p[8:]))
	copy(d.Digest[:], p[16:])
	return d
}

// errorForCode maps a peer's error frame onto our sentinels.
func errorForCode(code uint16, msg string) error {
	switch code {
	case ErrCodeUnauthorized:
		return fmt.Errorf("%w: peer says: %s", ErrUnauthorized, msg)
	case ErrCodeCorrupt:
		return fmt.Errorf("%w: peer says: %s", ErrCorrupt, msg)
	case ErrCodeRetry:
		return fmt.Errorf("peer asks to retry: %s", msg)
	case ErrCodeNotReady:
		return fmt.Errorf("%w: peer says: %s", ErrNotReady, msg)
	}
	return fmt.Errorf("%w: peer says: %s", ErrAborted, msg)
}
