// Command streambench runs forknode's block stream (internal/transfer)
// between two real processes, so that the stream benchmark measures what a
// fork across hosts does: real TCP, real files, real fsync.
//
//	streambench serve -listen ADDR -src PATH [-codec zstd|s2] [-extents auto|seek|scan] [-sessions 1] [-chunk BYTES] [-window N]
//	streambench pull  -connect ADDR -out PATH -size BYTES
//
// serve streams PATH (an image file, or a block device such as a read-only
// loop device) to pullers and exits after -sessions completed sessions.
// Extents come from SEEK_DATA/SEEK_HOLE ("seek"); where that gives nothing
// useful (a block device reports one extent covering everything) "auto"
// falls back to "scan": no extents, the sender reads everything and skips
// all-zero chunks.
//
// pull creates OUT as a sparse file of BYTES and pulls into it. It returns
// only when the volume is verified and durable (transfer.Pull fsyncs before
// it acknowledges), and prints one `STREAM ...` line with the transfer's
// statistics and its own CPU time and peak RSS.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/forknode/forknode/internal/cow"
	"github.com/forknode/forknode/internal/transfer"
)

const forkID = "fork_bench"

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "pull":
		err = pull(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "streambench:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: streambench serve -listen ADDR -src PATH [-codec zstd|s2] [-extents auto|seek|scan] [-sessions N] [-chunk BYTES] [-window N]\n       streambench pull -connect ADDR -out PATH -size BYTES")
	os.Exit(2)
}

// startProfile starts a CPU profile into path ("" = none); the returned
// func stops it and closes the file.
func startProfile(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

func logger(level string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "streambench", Level: hclog.LevelFromString(level), Output: os.Stderr})
}

// rawSource is a Source over any file or block device; its size is where
// the file ends (Stat reports 0 for block devices). It exposes Fd() as
// cow's devices do, so the sender takes the same paths as in forknode: a
// block device is read with O_DIRECT, a file with readahead hints.
type rawSource struct {
	f    *os.File
	size int64
}

func (s *rawSource) ReadAt(p []byte, off int64) (int, error) { return s.f.ReadAt(p, off) }
func (s *rawSource) Size() int64                             { return s.size }
func (s *rawSource) Fd() uintptr                             { return s.f.Fd() }

func openSource(path string) (*rawSource, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("size of %s: %w", path, err)
	}
	// The sender reads front to back: let readahead grow.
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_SEQUENTIAL)
	return &rawSource{f: f, size: size}, nil
}

