package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/cow"
	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/testutil"
	"github.com/hashicorp/go-hclog"
)

// TestClusterStreamTargetRestartResumes: the stream's target stops in the
// middle (as an upgrade or a crash stops it) and starts again on the same
// data dir. It keeps its half-made volume, resumes from its last durable
// checkpoint instead of from zero, the fork ends ready with the source's
// bytes, and the checkpoint file is gone afterwards.
func TestClusterStreamTargetRestartResumes(t *testing.T) {
	const size = 32 * MiB
	tc := newTestClusterWith(t, []int64{40*MiB + snapshotCost(t, size), 200 * MiB, 200 * MiB}, nil, func(c *Config) {
		c.RateLimit = 4 * MiB
		c.StreamCodec = "none"
		c.DeadHostTimeout = time.Minute // this test is about the resume, not the dead-host timer
	})
	src := tc.createVolume(tc.leader(), "big", "app", "n1", size)
	tc.fill(src, 5)
	content := tc.read("n1", src.ID)
	fk, err := tc.fork(tc.leader(), fsm.ForkRequest{Source: src.ID, Name: "big-2", Host: "n2"})
	if err != nil {
		t.Fatal(err)
	}
	if fk.Path != fsm.PathStream {
		t.Fatalf("path %s, want stream", fk.Path)
	}
	idx := 1
	n2 := tc.nodes[idx]
	ckptPath := filepath.Join(tc.cfgs[idx].DataDir, checkpointDir, fk.ID+".json")
	var at int64
	testutil.Eventually(t, 20*time.Second, "a checkpoint past 8 MiB on n2", func() bool {
		raw, err := os.ReadFile(ckptPath)
		if err != nil {
			return false
		}
		var rp resumePoint
		if json.Unmarshal(raw, &rp) != nil || rp.Fork != fk.ID || rp.Volume != fk.TargetVolume {
			return false
		}
		at = rp.Durable
		return at >= 8*MiB
	})
	cfg := tc.cfgs[idx]
	cfg.ClusterAddr, cfg.GossipAddr = n2.ClusterAddr(), n2.GossipAddr()
	n2.shutdown(false)
	tc.nodes[idx] = nil
	if _, err := cfg.Backend.Get(context.Background(), fk.TargetVolume); err != nil {
		t.Fatalf("n2's half-made target after the stop: %v", err)
	}

	var logs syncBuffer
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: "n2", Level: hclog.Info, Output: io.MultiWriter(&logs, os.Stderr)})
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tc.nodes[idx] = n
	f := tc.waitFork(n, fk.ID, 60*time.Second)
	if f.State != fsm.ForkReady {
		t.Fatalf("fork after the target's restart: %s (%s), want ready", f.State, f.Error)
	}
	if !bytes.Equal(tc.read("n2", f.TargetVolume), content) {
		t.Fatal("fork differs from its source")
	}
	m := regexp.MustCompile(`stream complete: .*\bresumed=(\d+)`).FindStringSubmatch(logs.String())
	if m == nil {
		t.Fatalf("no `stream complete` line from the restarted n2:\n%s", logs.String())
	}
	if resumed, _ := strconv.ParseInt(m[1], 10, 64); resumed < at {
		t.Fatalf("the restarted target resumed at %d, want at least its checkpoint %d", resumed, at)
	}
	t.Logf("checkpoint %d MiB before the stop; %s", at/MiB, m[0])
	testutil.Eventually(t, 5*time.Second, "checkpoint file removed", func() bool {
		_, err := os.Stat(ckptPath)
		return os.IsNotExist(err)
	})
}

