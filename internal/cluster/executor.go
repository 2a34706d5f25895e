package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/forknode/forknode/internal/cow"
	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/pace"
	"github.com/forknode/forknode/internal/transfer"
	"github.com/hashicorp/go-hclog"
)

// The executor carries out this host's part of the catalog. It is a level-
// triggered reconciler: on every catalog change (and on a timer, in case a
// change was missed) it compares what the catalog wants on this host with
// what it is already doing, and starts the missing work. Every step is
// idempotent (ids come from the catalog), so a crash at any point is
// repaired by running the same steps again.
//
// Snapshots are named after the fork's target volume ("snap_" + vol id), so
// one rule finds leftovers after a crash: a snapshot whose fork is not being
// worked on by this process is released.
type executor struct {
	n      *Node
	logger hclog.Logger

	mu      sync.Mutex
	running map[string]context.CancelFunc // task key -> cancel
	snapMu  sync.Mutex                    // guards snaps
	snaps   map[string]*snapJob           // stream snapshots being taken, by id
	// snapWait is how long a pull waits for a snapshot being taken before
	// it is told to come back.
	snapWait time.Duration

	xfer     *transfer.Server
	limiter  *transfer.Limiter
	pacer    *pace.Controller // nil: the limiter holds RateLimit
	progress time.Duration

	// done holds forks this process finished. The local catalog can lag
	// the leader for a moment after FinishFork commits; without this a pass
	// in that window would start the fork again on top of its result.
	done map[string]bool

	restarted bool // restart reconciliation done
	wg        sync.WaitGroup
}

func newExecutor(n *Node) *executor {
	e := &executor{n: n, logger: n.logger.Named("executor"), running: map[string]context.CancelFunc{}, done: map[string]bool{},
		snaps: map[string]*snapJob{}, snapWait: 5 * time.Second}
	e.progress = time.Second
	if n.cfg.Fast {
		e.progress = 200 * time.Millisecond
		e.snapWait = 500 * time.Millisecond
	}
	if n.cfg.RateLimit > 0 {
		e.limiter = transfer.NewLimiter(n.cfg.RateLimit)
		if n.cfg.Pace {
			e.pacer = newPacer(n.cfg, e.limiter, e.logger.Named("pace"))
		}
	}
	e.xfer = transfer.NewServer(e.openStream, e.streamOptions())
	return e
}

// newPacer builds the controller that steers the node's limiter: on CPU
// run-queue delay always, and on the latency of an I/O probe when the probe
// file can be made (a failure there only loses that signal).
func newPacer(cfg Config, lim *transfer.Limiter, log hclog.Logger) *pace.Controller {
	signals := []pace.Signal{pace.NewCPUSignal()}
	if cfg.PaceProbe != "" {
		if p, err := pace.OpenFileProbe(cfg.PaceProbe); err != nil {
			log.Warn("no I/O probe: pacing on CPU pressure only", "error", err)
		} else {
			signals = append(signals, pace.NewLatencySignal(p))
		}
	}
	c, err := pace.New(pace.Config{Ceiling: cfg.RateLimit, Floor: cfg.PaceFloor, Logger: log}, lim, signals...)
	if err != nil {
		log.Warn("pacing off", "error", err)
		return nil
	}
	return c
}

func snapID(targetVolume string) string { return "snap_" + targetVolume }

// forkThrottle is a local copy's throttle: the fork's own cap, then the
// node's limiter, which local copies share with streams. nil when neither
// is set.
func forkThrottle(fork, node *transfer.Limiter) func(ctx context.Context, n int) error {
	if fork == nil && node == nil {
		return nil
	}
	return func(ctx context.Context, n int) error { return transfer.WaitAll(ctx, n, fork, node) }
}

func (e *executor) streamOptions() transfer.Options {
	return transfer.Options{
		Codec:     e.n.cfg.StreamCodec,
		Limiter:   e.limiter,
		Logger:    e.logger.Named("transfer"),
		IOTimeout: e.n.cfg.streamPatience,
		GiveUp:    e.n.cfg.streamPatience,
	}
}

func (e *executor) serveTransfer(c net.Conn) { e.xfer.ServeConn(c) }

func (e *executor) stop() {
	e.mu.Lock()
	for _, cancel := range e.running {
		cancel()
	}
	e.mu.Unlock()
	_ = e.xfer.Close()
	e.wg.Wait()
}

