package transfer

import (
	"bytes"
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/testutil"
)

// minSource records the lowest offset read.
type minSource struct {
	Source
	min *atomic.Int64
}

func (m minSource) ReadAt(p []byte, off int64) (int, error) {
	for {
		cur := m.min.Load()
		if off >= cur || m.min.CompareAndSwap(cur, off) {
			break
		}
	}
	return m.Source.ReadAt(p, off)
}

// TestResumeReusesHashes: after a cut link the source's server already has
// the hashes of what it sent, so the resumed session reads nothing before
// the resume point; once the puller acknowledges the whole volume the
// server forgets them.
func TestResumeReusesHashes(t *testing.T) {
	const size = 24 << 20
	dir := t.TempDir()
	src, content, _ := makeImage(t, dir, size, 1<<20, []int{blkRandom, blkText, blkZeroWritten}, 31)
	var opens atomic.Int32
	var lowest atomic.Int64 // of the resumed session's reads
	lowest.Store(size)
	inner := fileOpener(t, src, size, nil, nil)
	open := func(ctx context.Context, forkID, peer string) (Source, []Extent, func(), error) {
		s, e, c, err := inner(ctx, forkID, peer)
		if err == nil && opens.Add(1) > 1 {
			s = minSource{Source: s, min: &lowest}
		}
		return s, e, c, err
	}
	srv, addr := startServer(t, open, Options{Codec: "none", Logger: testLogger(t)})
	px := newProxy(t, addr, func(px *proxy) { px.cutConn, px.cutAfter = 1, 12<<20 })
	sink := &memDev{b: make([]byte, size)}
	st, err := Pull(context.Background(), dialer(px.addr()), "fork-1", "target-a", sink, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sink.b, content) || st.Reconnects != 1 {
		t.Fatalf("equal %v, stats %+v", bytes.Equal(sink.b, content), st)
	}
	off, _ := px.firstData.Load(int32(2))
	if off == nil || off.(int64) < 8<<20 {
		t.Fatalf("second session started at %v, want a resume past 8 MiB", off)
	}
	if low := lowest.Load(); low < off.(int64) {
		t.Fatalf("the resumed session (from %d) read the source at %d; want the first session's hashes reused", off.(int64), low)
	}
	testutil.Eventually(t, 5*time.Second, "hashes dropped after the final ack", func() bool {
		srv.hashes.mu.Lock()
		defer srv.hashes.mu.Unlock()
		return len(srv.hashes.m) == 0 && srv.hashes.blocks == 0
	})
}

func TestHashCache(t *testing.T) {
	gr := grid{size: 4 << 20, g: 1 << 20}
	entry := func(kinds ...uint8) ([][16]byte, []uint8) {
		h := make([][16]byte, len(kinds))
		for i, k := range kinds {
			if k == kindData {
				h[i][0] = byte(i + 1)
			}
		}
		return h, append([]uint8(nil), kinds...)
	}
	c := &hashCache{limit: 8}
	h, k := entry(kindData, kindZero, kindNone, kindNone)
	c.put("a", gr, h, k)
	if e := c.get("a", gr); e == nil || len(e.kind) != 2 || c.blocks != 2 {
		t.Fatalf("an entry keeps only the blocks up to the last known one: %+v, %d blocks", e, c.blocks)
	}
	// A later session that hashed other blocks adds to what is known.
	h, k = entry(kindNone, kindNone, kindData, kindNone)
	c.put("a", gr, h, k)
	e := c.get("a", gr)
	if e == nil || len(e.kind) != 3 || e.kind[0] != kindData || e.kind[1] != kindZero || e.kind[2] != kindData ||
		e.hashes[0][0] != 1 || e.hashes[2][0] != 3 || c.blocks != 3 {
		t.Fatalf("merged entry %+v, %d blocks", e, c.blocks)
	}
	if c.get("a", grid{size: 4 << 20, g: 2 << 20}) != nil {
		t.Fatal("an entry on another grid was handed out")
	}
	// Over the limit: the least recently used fork goes.
	time.Sleep(time.Millisecond)
	h, k = entry(kindData, kindData, kindData, kindData)
	c.put("b", gr, h, k)
	time.Sleep(time.Millisecond)
	c.get("a", gr) // a is now the most recently used
	time.Sleep(time.Millisecond)
	h, k = entry(kindData, kindData, kindData, kindData)
	c.put("c", gr, h, k)
	if c.get("b", gr) != nil || c.get("a", gr) == nil || c.get("c", gr) == nil || c.blocks != 7 {
		t.Fatalf("after eviction: a %v b %v c %v, %d blocks", c.get("a", gr) != nil, c.get("b", gr) != nil, c.get("c", gr) != nil, c.blocks)
	}
	// Bigger than the whole cache: not kept, and nobody evicted for it
	// (found by review: it emptied the cache at every session's end).
	big := grid{size: 16 << 20, g: 1 << 20}
	h, k = entry(make([]uint8, 16)...)
	for i := range k {
		k[i] = kindData
	}
	c.put("d", big, h, k)
	if c.get("d", big) != nil || c.get("a", gr) == nil || c.get("c", gr) == nil || c.blocks != 7 {
		t.Fatalf("an entry over the limit: kept %v, a %v, c %v, %d blocks", c.get("d", big) != nil, c.get("a", gr) != nil, c.get("c", gr) != nil, c.blocks)
	}
	// Idle entries expire.
	c.mu.Lock()
	c.m["a"].used = time.Now().Add(-2 * hashCacheIdle)
	c.mu.Unlock()
	if c.get("a", gr) != nil || c.blocks != 4 {
		t.Fatalf("an idle entry was handed out (%d blocks)", c.blocks)
	}
	s := &Server{hashes: hashCache{limit: 8}}
	h, k = entry(kindData)
	s.hashes.put("c", gr, h, k)
	s.Forget("c")
	if len(s.hashes.m) != 0 || s.hashes.blocks != 0 {
		t.Fatalf("after Forget: %d entries, %d blocks", len(s.hashes.m), s.hashes.blocks)
	}
	// A session of the fork still ending must not put it back (found by
	// review).
	h, k = entry(kindData)
	s.hashes.put("c", gr, h, k)
	if s.hashes.get("c", gr) != nil {
		t.Fatal("a forgotten fork's entry came back")
	}
}