// TestPruneCheckpoints: a checkpoint stays while its fork is a stream in
// flight to this host, and for a grace period after it is written (a fork
// newer than the pass's view of the catalog); anything else goes, and so
// do temp files a crash left mid-save.
func TestPruneCheckpoints(t *testing.T) {
	dir := t.TempDir()
	e := &executor{n: &Node{cfg: Config{DataDir: dir, Name: "n2"}}, logger: hclog.NewNullLogger()}
	old := time.Now().Add(-2 * checkpointKeep)
	forks := map[string]fsm.Fork{
		"fork_inflight":  {ID: "fork_inflight", SourceHost: "n1", TargetHost: "n2", State: fsm.ForkRunning},
		"fork_done":      {ID: "fork_done", SourceHost: "n1", TargetHost: "n2", State: fsm.ForkReady},
		"fork_local":     {ID: "fork_local", SourceHost: "n2", TargetHost: "n2", State: fsm.ForkRunning},
		"fork_elsewhere": {ID: "fork_elsewhere", SourceHost: "n2", TargetHost: "n3", State: fsm.ForkRunning},
	}
	cases := []struct {
		file string
		old  bool
		keep bool
	}{
		{"fork_inflight.json", true, true},
		{"fork_done.json", true, false},
		{"fork_done_recent.json", false, true}, // unknown but young
		{"fork_local.json", true, false},
		{"fork_elsewhere.json", true, false},
		{"fork_unknown.json", true, false},
		{".fork_inflight.json123", true, false}, // renameio temp file
		{".fork_inflight.json456", false, true},
	}
	sd := filepath.Join(dir, checkpointDir)
	if err := os.MkdirAll(sd, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		p := filepath.Join(sd, c.file)
		if err := os.WriteFile(p, []byte("{}"), 0o600); err != nil {
			t.Fatal(err)
		}
		if c.old {
			if err := os.Chtimes(p, old, old); err != nil {
				t.Fatal(err)
			}
		}
	}
	e.pruneCheckpoints(forks)
	for _, c := range cases {
		_, err := os.Stat(filepath.Join(sd, c.file))
		if kept := err == nil; kept != c.keep {
			t.Errorf("%s: kept=%v, want %v", c.file, kept, c.keep)
		}
	}
}

func TestCheckpointPath(t *testing.T) {
	e := &executor{n: &Node{cfg: Config{DataDir: "/d"}}}
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"fork_0123abcd", true},
		{"", false},
		{"../raft", false},
		{"fork_a/b", false},
		{".", false},
		{"fork_a.json", false},
	} {
		p, err := e.checkpointPath(tc.id)
		if (err == nil) != tc.ok {
			t.Errorf("checkpointPath(%q) = %q, %v; want ok=%v", tc.id, p, err, tc.ok)
		}
		if err == nil && p != "/d/streams/"+tc.id+".json" {
			t.Errorf("checkpointPath(%q) = %q", tc.id, p)
		}
	}
}

// flakyGet fails its first fails Gets with a transient error.
type flakyGet struct {
	cow.Backend
	fails int
	calls int
}

func (f *flakyGet) Get(ctx context.Context, id string) (cow.Volume, error) {
	f.calls++
	if f.calls <= f.fails {
		return cow.Volume{}, errors.New("lvs: exit status 5")
	}
	return f.Backend.Get(ctx, id)
}

// TestVolumeExists: whether a stream target exists decides whether its
// checkpoint is resumed, so a transient error is neither "no" (the resume
// would be thrown away) nor "yes" (an empty volume would be resumed).
func TestVolumeExists(t *testing.T) {
	lg := hclog.NewNullLogger()
	be, err := cow.NewFileBackend(t.TempDir(), 0, lg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := be.Create(ctx, cow.CreateSpec{ID: "vol_there", Name: "there", Size: MiB, Owner: "fork_x"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id      string
		fails   int
		want    bool
		wantErr bool
	}{
		{"vol_there", 0, true, false},
		{"vol_absent", 0, false, false},
		{"vol_there", 2, true, false}, // two transient errors, then the answer
		{"vol_absent", 1, false, false},
		{"vol_there", 3, false, true}, // still failing: an error, not a guess
	} {
		fb := &flakyGet{Backend: be, fails: tc.fails}
		e := &executor{n: &Node{cfg: Config{Backend: fb}}, logger: lg}
		got, err := e.volumeExists(ctx, tc.id)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("%s after %d failures: %v, %v; want %v, error %v", tc.id, tc.fails, got, err, tc.want, tc.wantErr)
		}
	}
}