func (e *executor) run() {
	interval := 2 * time.Second
	if e.n.cfg.Fast {
		interval = 250 * time.Millisecond
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	full := true
	for {
		watch := e.n.fsm.Watch()
		e.pass(full)
		select {
		case <-e.n.ctx.Done():
			return
		case <-watch:
			full = false
		case <-tick.C:
			full = true
		}
	}
}

// start runs fn once per key; a key already running is left alone.
func (e *executor) start(key string, fn func(ctx context.Context)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.running[key]; ok {
		return
	}
	if e.n.ctx.Err() != nil {
		return
	}
	ctx, cancel := context.WithCancel(e.n.ctx)
	e.running[key] = cancel
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer func() {
			e.mu.Lock()
			delete(e.running, key)
			e.mu.Unlock()
			cancel()
		}()
		fn(ctx)
	}()
}

// stopTask cancels the task key if it runs and reports whether it did:
// the caller waits for a later pass, after the task has returned.
func (e *executor) stopTask(key string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, ok := e.running[key]
	if ok {
		c()
	}
	return ok
}

func (e *executor) isRunning(key string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, ok := e.running[key]
	return ok
}

func isLocal(f fsm.Fork) bool { return f.SourceHost == f.TargetHost }

// pass looks at the catalog once and starts what is missing. Listing the
// backend for leftover snapshots is left to the timer's full passes: catalog
// changes (progress of every fork in the cluster) come far more often.
func (e *executor) pass(full bool) {
	me := e.n.cfg.Name
	if !e.restarted {
		// After a restart the catalog may lag the leader: catch up first so
		// nothing is judged an orphan by a stale view.
		ctx, cancel := context.WithTimeout(e.n.ctx, 2*time.Second)
		err := e.n.Barrier(ctx)
		cancel()
		if err != nil {
			return
		}
	}
	var vols []fsm.Volume
	var forks []fsm.Fork
	e.n.fsm.View(func(s *fsm.State) {
		for _, v := range s.Volumes() {
			if v.Host == me {
				vols = append(vols, v)
			}
		}
		for _, f := range s.Forks() {
			if f.SourceHost == me || f.TargetHost == me {
				forks = append(forks, f)
			}
		}
	})
	forkByTarget := map[string]fsm.Fork{}
	forkByID := map[string]fsm.Fork{}
	for _, f := range forks {
		forkByTarget[f.TargetVolume] = f
		forkByID[f.ID] = f
	}

	if !e.restarted {
		e.reconcileBackend(vols, forkByTarget, forkByID)
		e.restarted = true
	}

	for _, f := range forks {
		f := f
		key := "fork:" + f.ID
		if f.Finished() {
			e.mu.Lock()
			delete(e.done, f.ID) // the local view caught up
			e.mu.Unlock()
			e.stopTask(key) // the leader failed it (e.g. the peer died)
			continue        // its snapshot goes in releaseOrphanSnapshots
		}
		e.mu.Lock()
		wasDone := e.done[f.ID]
		e.mu.Unlock()
		if wasDone {
			continue
		}
		switch {
		case isLocal(f) && f.TargetHost == me:
			e.start(key, func(ctx context.Context) { e.localFork(ctx, f) })
		case !isLocal(f) && f.TargetHost == me:
			e.start(key, func(ctx context.Context) { e.pullFork(ctx, f) })
		}
		// The source of a stream is passive: openStream serves it on demand.
	}
	// Volumes after forks, so a fork the leader failed is cancelled first.
	for _, v := range vols {
		v := v
		switch v.State {
		case fsm.VolumeCreating:
			if v.ForkID == "" {
				e.start("create:"+v.ID, func(ctx context.Context) { e.createVolume(ctx, v) })
			}
		case fsm.VolumeDeleting, fsm.VolumeFailed:
			f, isTarget := forkByTarget[v.ID]
			if isTarget && !f.Finished() {
				continue // a failed fork target goes once its fork is finished
			}
			// Never delete under a task still making the volume: a cancelled
			// clone or create can finish after a delete found nothing, and
			// its volume would then be on disk with no record. Cancel it;
			// a later pass deletes what it left.
			busy := e.stopTask("create:" + v.ID)
			if isTarget && e.stopTask("fork:"+f.ID) {
				busy = true
			}
			if busy {
				continue
			}
			e.start("delete:"+v.ID, func(ctx context.Context) { e.deleteVolume(ctx, v) })
		}
	}
	if full {
		e.releaseOrphanSnapshots(forkByTarget)
		e.pruneCheckpoints(forkByID)
	}
}

