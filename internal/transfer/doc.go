// Package transfer streams a volume snapshot from a source host to a target
// host: the "remote stream" fork path. It depends only on the Source and
// Sink interfaces it declares (cow.Device satisfies both).
//
// # Sessions
//
// The puller (target) dials and sends a hello; the source answers with an
// accept (or an error frame) and then streams data and zero frames followed
// by one done frame. Every frame carries its offset, so the puller accepts
// them in any order; this source sends them in grid order (a reorder queue
// of at most Window frames behind the parallel workers), which keeps the
// puller's watermark right behind what it received and re-sends little
// after a reconnect. The puller writes data frames with
// pwrite, turns zero frames into Sink.Zero so holes read back as zeros even
// on a reused thick LV, fsyncs about once a second and acks the contiguous
// watermark that was complete before that fsync. After done it verifies
// the whole-volume digest and its totals, fsyncs, and sends a final ack of
// the volume size. If the connection breaks, the puller waits for its
// in-flight writes, fsyncs, and reconnects with the hello's offset set to
// its durable watermark; the source (whose Opener is called again) resumes
// there. Data the puller had already received is counted as re-sent.
//
// Each new durable watermark also goes to Options.OnCheckpoint, after the
// fsync that made it durable. A caller that saves it can pass it back in
// Options.Resume after its process restarted: Pull then re-reads the
// sink's durable prefix, hashes and classifies it as the source would, and
// starts its first session at that offset. The prefix is re-read rather
// than its hashes saved, so the digest check at the end covers what is
// really on the target's disk. A checkpoint that does not fit the sink or
// the source's grid is dropped and the stream starts from zero, which
// rewrites every block.
//
// # Frame format (version 1)
//
// Every frame is a 32-byte little-endian header followed by PayloadLen
// bytes of payload:
//
//	off size field
//	  0    4 magic        0x53424B46 ("FKBS" as bytes F K B S)
//	  4    1 version      1
//	  5    1 type         1 hello, 2 accept, 3 data, 4 zero, 5 ack, 6 done, 7 error
//	  6    2 flags        data: codec (0 none, 1 zstd, 2 s2); error: code
//	  8    8 offset       volume byte offset (≤ 2^50)
//	 16    8 length       volume bytes covered (≤ 2^50, offset+length ≤ 2^50)
//	 24    4 payload len
//	 28    4 crc32c       Castagnoli CRC of header bytes 0..27, then the payload
//
// The CRC covers the header fields as well as the payload, so a flipped
// offset is caught as surely as a flipped data byte. A decoder validates
// magic, version, type, flags and every length against the bounds below
// before it reads or allocates the payload; a mismatching CRC is
// ErrCorrupt, a malformed header ErrProtocol, and a payload cut short is
// io.ErrUnexpectedEOF wrapped with the frame's type, offset and sizes.
//
// Per type:
//
//   - hello (puller → source): offset = resume offset (0 at first), length =
//     volume size learnt from an earlier accept (0 at first); payload =
//     u16 len + fork id, u16 len + host name (4..1024 bytes).
//   - accept (source → puller): offset = the resume offset accepted,
//     length = volume size; payload = u32 chunk size G (64 KiB..4 MiB), the
//     grid of the stream and of the digest.
//   - data: covers exactly one grid block [i·G, min((i+1)·G, size));
//     length 1..4 MiB; payload 1..4 MiB compressed with the codec in flags.
//     zstd frames are made by klauspost/compress at its fastest level
//     (about zstd -1) without zstd's own checksum;
//     s2 uses the block format. When compression would not shrink
//     a block it is sent raw (codec 0, payload = length), which bounds
//     every payload by the chunk size.
//   - zero: a run of whole grid blocks that must read back as zeros (known
//     holes coalesce into one frame; a block found all-zero gets its own);
//     empty payload.
//   - ack (puller → source): offset = durable watermark; length 0; empty
//     payload. offset = size is the final ack after verification. The
//     source also sends acks as keepalives (offset = bytes re-hashed) while
//     it re-reads the prefix after a resume; the puller ignores them.
//   - done (source → puller): offset 0, length = size; payload = u64 data
//     bytes, u64 zero bytes, 32-byte digest.
//   - error: offset = length = 0; flags = 1 fatal, 2 unauthorized, 3 retry,
//     4 corrupt, 5 not ready (the source is preparing, e.g. taking its
//     snapshot); payload = UTF-8 message (≤ 1024 bytes).
//
// # Whole-volume digest
//
// digest = SHA-256(H_0 ‖ H_1 ‖ … ‖ H_{n-1}), where H_i = XXH3-128 of grid
// block i's bytes (16 bytes, big-endian), and a hole or zero block hashes
// as that many zero bytes; Stats.Digest shows it as "xxh3-sha256:<hex>".
// Each side hashes blocks as it reads or writes them, in any order. A
// resumed session needs the hashes of the blocks before its resume point:
// the server keeps, per fork, those its earlier sessions computed (the
// snapshot does not change while its fork runs; at most 2^19 blocks in
// all, least recently used first out, dropped at the final ack, when the
// fork's snapshot is released (Server.Forget) or after an hour unused),
// and re-reads locally only what it has no hash for: after the source's
// agent restarted, after an eviction, or for a volume too large to cache.
// A puller resuming from a checkpoint re-reads its own prefix likewise.
// The puller reports success only when its digest of what it wrote equals
// the source's, and the data/zero byte totals agree. XXH3 rather than
// SHA-256 per block: SHA-256 cost each side about a sixth of its CPU even
// with SHA-NI, XXH3 runs at memory speed, and 128 bits per block is far
// beyond what random corruption or a misplaced write collides with. The
// per-block hashes detect corruption; they do not authenticate (the source
// is trusted, and mTLS plus the frame CRCs guard the path).
//
// # Retries
//
// Pull reconnects (exponential backoff from 50 ms to 5 s) after any
// transient failure: dial errors, I/O timeouts (Options.IOTimeout on every
// read and write), a cut connection, a CRC mismatch (the bad frame is
// dropped and re-sent from the durable watermark; three corrupt sessions in
// a row without progress fail with ErrCorrupt). It gives up with ErrAborted
// after Options.GiveUp without progress; a source that answers "not ready"
// is alive and working, so that wait does not count. It fails at once on
// ErrUnauthorized, a fatal error frame, a source that changed size or grid,
// a frame outside the grid, a local write/fsync error, or a digest or
// totals mismatch at the end (ErrCorrupt: the data already written cannot
// be trusted, so there is nothing to resume).
//
// # Pipeline and memory
//
// The source walks the grid (skipping known holes without reading them:
// when the Opener gives no extents and the source has a file descriptor,
// SEEK_DATA/SEEK_HOLE find them), asks for readahead a window ahead (the
// source's Prefetch, or fadvise WILLNEED), reads, classifies, hashes and
// compresses blocks on GOMAXPROCS workers and writes frames from one
// writer goroutine. The puller reads frames on one goroutine and
// decompresses, hashes and writes them on GOMAXPROCS+2 workers (writes
// block on the disk). When the sink has a file descriptor (Fd() uintptr)
// the puller reopens it with O_DIRECT and writes every aligned block
// straight to the disk, in parallel: a buffered pwrite cost more CPU than
// the decompression, and its dirty pages would all have to be flushed by
// the fsync anyway. Otherwise (and for an odd-sized tail block) it writes
// through Sink.WriteAt and starts writeback of the range at once (the
// sink's StartWriteback(off, n int64) error, as cow devices have, or
// sync_file_range on its descriptor), so the fsync before each ack stays
// short. Both sides hold at most Window chunk buffers (default 8 × 1 MiB,
// capped so buffers stay under 48 MiB), so memory grows with the volume
// size only by the per-chunk state: 17 bytes of block hash and kind on
// the source (272 KiB for 16 GiB), 19 on the puller (17 more while it
// re-reads a checkpoint's prefix), and on the source the hash cache above
// (at most 8.5 MiB).
// Measured: under 32 MiB RSS per side for a 16 GiB volume.
// The rate limit (per transfer and an optional shared Limiter) is charged
// for every block read from the source, before it is read.
//
// # Reading a block-device source
//
// When the source's Fd() is a block device (an LV, a read-only loop device),
// the sender reopens it read-only with O_DIRECT (through /proc/self/fd) and
// reads every grid block's aligned part straight into aligned buffers:
// offsets, lengths and buffers are multiples of max(4 KiB, the device's
// logical block size from BLKSSZGET). A tail that is not a multiple (a
// device size off the alignment) is read through Source.ReadAt. Why: a
// buffered read of a block device goes through its page cache one
// readahead window at a time, and measured 282 MB/s on a loop device that
// O_DIRECT reads at 2.5 GB/s, and left a 2 GiB stream's sender 7.9 s of
// wall time for 4.3 s of CPU. A snapshot is read once, so the cache buys
// nothing, and the kernel writes back any dirty cached range before a
// direct read of it, so the bytes are the same. O_DIRECT has no readahead,
// so such a sender runs two workers more than GOMAXPROCS: up to
// GOMAXPROCS+2 reads in flight while the CPUs keep compressing (measured
// faster than GOMAXPROCS workers; Window still bounds the buffers), and it
// sends no readahead hints. The prefix re-hash after a resume reads the
// same way. If the kernel refuses O_DIRECT (EINVAL or EOPNOTSUPP, at open
// or at a read) the session logs it once at debug and reads through
// Source.ReadAt from then on. Regular files keep buffered reads with
// FADV_WILLNEED a window ahead: that measured faster for files here, and
// their holes are skipped without reading them anyway.
//
// The "auto" codec measures, per chunk, each codec's compression speed and
// ratio and the link's speed while writing, and picks the codec with the
// higher min(workers × speed, link / ratio), re-probing now and then.
package transfer
