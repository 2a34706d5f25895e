package transfer

import (
	"fmt"
	"sync"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Decoders are expensive to build and hold history buffers, so they are
// pooled rather than made per chunk. Each pooled decoder is single-threaded;
// parallelism comes from the puller's workers. (The zstd encoder is in
// zstd.go.)
var zstdDecoders = sync.Pool{New: func() any {
	d, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxMemory(MaxChunk),
		zstd.WithDecodeAllCapLimit(true), // never grow dst beyond its cap
		zstd.IgnoreChecksum(true),
	)
	if err != nil {
		return err
	}
	return d
}}

func parseCodec(name string) (uint16, bool, error) {
	switch name {
	case "", "zstd":
		return CodecZstd, false, nil
	case "s2":
		return CodecS2, false, nil
	case "none":
		return CodecNone, false, nil
	case "auto":
		return CodecZstd, true, nil
	}
	return 0, false, fmt.Errorf("%w: unknown codec %q (want zstd, s2, auto or none)", ErrProtocol, name)
}

// compress encodes src with codec into dst's storage. When the codec does
// not make the chunk smaller it returns CodecNone and src itself, which also
// bounds every payload by the chunk size.
func compress(codec uint16, dst, src []byte) (uint16, []byte, error) {
	var out []byte
	switch codec {
	case CodecZstd:
		var err error
		if out, err = zstdCompress(dst, src); err != nil {
			return 0, nil, err
		}
	case CodecS2:
		if cap(dst) >= s2.MaxEncodedLen(len(src)) {
			out = s2.Encode(dst[:cap(dst)], src)
		} else {
			out = s2.Encode(nil, src)
		}
	default:
		return CodecNone, src, nil
	}
	if len(out) >= len(src) {
		return CodecNone, src, nil
	}
	return codec, out, nil
}

// decompress decodes payload into dst (cap ≥ want) and insists on exactly
// want bytes. Any failure is ErrCorrupt: the CRC already passed, so this
// means the sender produced garbage.
func decompress(codec uint16, dst, payload []byte, want int) ([]byte, error) {
	switch codec {
	case CodecNone:
		if len(payload) != want {
			return nil, fmt.Errorf("%w: raw payload %d bytes, want %d", ErrCorrupt, len(payload), want)
		}
		return payload, nil
	case CodecZstd:
		v := zstdDecoders.Get()
		d, ok := v.(*zstd.Decoder)
		if !ok {
			return nil, fmt.Errorf("zstd decoder: %v", v)
		}
		out, err := d.DecodeAll(payload, dst[:0:want])
		zstdDecoders.Put(d)
		if err != nil {
			return nil, fmt.Errorf("%w: zstd: %v", ErrCorrupt, err)
		}
		if len(out) != want {
			return nil, fmt.Errorf("%w: zstd gave %d bytes, want %d", ErrCorrupt, len(out), want)
		}
		return out, nil
	case CodecS2:
		n, err := s2.DecodedLen(payload)
		if err != nil || n != want {
			return nil, fmt.Errorf("%w: s2 block claims %d bytes, want %d (%v)", ErrCorrupt, n, want, err)
		}
		out, err := s2.Decode(dst[:want], payload)
		if err != nil {
			return nil, fmt.Errorf("%w: s2: %v", ErrCorrupt, err)
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w: unknown codec %d", ErrProtocol, codec)
}

// autoPicker chooses a codec per chunk from measured speeds: the effective
// rate of a codec is min(workers × its compression speed, link speed / its
// ratio); the faster wins. It probes both codecs at the start and the
// loser now and then, since data and link both change.
type autoPicker struct {
	mu      sync.Mutex
	workers float64
	n       int
	speed   [3]float64 // input bytes/s per worker (EWMA)
	ratio   [3]float64 // wire/input (EWMA)
	link    float64    // wire bytes/s while writing (EWMA)
	choice  uint16
}

func newAutoPicker(workers int) *autoPicker {
	return &autoPicker{workers: float64(workers), choice: CodecZstd}
}

func (a *autoPicker) pick() uint16 {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.n++
	switch {
	case a.n <= 8: // warm-up: alternate
		if a.n%2 == 0 {
			return CodecS2
		}
		return CodecZstd
	case a.n%64 == 0: // re-probe the other one
		if a.choice == CodecZstd {
			return CodecS2
		}
		return CodecZstd
	}
	return a.choice
}

func ewma(old, v float64) float64 {
	if old == 0 {
		return v
	}
	return 0.8*old + 0.2*v
}

func (a *autoPicker) observeCompress(codec uint16, in, out int, d time.Duration) {
	if codec != CodecZstd && codec != CodecS2 || in == 0 {
		return
	}
	if d <= 0 {
		d = time.Microsecond
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.speed[codec] = ewma(a.speed[codec], float64(in)/d.Seconds())
	a.ratio[codec] = ewma(a.ratio[codec], float64(out)/float64(in))
	a.decide()
}

func (a *autoPicker) observeLink(n int64, d time.Duration) {
	if n <= 0 {
		return
	}
	if d <= 0 {
		d = time.Microsecond
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.link = ewma(a.link, float64(n)/d.Seconds())
	a.decide()
}

func (a *autoPicker) rate(c uint16) float64 {
	cpu := a.workers * a.speed[c]
	if a.link == 0 || a.ratio[c] == 0 {
		return cpu
	}
	return min(cpu, a.link/a.ratio[c])
}

func (a *autoPicker) decide() {
	if a.speed[CodecZstd] == 0 || a.speed[CodecS2] == 0 {
		return
	}
	if a.rate(CodecS2) > a.rate(CodecZstd) {
		a.choice = CodecS2
	} else {
		a.choice = CodecZstd
	}
}