// reconcileBackend runs once after start, against a catalog that has caught
// up with the leader: a known fork's leftover volume is removed, snapshots
// no in-flight stream needs are released, and local forks that were in
// flight start over from a clean target.
func (e *executor) reconcileBackend(vols []fsm.Volume, forkByTarget, forkByID map[string]fsm.Fork) {
	ctx, cancel := context.WithTimeout(e.n.ctx, 30*time.Second)
	defer cancel()
	b := e.n.cfg.Backend
	have, err := b.List(ctx)
	if err != nil {
		e.logger.Error("list backend volumes", "error", err)
		return
	}
	known := map[string]fsm.Volume{}
	for _, v := range vols {
		known[v.ID] = v
	}
	for _, hv := range have {
		if hv.Kind == cow.KindSnapshot {
			// A stream source's snapshot of an in-flight fork is kept so the
			// target can resume; any other one is redone or not needed.
			f, ok := forkByTarget[strings.TrimPrefix(hv.ID, "snap_")]
			if ok && !f.Finished() && !isLocal(f) {
				continue
			}
			e.logger.Info("releasing leftover snapshot after restart", "snapshot", hv.ID)
			if err := b.Release(ctx, hv.ID); err != nil && !errors.Is(err, cow.ErrNotFound) {
				e.logger.Warn("release snapshot", "snapshot", hv.ID, "error", err)
			}
			continue
		}
		cv, ok := known[hv.ID]
		if !ok {
			// Only a fork's leftover is removed: its fork is in the catalog,
			// so the catalog has seen this volume and dropped it. A volume
			// the catalog never heard of is left in place and reported: a
			// lost or rebuilt catalog must never delete data.
			if _, forkKnown := forkByID[hv.Owner]; forkKnown {
				e.logger.Warn("removing orphan fork volume", "volume", hv.ID, "name", hv.Name, "fork", hv.Owner)
				e.removeBackendVolume(ctx, hv.ID)
			} else {
				e.logger.Warn("volume not in the catalog: left in place; remove it by hand if it is not needed",
					"volume", hv.ID, "name", hv.Name, "path", hv.Path)
			}
			continue
		}
		if f, ok := forkByTarget[cv.ID]; ok && !f.Finished() && cv.State == fsm.VolumeCreating {
			if !isLocal(f) && e.loadCheckpoint(f.ID, cv.ID) != nil {
				// A stream target with a resume point: pullFork resumes it.
				e.logger.Info("keeping half-made stream target to resume it", "volume", cv.ID, "fork", f.ID)
				continue
			}
			// A half-made fork target: start it over.
			e.logger.Info("removing half-made fork target after restart", "volume", cv.ID, "fork", f.ID)
			e.removeBackendVolume(ctx, hv.ID)
			e.dropCheckpoint(f.ID)
		}
	}
	e.pruneCheckpoints(forkByID)
}

func (e *executor) removeBackendVolume(ctx context.Context, id string) {
	b := e.n.cfg.Backend
	err := b.Remove(ctx, id)
	if errors.Is(err, cow.ErrBusy) {
		if derr := b.Detach(ctx, id); derr == nil {
			err = b.Remove(ctx, id)
		}
	}
	if err != nil && !errors.Is(err, cow.ErrNotFound) {
		e.logger.Error("remove volume", "volume", id, "error", err)
	}
}

func (e *executor) releaseOrphanSnapshots(forkByTarget map[string]fsm.Fork) {
	ctx, cancel := context.WithTimeout(e.n.ctx, 10*time.Second)
	defer cancel()
	have, err := e.n.cfg.Backend.List(ctx)
	if err != nil {
		return
	}
	for _, hv := range have {
		if hv.Kind != cow.KindSnapshot || !strings.HasPrefix(hv.ID, "snap_") {
			continue
		}
		target := strings.TrimPrefix(hv.ID, "snap_")
		f, ok := forkByTarget[target]
		key := "fork:" + f.ID
		if ok && !f.Finished() && (!isLocal(f) || e.isRunning(key)) {
			continue // in use: a local fork at work, or a stream source
		}
		e.logger.Info("releasing leftover snapshot", "snapshot", hv.ID)
		if err := e.n.cfg.Backend.Release(ctx, hv.ID); err != nil && !errors.Is(err, cow.ErrNotFound) {
			e.logger.Warn("release snapshot", "snapshot", hv.ID, "error", err)
		}
		if ok {
			e.xfer.Forget(f.ID) // the block hashes its stream sessions kept
		}
	}
}

