package transfer

import (
	"sync"
	"time"
)

// A resumed session needs the hashes of every block before its resume
// point for the whole-volume digest. Without them the source re-reads the
// snapshot up to there: on a large volume cut near its end, nearly all of
// it, paced next to the production database, while the puller waits. The
// server therefore keeps, per fork, the block hashes its sessions computed
// (the snapshot does not change while its fork runs) and a resumed session
// reads only the blocks no earlier session hashed. The entry goes when the
// puller acknowledges the whole volume, when unused for hashCacheIdle, or
// least recently used first beyond hashCacheBlocks blocks in all.
const (
	hashCacheBlocks = 1 << 20 // 17 MiB of hashes and kinds: 1 TiB at the default grid
	hashCacheIdle   = time.Hour
)

type hashEntry struct {
	gr     grid
	hashes [][16]byte
	kind   []uint8 // kindNone: not hashed by any session yet
	used   time.Time
}

type hashCache struct {
	mu     sync.Mutex
	m      map[string]*hashEntry
	blocks int
	limit  int // blocks in all; 0 = hashCacheBlocks
}

// get returns fork's entry for grid gr, or nil. The caller only reads it.
func (c *hashCache) get(fork string, gr grid) *hashEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.m[fork]
	if e == nil || e.gr != gr {
		return nil
	}
	e.used = time.Now()
	return e // put never writes to a stored entry's slices: it replaces them
}

// put merges a finished session's hashes into fork's entry; the slices
// become the cache's, and neither side writes to them again.
func (c *hashCache) put(fork string, gr grid, hashes [][16]byte, kind []uint8) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]*hashEntry{}
	}
	if old := c.m[fork]; old != nil {
		if old.gr == gr {
			for i, k := range old.kind {
				if kind[i] == kindNone && k != kindNone {
					kind[i], hashes[i] = k, old.hashes[i]
				}
			}
		}
		c.blocks -= len(old.kind)
		delete(c.m, fork)
	}
	now := time.Now()
	for id, e := range c.m {
		if now.Sub(e.used) > hashCacheIdle {
			c.blocks -= len(e.kind)
			delete(c.m, id)
		}
	}
	limit := c.limit
	if limit == 0 {
		limit = hashCacheBlocks
	}
	for c.blocks+len(kind) > limit && len(c.m) > 0 {
		var lru string
		for id, e := range c.m {
			if lru == "" || e.used.Before(c.m[lru].used) {
				lru = id
			}
		}
		c.blocks -= len(c.m[lru].kind)
		delete(c.m, lru)
	}
	if len(kind) > limit {
		return
	}
	c.m[fork] = &hashEntry{gr: gr, hashes: hashes, kind: kind, used: now}
	c.blocks += len(kind)
}

func (c *hashCache) drop(fork string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.m[fork]; e != nil {
		c.blocks -= len(e.kind)
		delete(c.m, fork)
	}
}
