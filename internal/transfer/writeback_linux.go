package transfer

import "golang.org/x/sys/unix"

// startWriteback asks the kernel to begin writing [off, off+n) back now
// (sync_file_range WRITE, no wait), so dirty pages do not pile up and the
// periodic fsync stays short. Only for sinks that expose a file descriptor.
func startWriteback(s Sink, off, n int64) {
	f, ok := s.(interface{ Fd() uintptr })
	if !ok {
		return
	}
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE) // advisory
}