// apply retries a catalog write until it lands or the node stops: results
// of work done must not be lost to a leader election.
func (e *executor) apply(t fsm.CommandType, cmd any) error {
	for {
		ctx, cancel := context.WithTimeout(e.n.ctx, 10*time.Second)
		_, err := e.n.Apply(ctx, t, cmd)
		cancel()
		if err == nil || !errors.Is(err, ErrNoLeader) {
			return err
		}
		if e.n.ctx.Err() != nil {
			return ErrShutdown
		}
		e.logger.Warn("catalog write failed, retrying", "error", err)
		time.Sleep(200 * time.Millisecond)
	}
}

func spec(v fsm.Volume, owner string) cow.CreateSpec {
	return cow.CreateSpec{ID: v.ID, Name: v.Name, Size: v.Size, Owner: owner}
}

func (e *executor) createVolume(ctx context.Context, v fsm.Volume) {
	_, err := e.n.cfg.Backend.Create(ctx, spec(v, "forknode"))
	state := fsm.VolumeReady
	if err != nil {
		e.logger.Error("create volume", "volume", v.ID, "name", v.Name, "error", err)
		state = fsm.VolumeFailed
	}
	if ctx.Err() != nil {
		return
	}
	err = e.apply(fsm.CmdSetVolumeState, &fsm.SetVolumeStateCmd{ID: v.ID, State: state})
	switch {
	case errors.Is(err, fsm.ErrConflict) || errors.Is(err, fsm.ErrNotFound):
		// Deleted while it was being made: the delete task, which waits
		// for this one, removes what it made.
		e.logger.Info("volume deleted while being created", "volume", v.ID, "error", err)
	case err != nil:
		e.logger.Error("record volume state", "volume", v.ID, "error", err)
	}
}

func (e *executor) deleteVolume(ctx context.Context, v fsm.Volume) {
	e.removeBackendVolume(ctx, v.ID)
	if ctx.Err() != nil {
		return
	}
	if _, err := e.n.cfg.Backend.Get(ctx, v.ID); err == nil {
		return // still there (e.g. busy): try again on the next pass
	}
	if err := e.apply(fsm.CmdDeleteVolume, &fsm.DeleteVolumeCmd{ID: v.ID}); err != nil && !errors.Is(err, fsm.ErrNotFound) {
		e.logger.Error("purge volume", "volume", v.ID, "error", err)
	}
}

// progressReporter records a fork's progress in the catalog without ever
// blocking the copy: report only stores the latest figures, and a
// goroutine writes them through raft at most once per interval. (A
// synchronous Apply inside the copy's progress callback stalled every copy
// worker behind a raft round trip.)
type progressReporter struct {
	e    *executor
	fork string

	mu                sync.Mutex
	done, total, wire int64
	dirty             bool
	stop              chan struct{}
	stopped           chan struct{}
	once              sync.Once
}

func (e *executor) newProgress(forkID string) *progressReporter {
	p := &progressReporter{e: e, fork: forkID, stop: make(chan struct{}), stopped: make(chan struct{})}
	go p.loop()
	return p
}

func (p *progressReporter) report(done, total, wire int64) {
	p.mu.Lock()
	p.done, p.total, p.wire, p.dirty = done, total, wire, true
	p.mu.Unlock()
}

func (p *progressReporter) loop() {
	defer close(p.stopped)
	t := time.NewTicker(p.e.progress)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			p.flush()
			return
		case <-p.e.n.ctx.Done():
			return
		case <-t.C:
			p.flush()
		}
	}
}

func (p *progressReporter) flush() {
	p.mu.Lock()
	if !p.dirty {
		p.mu.Unlock()
		return
	}
	cmd := &fsm.ForkProgressCmd{ForkID: p.fork, BytesDone: p.done, BytesTotal: p.total, WireBytes: p.wire}
	p.dirty = false
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(p.e.n.ctx, 2*time.Second)
	defer cancel()
	// Best effort: a lost update is replaced by the next one.
	_, _ = p.e.n.Apply(ctx, fsm.CmdForkProgress, cmd)
}

