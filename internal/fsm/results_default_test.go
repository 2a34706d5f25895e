package fsm

import (
	"fmt"
	"testing"
)

// TestDefaultIdempotencyMemory: README.md promises that the FSM remembers
// "the last 10,000 results". Through New (as every node builds its FSM),
// the oldest of 10,000 results is still remembered, and the 10,001st
// evicts it, so a retry of it applies again.
func TestDefaultIdempotencyMemory(t *testing.T) {
	const readmeResults = 10_000
	f := New(nil)
	up := func(req string, budget int64) ApplyResult {
		t.Helper()
		res := apply(t, f, CmdUpsertHost, UpsertHostCmd{Header: Header{RequestID: req}, Host: mkHost("h1", "us", true, budget)})
		if res.Err != nil {
			t.Fatalf("apply %s: %v", req, res.Err)
		}
		return res
	}
	budget := func(r ApplyResult) int64 { return r.Value.(*Host).Budget }
	for i := range readmeResults {
		up(fmt.Sprintf("r%d", i), int64(i+1))
	}
	f.View(func(s *State) {
		if n := len(s.results); n != readmeResults {
			t.Fatalf("remembered %d results after %d commands", n, readmeResults)
		}
	})
	// The 10,000th most recent (the very first) is still remembered: a
	// retry answers with the first result and does not apply.
	if b := budget(up("r0", 1_000_000)); b != 1 {
		t.Fatalf("the oldest of %d results was forgotten: retry applied again (budget %d)", readmeResults, b)
	}
	// The 10,001st evicts the oldest and only it.
	up(fmt.Sprintf("r%d", readmeResults), readmeResults+1)
	f.View(func(s *State) {
		if n := len(s.results); n != readmeResults {
			t.Fatalf("remembered %d results after %d commands", n, readmeResults+1)
		}
		if err := s.checkIndexes(); err != nil {
			t.Fatal(err)
		}
	})
	if b := budget(up("r1", 1_000_000)); b != 2 {
		t.Fatalf("the second result was forgotten by the %d-th: budget %d", readmeResults+1, b)
	}
	if b := budget(up("r0", 2_000_000)); b != 2_000_000 {
		t.Fatalf("the oldest result was still remembered after %d more: budget %d", readmeResults, b)
	}
}
