package main

import (
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/forknode/forknode/internal/api"
	"golang.org/x/sys/unix"
)

func pathEscape(s string) string { return url.PathEscape(s) }

// isTerminal reports whether f is a terminal (TCGETS succeeds).
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// progress shows a fork's progress: a redrawn bar on a terminal, plain
// lines (at most one per 2 s, plus state changes) otherwise.
type progress struct {
	w     io.Writer
	tty   bool
	last  time.Time
	state string
	drawn bool
}

func newProgress(w io.Writer, tty bool) *progress { return &progress{w: w, tty: tty} }

func (p *progress) update(f api.Fork) {
	if p == nil {
		return
	}
	line := progressLine(f)
	if p.tty {
		const width = 30
		filled := int(f.Percent / 100 * width)
		if filled > width {
			filled = width
		}
		bar := strings.Repeat("#", filled) + strings.Repeat(".", width-filled)
		fmt.Fprintf(p.w, "\r\033[K[%s] %s", bar, line)
		p.drawn = true
		return
	}
	if string(f.State) == p.state && time.Since(p.last) < 2*time.Second {
		return
	}
	p.state, p.last = string(f.State), time.Now()
	fmt.Fprintln(p.w, line)
}

func (p *progress) done() {
	if p != nil && p.drawn {
		fmt.Fprintln(p.w)
	}
}

func progressLine(f api.Fork) string {
	s := fmt.Sprintf("%s %5.1f%% %s/%s", f.State, f.Percent, humanSize(f.BytesDone), humanSize(f.BytesTotal))
	if f.RateBytesPerSec > 0 {
		s += fmt.Sprintf(" %s/s", humanSize(int64(f.RateBytesPerSec)))
	}
	if f.ETASeconds > 0 {
		s += fmt.Sprintf(" ETA %s", (time.Duration(f.ETASeconds * float64(time.Second))).Round(time.Second))
	}
	if f.CompressionRatio > 0 {
		s += fmt.Sprintf(" ratio %.2f", f.CompressionRatio)
	}
	return s
}