// close writes the last figures and stops the goroutine.
func (p *progressReporter) close() {
	p.once.Do(func() { close(p.stop) })
	<-p.stopped
}

// finish records the fork's result; it reports whether the catalog took it.
func (e *executor) finish(f fsm.Fork, err error) bool {
	cmd := &fsm.FinishForkCmd{ForkID: f.ID, OK: err == nil}
	if err != nil {
		cmd.Error = err.Error()
		e.logger.Error("fork failed", "fork", f.ID, "path", f.Path, "error", err)
	} else {
		e.logger.Info("fork ready", "fork", f.ID, "path", f.Path, "target", f.TargetVolume)
	}
	if aerr := e.apply(fsm.CmdFinishFork, cmd); aerr != nil {
		e.logger.Error("record fork result", "fork", f.ID, "error", aerr)
		return false
	}
	e.mu.Lock()
	e.done[f.ID] = true
	e.mu.Unlock()
	return true
}

func (e *executor) targetVolume(f fsm.Fork) (fsm.Volume, error) {
	var v fsm.Volume
	var ok bool
	e.n.fsm.View(func(s *fsm.State) { v, ok = s.Volume(f.TargetVolume) })
	if !ok {
		return v, fmt.Errorf("target volume %s of fork %s is not in the catalog", f.TargetVolume, f.ID)
	}
	return v, nil
}

// localFork makes a same-host fork: an O(1) clone where the backend can and
// the path allows, else snapshot + block copy.
func (e *executor) localFork(ctx context.Context, f fsm.Fork) {
	tv, err := e.targetVolume(f)
	if err != nil {
		e.finish(f, err)
		return
	}
	b := e.n.cfg.Backend
	sp := spec(tv, f.ID)
	pr := e.newProgress(f.ID)
	defer pr.close()
	pr.report(0, tv.Size, 0)
	if f.Path == fsm.PathClone || (f.Path == fsm.PathReplica && b.Features().Clone) {
		_, err = b.Clone(ctx, f.SourceVolume, sp)
		if err == nil {
			pr.report(tv.Size, tv.Size, 0)
		}
	} else {
		opts := cow.CopyOptions{
			Logger: e.logger,
			// The copy counts the source's data bytes; a stream counts the
			// volume, holes included. Report in the volume's terms too, so
			// the total a client saw at the start (the volume's size)
			// never changes under it and both paths read alike.
			Progress: func(done, total int64) { pr.report(scaleProgress(done, total, tv.Size), tv.Size, 0) },
			Throttle: forkThrottle(transfer.NewLimiter(f.RateLimit), e.limiter),
		}
		_, err = cow.ForkLocal(ctx, b, f.SourceVolume, sp, opts)
	}
	if ctx.Err() != nil {
		// Cancelled: the node is stopping (restart reconciliation redoes
		// the fork) or the leader failed the fork (its volume is removed).
		return
	}
	pr.close() // the last figures land before the result
	if err != nil {
		if e.forkReady(f.ID) {
			return // never undo a fork that is already ready
		}
		e.removeBackendVolume(e.n.ctx, tv.ID)
	}
	e.finish(f, err)
}

// forkReady re-reads the catalog (after catching up with the leader) to
// make sure a failure path never removes the volume of a finished fork.
func (e *executor) forkReady(id string) bool {
	ctx, cancel := context.WithTimeout(e.n.ctx, 2*time.Second)
	_ = e.n.Barrier(ctx)
	cancel()
	var f fsm.Fork
	e.n.fsm.View(func(s *fsm.State) { f, _ = s.Fork(id) })
	return f.State == fsm.ForkReady
}

