package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/forknode/forknode/internal/api"
	"github.com/forknode/forknode/internal/fsm"
)

func TestProgress(t *testing.T) {
	f := api.Derive(fsm.Fork{ID: "fork_1", State: fsm.ForkRunning, BytesDone: 512 << 20, BytesTotal: 1 << 30,
		WireBytes: 128 << 20, CreatedAt: 1e9, UpdatedAt: 3e9})
	line := progressLine(f)
	for _, want := range []string{"running", "50.0%", "512 MiB/1 GiB", "256 MiB/s", "ETA 2s", "ratio 4.00"} {
		if !strings.Contains(line, want) {
			t.Errorf("progress line %q lacks %q", line, want)
		}
	}

	var tty bytes.Buffer
	p := newProgress(&tty, true)
	p.update(f)
	p.update(f)
	p.done()
	if got := tty.String(); strings.Count(got, "\r\033[K[###############...............]") != 2 || !strings.HasSuffix(got, "\n") {
		t.Errorf("tty output %q", got)
	}

	var plain bytes.Buffer
	p = newProgress(&plain, false)
	p.update(f)
	p.update(f) // same state within 2 s: not repeated
	f.State = fsm.ForkReady
	p.update(f)
	p.done()
	if lines := strings.Split(strings.TrimSpace(plain.String()), "\n"); len(lines) != 2 || strings.Contains(plain.String(), "\r") {
		t.Errorf("plain output %q", plain.String())
	}
	var nilp *progress
	nilp.update(f) // --json: no progress at all
	nilp.done()
}
