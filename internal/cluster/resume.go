package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/forknode/forknode/internal/cow"
	"github.com/forknode/forknode/internal/fsm"
	"github.com/forknode/forknode/internal/transfer"
	"github.com/google/renameio/v2"
)

// A stream target keeps its resume point in DATA_DIR/streams/<fork>.json,
// rewritten after each fsync of the target (about once a second), so that a
// target restarted mid-stream (a crash, an upgrade) continues from what was
// durable instead of from zero. Only ever the offset of data already
// fsynced is written, after that fsync: a lost or older file means an
// earlier resume point, never a wrong one.

const checkpointDir = "streams"

// checkpointKeep: a checkpoint of a fork no longer in flight is removed
// once it is this old, which spares one a fork started after the pass
// looked at the catalog.
const checkpointKeep = time.Minute

type resumePoint struct {
	Fork   string `json:"fork"`
	Volume string `json:"volume"`
	transfer.Checkpoint
}

// checkpointPath names fork id's file; ids come from the catalog, but a
// path is only built from a plain one.
func (e *executor) checkpointPath(forkID string) (string, error) {
	if forkID == "" || strings.Trim(forkID, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") != "" {
		return "", fmt.Errorf("fork id %q is not a plain name", forkID)
	}
	return filepath.Join(e.n.cfg.DataDir, checkpointDir, forkID+".json"), nil
}

func (e *executor) saveCheckpoint(forkID, volumeID string, c transfer.Checkpoint) error {
	path, err := e.checkpointPath(forkID)
	if err != nil {
		return err
	}
	raw, err := json.Marshal(resumePoint{Fork: forkID, Volume: volumeID, Checkpoint: c})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("save stream checkpoint: %w", err)
	}
	// renameio: temp file, fsync, rename, so a crash leaves the old file
	// or the new one, never a torn one. The temp file goes beside it (not
	// in /tmp), where pruneCheckpoints finds what a crash leaves. The
	// directory is not synced: a rename lost to a power cut only means an
	// older resume point.
	if err := renameio.WriteFile(path, raw, 0o600, renameio.WithTempDir(filepath.Dir(path))); err != nil {
		return fmt.Errorf("save stream checkpoint: %w", err)
	}
	return nil
}

// loadCheckpoint returns fork id's resume point for volume volumeID, or
// nil when there is none or it belongs to something else.
func (e *executor) loadCheckpoint(forkID, volumeID string) *transfer.Checkpoint {
	path, err := e.checkpointPath(forkID)
	if err != nil {
		return nil
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			e.logger.Warn("read stream checkpoint", "fork", forkID, "error", err)
		}
		return nil
	}
	var rp resumePoint
	if err := json.Unmarshal(raw, &rp); err != nil || rp.Fork != forkID || rp.Volume != volumeID {
		e.logger.Warn("ignoring a stream checkpoint that does not match its fork", "fork", forkID,
			"volume", volumeID, "file_fork", rp.Fork, "file_volume", rp.Volume, "error", err)
		return nil
	}
	return &rp.Checkpoint
}

func (e *executor) dropCheckpoint(forkID string) {
	path, err := e.checkpointPath(forkID)
	if err != nil {
		return
	}
	err = os.Remove(path)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err == nil {
		// Synced, so a power cut cannot bring back a checkpoint of a
		// volume that is then made again empty.
		err = cow.SyncDir(filepath.Dir(path))
	}
	if err != nil {
		e.logger.Warn("remove stream checkpoint", "fork", forkID, "error", err)
	}
}

// pruneCheckpoints removes the checkpoints of forks that are not streams in
// flight to this host (finished, failed while this host was down, pruned),
// once they are checkpointKeep old.
func (e *executor) pruneCheckpoints(forkByID map[string]fsm.Fork) {
	dir := filepath.Join(e.n.cfg.DataDir, checkpointDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			e.logger.Warn("list stream checkpoints", "error", err)
		}
		return
	}
	for _, de := range ents {
		name := de.Name()
		id, isCheckpoint := strings.CutSuffix(name, ".json")
		if f, known := forkByID[id]; isCheckpoint && known && !f.Finished() && !isLocal(f) && f.TargetHost == e.n.cfg.Name {
			continue
		}
		info, err := de.Info()
		if err != nil || time.Since(info.ModTime()) < checkpointKeep {
			continue
		}
		// Stale checkpoints, and temp files a crash left mid-save.
		e.logger.Debug("removing stale stream checkpoint", "file", name)
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			e.logger.Warn("remove stream checkpoint", "file", name, "error", err)
		}
	}
}
