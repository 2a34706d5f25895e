package cluster

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/testutil"
	"github.com/forknode/forknode/internal/transfer"
)

// TestOpenStreamRules: a stream source serves a fork's blocks only to the
// fork's target host, only while the fork is in flight, only for a stream
// fork sourced here, and always from the fork's snapshot, never from the
// live volume. (The puller's name comes from its verified certificate; the
// transfer package tests that part.)
func TestOpenStreamRules(t *testing.T) {
	tc := newTestClusterWith(t, []int64{200 * MiB, 200 * MiB, 200 * MiB}, nil, func(c *Config) {
		c.StreamCodec = "none"
	})
	ctx := context.Background()
	src := tc.createVolume(tc.leader(), "db", "app", "n1", 16*MiB)
	tc.fill(src, 11)
	before := tc.read("n1", src.ID)
	// 16 MiB at 1 MiB/s: the stream stays in flight for the whole test.
	fk, err := tc.fork(tc.leader(), fsm.ForkRequest{Source: src.ID, Name: "slow", Host: "n2", Via: fsm.PathStream, RateLimit: MiB})
	if err != nil {
		t.Fatal(err)
	}
	n1 := tc.node("n1")
	testutil.Eventually(t, 10*time.Second, "stream under way", func() bool {
		var f fsm.Fork
		n1.View(func(s *fsm.State) { f, _ = s.Fork(fk.ID) })
		return f.BytesDone > 0
	})
	cp, err := tc.fork(tc.leader(), fsm.ForkRequest{Source: src.ID, Name: "copied", Via: fsm.PathCopy, RateLimit: MiB})
	if err != nil {
		t.Fatal(err)
	}

	// The live volume changes after the snapshot was taken.
	dev, err := n1.Backend().Open(ctx, src.ID, true)
	if err != nil {
		t.Fatal(err)
	}
	marker := bytes.Repeat([]byte("written after the fork began "), 1000)
	if _, err := dev.WriteAt(marker, 0); err != nil {
		t.Fatal(err)
	}
	dev.Sync()
	dev.Close()

	for _, c := range []struct {
		name     string
		on       string
		fork     string
		peer     string
		wantErr  error
		wantData bool
	}{
		{"the target host", "n1", fk.ID, "n2", nil, true},
		{"a third host", "n1", fk.ID, "n3", transfer.ErrUnauthorized, false},
		{"no name", "n1", fk.ID, "", transfer.ErrUnauthorized, false},
		{"the source host itself", "n1", fk.ID, "n1", transfer.ErrUnauthorized, false},
		{"a host that is not the source", "n2", fk.ID, "n2", transfer.ErrUnauthorized, false},
		{"a copy fork", "n1", cp.ID, cp.TargetHost, transfer.ErrUnauthorized, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, _, closer, err := tc.node(c.on).exec.openStream(ctx, c.fork, c.peer)
			if !errors.Is(err, c.wantErr) || (c.wantErr == nil) != (err == nil) {
				t.Fatalf("openStream on %s by %q: %v, want %v", c.on, c.peer, err, c.wantErr)
			}
			if err != nil {
				return
			}
			defer closer()
			got := make([]byte, len(before))
			if _, err := s.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, before) {
				t.Fatal("the stream source reads other bytes than the volume held when the fork began: it is not the snapshot")
			}
		})
	}

	// Once the fork has finished, nobody may pull it.
	if _, err := n1.Apply(ctx, fsm.CmdFinishFork, &fsm.FinishForkCmd{ForkID: fk.ID, Error: "stopped by the test"}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "fork finished on n1", func() bool {
		var f fsm.Fork
		n1.View(func(s *fsm.State) { f, _ = s.Fork(fk.ID) })
		return f.Finished()
	})
	if _, _, _, err := n1.exec.openStream(ctx, fk.ID, "n2"); !errors.Is(err, transfer.ErrUnauthorized) {
		t.Fatalf("pull of a finished fork: %v, want ErrUnauthorized", err)
	}
}
