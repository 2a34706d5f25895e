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
// reads only the blocks no earlier session hashed.
//
// Bounded: hashCacheBlocks blocks in all (17 bytes each: 8.5 MiB, a
// 512 GiB volume at the default grid; a larger volume is not cached and
// its resumed sessions re-read), least recently used out first. An entry
// goes when the puller acknowledges the whole volume, when the fork's
// snapshot is released (Server.Forget), or once unused for hashCacheIdle.
const (
	hashCacheBlocks = 1 << 19
	hashCacheIdle   = time.Hour
)

type hashEntry struct {
	gr     grid
	hashes [][16]byte // blocks [0, len) only: past it nothing is known
	kind   []uint8    // kindNone: not hashed by any session yet
	used   time.Time
}

type hashCache struct {
	mu     sync.Mutex
	m      map[string]*hashEntry
	blocks int
	limit  int // blocks in all; 0 = hashCacheBlocks
	// done: forks whose entry was dropped for good (acknowledged, or the
	// snapshot released), so a session of theirs still ending does not
	// put one back; forgotten after hashCacheIdle.
	done map[string]time.Time
}

// get returns fork's entry for grid gr, or nil. The caller only reads it:
// put never writes to a stored entry's slices, it replaces them.
func (c *hashCache) get(fork string, gr grid) *hashEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked(time.Now())
	e := c.m[fork]
	if e == nil || e.gr != gr {
		return nil
	}
	e.used = time.Now()
	return e
}

// put merges a finished session's hashes into fork's entry. The session's
// slices are not kept: the entry copies what is known.
func (c *hashCache) put(fork string, gr grid, hashes [][16]byte, kind []uint8) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]*hashEntry{}
	}
	if _, ok := c.done[fork]; ok {
		return
	}
	old := c.m[fork]
	c.dropLocked(fork)
	if old != nil && old.gr == gr {
		for i, k := range old.kind {
			if kind[i] == kindNone && k != kindNone {
				kind[i], hashes[i] = k, old.hashes[i]
			}
		}
	}
	n := len(kind)
	for n > 0 && kind[n-1] == kindNone {
		n--
	}
	limit := c.limit
	if limit == 0 {
		limit = hashCacheBlocks
	}
	if n == 0 || n > limit {
		return // nothing known, or more than the whole cache: evict nobody for it
	}
	now := time.Now()
	c.expireLocked(now)
	for c.blocks+n > limit && len(c.m) > 0 {
		var lru string
		for id, e := range c.m {
			if lru == "" || e.used.Before(c.m[lru].used) {
				lru = id
			}
		}
		c.dropLocked(lru)
	}
	e := &hashEntry{gr: gr, hashes: make([][16]byte, n), kind: make([]uint8, n), used: now}
	copy(e.hashes, hashes)
	copy(e.kind, kind)
	c.m[fork] = e
	c.blocks += n
}

// drop removes fork's entry for good: later puts of it are ignored.
func (c *hashCache) drop(fork string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropLocked(fork)
	if c.done == nil {
		c.done = map[string]time.Time{}
	}
	c.done[fork] = time.Now()
}

func (c *hashCache) dropLocked(fork string) {
	if e := c.m[fork]; e != nil {
		c.blocks -= len(e.kind)
		delete(c.m, fork)
	}
}

func (c *hashCache) expireLocked(now time.Time) {
	for id, e := range c.m {
		if now.Sub(e.used) > hashCacheIdle {
			c.dropLocked(id)
		}
	}
	for id, at := range c.done {
		if now.Sub(at) > hashCacheIdle {
			delete(c.done, id)
		}
	}
}

// Forget drops what the server keeps for fork id's stream: the source
// calls it when it releases the fork's snapshot.
func (s *Server) Forget(forkID string) { s.hashes.drop(forkID) }