// seekExtents lists data extents with SEEK_DATA/SEEK_HOLE. ok is false when
// the file cannot tell (the call is unsupported, or it reports the whole
// range as one extent, which is what block devices do).
func seekExtents(f *os.File, size int64) (ext []transfer.Extent, ok bool, err error) {
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ESPIPE) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, fmt.Errorf("seek data at %d: %w", off, err)
		}
		if data >= size {
			break
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil, false, fmt.Errorf("seek hole at %d: %w", data, err)
		}
		hole = min(hole, size)
		ext = append(ext, transfer.Extent{Offset: data, Length: hole - data})
		off = hole
	}
	if len(ext) == 1 && ext[0].Offset == 0 && ext[0].Length == size {
		return ext, false, nil
	}
	return ext, true, nil
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	listen := fs.String("listen", "", "address to listen on (host:port)")
	src := fs.String("src", "", "image file or block device to stream")
	codec := fs.String("codec", "zstd", "zstd, s2, auto or none")
	mode := fs.String("extents", "auto", "auto, seek or scan")
	sessions := fs.Int("sessions", 1, "exit after this many completed sessions (0: never)")
	level := fs.String("log", "warn", "log level")
	prof := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	chunk := fs.Int("chunk", 0, "chunk size in bytes (0: transfer's default)")
	window := fs.Int("window", 0, "frames in flight (0: transfer's default)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	stopProf, err := startProfile(*prof)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	defer stopProf()
	if *listen == "" || *src == "" {
		return errors.New("serve: -listen and -src are required")
	}
	if *mode != "auto" && *mode != "seek" && *mode != "scan" {
		return fmt.Errorf("serve: -extents %q: want auto, seek or scan", *mode)
	}
	source, err := openSource(*src)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	defer source.f.Close()

	var ext []transfer.Extent
	how := "scan"
	if *mode != "scan" {
		e, ok, err := seekExtents(source.f, source.size)
		if err != nil {
			return fmt.Errorf("serve: %w", err)
		}
		if ok || *mode == "seek" {
			ext, how = e, "seek"
		}
	}
	var data int64
	for _, e := range ext {
		data += e.Length
	}
	log := logger(*level)
	log.Info("source", "path", *src, "size", source.size, "extents", how, "extent_count", len(ext), "extent_bytes", data)
	fmt.Fprintf(os.Stderr, "SERVE src=%s size=%d extents=%s extent_count=%d extent_bytes=%d\n", *src, source.size, how, len(ext), data)

	done := make(chan struct{}, 64)
	srv := transfer.NewServer(func(ctx context.Context, id, peer string) (transfer.Source, []transfer.Extent, func(), error) {
		if id != forkID {
			return nil, nil, nil, fmt.Errorf("%w: unknown fork %q", transfer.ErrUnauthorized, id)
		}
		return source, ext, func() { done <- struct{}{} }, nil
	}, transfer.Options{Codec: *codec, ChunkSize: *chunk, Window: *window, Logger: log, PlainPeers: true}) // plain TCP, as the baseline
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	for n := 0; *sessions == 0 || n < *sessions; {
		select {
		case <-done:
			n++
		case s := <-sig:
			srv.Close()
			return fmt.Errorf("serve: %v", s)
		case err := <-errc:
			return fmt.Errorf("serve: %w", err)
		}
	}
	return srv.Close()
}

func pull(args []string) error {
	fs := flag.NewFlagSet("pull", flag.ContinueOnError)
	connect := fs.String("connect", "", "server address (host:port)")
	out := fs.String("out", "", "target image file (created sparse)")
	size := fs.Int64("size", 0, "volume size in bytes")
	wait := fs.Duration("wait", 20*time.Second, "keep retrying the first connection this long (the server may still be starting)")
	level := fs.String("log", "warn", "log level")
	prof := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	stopProf, err := startProfile(*prof)
	if err != nil {
		return fmt.Errorf("pull: %w", err)
	}
	defer stopProf()
	if *connect == "" || *out == "" || *size <= 0 {
		return errors.New("pull: -connect, -out and -size > 0 are required")
	}
	f, err := os.OpenFile(*out, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("pull: %w", err)
	}
	err = f.Truncate(*size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pull: %w", err)
	}
	sink, err := cow.OpenFileDevice(*out, true)
	if err != nil {
		return fmt.Errorf("pull: %w", err)
	}
	defer sink.Close()

	// Until the first connection succeeds, retry quickly: the server is
	// started at the same moment as this process.
	connected := false
	deadline := time.Now().Add(*wait)
	dial := func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		for {
			c, err := d.DialContext(ctx, "tcp", *connect)
			if err == nil || connected || time.Now().After(deadline) {
				connected = connected || err == nil
				return c, err
			}
			select {
			case <-time.After(5 * time.Millisecond):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	st, err := transfer.Pull(ctx, dial, forkID, "bench-target", sink, transfer.Options{Logger: logger(*level)})
	if err != nil {
		return fmt.Errorf("pull: %w", err)
	}
	elapsed := time.Since(start)
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	fmt.Printf("STREAM bytes=%d data=%d zero=%d wire=%d resent=%d reconnects=%d seconds=%.3f cpu_s=%.2f maxrss_kb=%d digest=%s\n",
		st.Bytes, st.DataBytes, st.ZeroBytes, st.Wire, st.Resent, st.Reconnects, elapsed.Seconds(), cpu.Seconds(), ru.Maxrss, st.Digest)
	return nil
}