// pullFork is the target side of a stream: create the volume, pull the
// source's snapshot into it, verify, then mark it ready.
func (e *executor) pullFork(ctx context.Context, f fsm.Fork) {
	tv, err := e.targetVolume(f)
	if err != nil {
		e.finish(f, err)
		return
	}
	b := e.n.cfg.Backend
	fail := func(err error) {
		if ctx.Err() != nil || e.forkReady(f.ID) {
			return // stopping (a restart resumes), or done elsewhere
		}
		e.removeBackendVolume(e.n.ctx, tv.ID)
		e.dropCheckpoint(f.ID)
		e.finish(f, err)
	}
	existed, err := e.volumeExists(ctx, tv.ID)
	if err != nil {
		fail(fmt.Errorf("look up target volume on %s: %w", e.n.cfg.Name, err))
		return
	}
	if _, err := b.Create(ctx, spec(tv, f.ID)); err != nil && !errors.Is(err, cow.ErrExists) {
		fail(fmt.Errorf("create target volume on %s: %w", e.n.cfg.Name, err))
		return
	}
	var resume *transfer.Checkpoint
	if existed {
		// Kept by the restart reconciliation, or left by this node's
		// previous attempt: resume where its data was durable.
		resume = e.loadCheckpoint(f.ID, tv.ID)
	} else {
		e.dropCheckpoint(f.ID) // any file is from an older volume
	}
	dev, err := b.Open(ctx, tv.ID, true)
	if err != nil {
		fail(fmt.Errorf("open target volume: %w", err))
		return
	}
	pr := e.newProgress(f.ID)
	defer pr.close()
	opts := e.streamOptions()
	opts.Progress = func(p transfer.Progress) { pr.report(p.Done, p.Total, p.Wire) }
	// The fork's own cap is applied here, by the puller; TCP holds the
	// source's reads to it (the source's server has one set of options
	// for all its sessions).
	opts.RateLimit = f.RateLimit
	opts.Resume = resume
	saveFailed := false
	opts.OnCheckpoint = func(c transfer.Checkpoint) {
		err := e.saveCheckpoint(f.ID, tv.ID, c)
		if err != nil && !saveFailed {
			// Costs only the resume after a restart; say it once.
			e.logger.Warn("cannot save stream checkpoint: a restart would start this stream over", "fork", f.ID, "error", err)
		}
		saveFailed = err != nil
	}
	dial := func(ctx context.Context) (net.Conn, error) {
		var addr string
		e.n.fsm.View(func(s *fsm.State) {
			if h, ok := s.Host(f.SourceHost); ok {
				addr = h.XferAddr
			}
		})
		if addr == "" {
			return nil, fmt.Errorf("source host %s has no transfer address", f.SourceHost)
		}
		return e.n.mux.dial(ctx, addr, protoTransfer)
	}
	stats, err := transfer.Pull(ctx, dial, f.ID, e.n.cfg.Name, dev, opts)
	cerr := dev.Close()
	if err == nil {
		err = cerr
	}
	if err != nil {
		fail(fmt.Errorf("stream from %s: %w", f.SourceHost, err))
		return
	}
	pr.report(stats.Bytes, stats.Bytes, stats.Wire)
	pr.close()
	e.logger.Info("stream complete", "fork", f.ID, "bytes", stats.Bytes, "wire", stats.Wire,
		"resent", stats.Resent, "reconnects", stats.Reconnects, "resumed", stats.Resumed, "duration", stats.Duration)
	if e.finish(f, nil) {
		// Kept otherwise: a restart then verifies the whole volume
		// against the source again and records the result.
		e.dropCheckpoint(f.ID)
	}
}

// volumeExists asks the backend whether volume id is there, a few times
// over a transient error: the answer decides whether a checkpoint may be
// resumed, and resuming onto a volume just created empty would only fail
// at the digest.
func (e *executor) volumeExists(ctx context.Context, id string) (bool, error) {
	var err error
	for try := 0; try < 3; try++ {
		if try > 0 {
			select {
			case <-time.After(time.Second):
			case <-ctx.Done():
				return false, ctx.Err()
			}
		}
		if _, err = e.n.cfg.Backend.Get(ctx, id); err == nil || errors.Is(err, cow.ErrNotFound) {
			return err == nil, nil
		}
		e.logger.Warn("looking up a volume failed", "volume", id, "try", try+1, "error", err)
	}
	return false, err
}

// snapJob is a stream snapshot being taken.
type snapJob struct {
	done chan struct{}
	err  error // set before done is closed
}

