//go:build !linux

package transfer

import "os"

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
