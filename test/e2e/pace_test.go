package e2e

import (
	"context"
	"errors"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/api"
	"github.com/forknode/forknode/internal/fsm"
)

// TestPacingBacksOffUnderCPULoad runs two agents with the default settings
// (100 MiB/s ceiling, pacing on) and streams a volume from n0 to n1 while
// CPU hogs at normal priority keep every CPU of the machine busy, as a
// database under load would. The source must report, through
// `forknode status --json`, that it paces below the ceiling because of the
// CPU; the fork must still finish with the source's bytes; and once the
// hogs stop and the node is idle, the pace must settle at a quarter of the
// ceiling again.
func TestPacingBacksOffUnderCPULoad(t *testing.T) {
	const size = 96 * mib
	c := startFaultCluster(t, faultOpts{nodes: 2, extra: func(int) []string { return []string{"--capacity", "1GiB"} }})
	src := c.createVolume("pace-src", size, 0)
	c.fillImage(0, src.ID, size, 7, nil)

	var hogs []*exec.Cmd
	stopHogs := func() {
		for _, h := range hogs {
			h.Process.Kill()
			h.Wait()
		}
		hogs = nil
	}
	t.Cleanup(stopHogs)
	for range runtime.NumCPU() + 1 {
		h := exec.Command("sh", "-c", "while :; do :; done")
		if err := h.Start(); err != nil {
			t.Fatal(err)
		}
		hogs = append(hogs, h)
	}

	f := c.startFork(0, api.CreateForkRequest{Source: "pace-src", Name: "pace-fork", Host: "n1", Via: "stream"})
	if f.Path != fsm.PathStream {
		t.Fatalf("path %s, want stream", f.Path)
	}
	ctx := context.Background()
	var paced *api.Status
	var forkErr error // the fork read's error, while it keeps failing
	var forkErrSince time.Time
	deadline := time.Now().Add(60 * time.Second)
	for paced == nil && time.Now().Before(deadline) {
		st, err := c.client(0).Status(ctx)
		if err == nil && st.Pace != nil && st.Pace.Active && strings.Contains(st.Pace.Congested, "cpu=") && st.Pace.Rate < st.Pace.Ceiling/2 {
			paced = st
			break
		}
		// With every CPU busy a request can miss its deadline now and
		// then: retry on the next round, but fail (with the reason) on a
		// definite refusal (4xx) or if the fork stays unreadable, instead
		// of polling a nil fork.
		fctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		g, err := c.client(0).Fork(fctx, f.ID)
		cancel()
		var apiErr *api.Error
		switch {
		case errors.As(err, &apiErr) && apiErr.Status < 500:
			t.Fatalf("reading fork %s: %v (HTTP %d)", f.ID, err, apiErr.Status)
		case err != nil:
			if forkErr == nil {
				forkErrSince = time.Now()
			}
			forkErr = err
			if time.Since(forkErrSince) > 15*time.Second {
				t.Fatalf("fork %s unreadable for %s under CPU load: %v", f.ID, time.Since(forkErrSince).Round(time.Second), err)
			}
		case g.Finished():
			t.Fatalf("fork finished (%s) before the source ever paced down under CPU load", g.State)
		default:
			forkErr = nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	if paced == nil {
		out, _ := c.cli(ctx, 0, "status")
		t.Fatalf("the source never paced below half its ceiling under CPU load (last fork read error: %v); status:\n%s", forkErr, out)
	}
	t.Logf("source paced at %d MiB/s of %d (%s)", paced.Pace.Rate/mib, paced.Pace.Ceiling/mib, paced.Pace.Congested)
	if out, err := c.cli(ctx, 0, "status"); err != nil || !strings.Contains(out, "fork I/O pacing:") {
		t.Errorf("forknode status does not show the pace: %v\n%s", err, out)
	} else {
		t.Logf("forknode status:\n%s", out)
	}
	stopHogs()

	f = c.waitFinished(0, f.ID, 120*time.Second)
	if f.State != fsm.ForkReady {
		t.Fatalf("paced fork: %s (%s), want ready", f.State, f.Error)
	}
	ftSameImage(t, c.imgPath(0, src.ID), c.imgPath(1, f.TargetVolume))
	// Idle again: the agent waits at a quarter of the ceiling (after its
	// two-second idle spell).
	ok := false
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		st, err := c.client(0).Status(ctx)
		if err == nil && st.Pace != nil && !st.Pace.Active && st.Pace.Rate == st.Pace.Ceiling/4 {
			ok = true
			break
		}
	}
	if !ok {
		st, err := c.client(0).Status(ctx)
		t.Fatalf("idle source did not settle at a quarter of its ceiling: %+v %v", st, err)
	}
}
