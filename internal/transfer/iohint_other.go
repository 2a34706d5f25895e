//go:build !linux

package transfer

import (
	"os"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
)

type writeBacker interface {
	StartWriteback(off, n int64) error
}

func startWriteback(s Sink, off, n int64) {
	if wb, ok := s.(writeBacker); ok {
		_ = wb.StartWriteback(off, n)
	}
}

func prefetch(Source, int64, int64)      {}
func openDirect(Sink) *os.File           { return nil }
func directRefused(error) bool           { return false }
func dataExtents(Source, int64) []Extent { return nil }

// directSource is Linux-only (O_DIRECT, BLKSSZGET); elsewhere sources are
// always read through Source.ReadAt.
type directSource struct{ bytes atomic.Int64 }

func openDirectSource(Source, hclog.Logger) *directSource       { return nil }
func (d *directSource) readAt(p []byte, off int64) (int, error) { return 0, nil }
func (d *directSource) active() bool                            { return false }
func (d *directSource) bufAlign() int                           { return ioAlign }
func (d *directSource) close()                                  {}
