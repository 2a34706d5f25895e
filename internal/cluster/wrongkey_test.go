package cluster

import (
	"bytes"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/cow"
	"github.com/forknode/forknode/internal/keys"
	"github.com/forknode/forknode/internal/testutil"
	"github.com/hashicorp/go-hclog"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A node started with another cluster key stays out, and its log says why
// in words an operator can act on, not only memberlist's own.
func TestJoinWithAnotherKeySaysSo(t *testing.T) {
	tc := newTestCluster(t, []int64{100 * MiB}, nil)
	other, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	lg := hclog.New(&hclog.LoggerOptions{Name: "stranger", Level: hclog.Warn, Output: &logs})
	dir := t.TempDir()
	be, err := cow.NewFileBackend(filepath.Join(dir, "volumes"), 100*MiB, lg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := tc.cfgs[0]
	cfg.Name, cfg.DataDir, cfg.Backend, cfg.Logger, cfg.Keys = "stranger", filepath.Join(dir, "data"), be, lg, other
	cfg.GossipAddr, cfg.ClusterAddr, cfg.APIAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.BootstrapExpect = 0
	cfg.Join = []string{tc.nodes[0].GossipAddr()}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.shutdown(false) })
	testutil.Eventually(t, 10*time.Second, "the join failure names the key", func() bool {
		return strings.Contains(logs.String(), "the peers use another cluster key")
	})
	if got := len(tc.nodes[0].Status().Members); got != 1 {
		t.Fatalf("the node with another key became one of %d members", got)
	}
}