// streamSnapshot makes sure the fork's source snapshot exists. It is taken
// in the background, once: where the backend cannot clone, a snapshot is a
// full copy and can outlast the puller's patience for one connection. Until
// it is there the puller is told to come back (transfer.ErrNotReady), which
// it does without counting the wait as a stall.
func (e *executor) streamSnapshot(ctx context.Context, f fsm.Fork, sid string) error {
	b := e.n.cfg.Backend
	e.snapMu.Lock()
	j := e.snaps[sid]
	if j == nil {
		if _, err := b.Get(ctx, sid); err == nil {
			e.snapMu.Unlock()
			return nil // taken earlier (a resume, or before a restart)
		} else if !errors.Is(err, cow.ErrNotFound) {
			e.snapMu.Unlock()
			return err
		}
		j = &snapJob{done: make(chan struct{})}
		e.snaps[sid] = j
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			start := time.Now()
			_, err := b.Snapshot(e.n.ctx, f.SourceVolume, sid)
			e.snapMu.Lock()
			j.err = err
			if err == nil {
				delete(e.snaps, sid) // Get finds it from now on
			} // a failure stays until a pull reports it
			e.snapMu.Unlock()
			close(j.done)
			if err == nil {
				e.logger.Info("snapshot taken for stream", "fork", f.ID, "snapshot", sid, "took", time.Since(start))
			}
		}()
	}
	e.snapMu.Unlock()
	t := time.NewTimer(e.snapWait)
	defer t.Stop()
	select {
	case <-j.done:
	case <-t.C:
		return fmt.Errorf("%w: snapshot %s of %s is being taken", transfer.ErrNotReady, sid, f.SourceVolume)
	case <-ctx.Done():
		return ctx.Err()
	}
	if j.err != nil {
		e.snapMu.Lock()
		if e.snaps[sid] == j {
			delete(e.snaps, sid) // reported once: the fork fails with it
		}
		e.snapMu.Unlock()
		return fmt.Errorf("snapshot %s: %w", f.SourceVolume, j.err)
	}
	return nil
}

// openStream is the source side of a stream, called by the transfer server
// for each (re)connection: only the fork's target host may pull, only while
// the fork is in flight, and only from a snapshot, never the live volume.
func (e *executor) openStream(ctx context.Context, forkID, peer string) (transfer.Source, []transfer.Extent, func(), error) {
	var f fsm.Fork
	var ok bool
	e.n.fsm.View(func(s *fsm.State) { f, ok = s.Fork(forkID) })
	if !ok {
		// Our catalog may lag the target's: catch up once before refusing.
		bctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_ = e.n.Barrier(bctx)
		cancel()
		e.n.fsm.View(func(s *fsm.State) { f, ok = s.Fork(forkID) })
	}
	switch {
	case !ok:
		// Still unknown after a catch-up that may have failed (an
		// election): retryable, bounded by the puller's give-up time.
		return nil, nil, nil, fmt.Errorf("%w: unknown fork %q (this host's catalog may lag)", transfer.ErrRetry, forkID)
	case f.Path != fsm.PathStream || f.SourceHost != e.n.cfg.Name:
		return nil, nil, nil, fmt.Errorf("%w: fork %s is not streamed from %s", transfer.ErrUnauthorized, forkID, e.n.cfg.Name)
	case peer != f.TargetHost:
		return nil, nil, nil, fmt.Errorf("%w: fork %s may only be pulled by %s, not %q", transfer.ErrUnauthorized, forkID, f.TargetHost, peer)
	case f.Finished():
		return nil, nil, nil, fmt.Errorf("%w: fork %s is %s", transfer.ErrUnauthorized, forkID, f.State)
	}
	b := e.n.cfg.Backend
	sid := snapID(f.TargetVolume)
	if err := e.streamSnapshot(ctx, f, sid); err != nil {
		return nil, nil, nil, err
	}
	dev, err := b.Open(ctx, sid, false)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("open snapshot: %w", err)
	}
	ext, err := b.Extents(ctx, sid)
	if err != nil {
		ext = nil // unknown: the sender scans and skips zero chunks
	}
	out := make([]transfer.Extent, len(ext))
	for i, x := range ext {
		out[i] = transfer.Extent{Offset: x.Offset, Length: x.Length}
	}
	if ext == nil {
		out = nil
	}
	return dev, out, func() { dev.Close() }, nil
}

// scaleProgress maps done of total data bytes onto a size-byte volume:
// rising with done, size exactly when done reaches total.
func scaleProgress(done, total, size int64) int64 {
	if total <= 0 || done >= total {
		return size
	}
	return int64(float64(done) / float64(total) * float64(size))
}
