package cow

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Snapshot makes a crash-consistent point-in-time copy of src. When src is
// attached and mounted, the filesystem is frozen for the duration of the
// reflink (or bounded copy) and thawed on every path. Retrying with the
// same snapID and src returns the existing snapshot.
func (b *FileBackend) Snapshot(ctx context.Context, srcID, snapID string) (Volume, error) {
	if err := ValidateID(snapID); err != nil {
		return Volume{}, err
	}
	b.mu.Lock()
	src, ok := b.vols[srcID]
	if !ok {
		b.mu.Unlock()
		return Volume{}, fmt.Errorf("%w: snapshot source %q", ErrNotFound, srcID)
	}
	if v, ok := b.vols[snapID]; ok {
		b.mu.Unlock()
		if v.Kind == KindSnapshot && v.Origin == srcID {
			return *v, nil
		}
		return Volume{}, fmt.Errorf("%w: %s exists (kind %s, origin %q)", ErrExists, snapID, v.Kind, v.Origin)
	}
	srcCopy := *src
	b.sources[srcID]++
	defer b.releaseSource(srcID)
	v := Volume{ID: snapID, Name: snapID, Size: src.Size, Kind: KindSnapshot, Origin: srcID,
		Path: b.imgPath(snapID), Created: time.Now().UTC()}
	err := b.reserveLocked(v)
	b.mu.Unlock()
	if err != nil {
		return Volume{}, err
	}
	if err := b.materialize(ctx, srcCopy, v, true); err != nil {
		return Volume{}, fmt.Errorf("snapshot %s of %s: %w", snapID, srcID, err)
	}
	v, err = b.commit(v)
	if err != nil {
		return Volume{}, err
	}
	b.log.Info("snapshot taken", "id", snapID, "origin", srcID)
	return v, nil
}

// Clone makes an O(1) reflink copy of src as a new volume, or
// ErrNotSupported when the filesystem has no reflink. spec.Size 0 means the
// source's size; a larger size grows the clone, a smaller one is refused.
func (b *FileBackend) Clone(ctx context.Context, srcID string, spec CreateSpec) (Volume, error) {
	if err := ValidateID(spec.ID); err != nil {
		return Volume{}, err
	}
	if err := ValidateName(spec.Name); err != nil {
		return Volume{}, err
	}
	if spec.Size != 0 {
		if err := ValidateSize(spec.Size); err != nil {
			return Volume{}, err
		}
	}
	b.mu.Lock()
	src, ok := b.vols[srcID]
	if !ok {
		b.mu.Unlock()
		return Volume{}, fmt.Errorf("%w: clone source %q", ErrNotFound, srcID)
	}
	if !b.features.Clone {
		b.mu.Unlock()
		return Volume{}, fmt.Errorf("%w: %s filesystem at %s has no reflink", ErrNotSupported, b.features.Filesystem, b.dir)
	}
	size := spec.Size
	if size == 0 {
		size = src.Size
	}
	if size < src.Size {
		b.mu.Unlock()
		return Volume{}, fmt.Errorf("%w: clone size %d is smaller than source %s (%d)", ErrInvalid, size, srcID, src.Size)
	}
	if v, ok := b.vols[spec.ID]; ok {
		b.mu.Unlock()
		if sameVolume(v, KindVolume, spec.Name, size, spec.Owner, srcID) {
			return *v, nil
		}
		return Volume{}, fmt.Errorf("%w: id %s exists with another spec (name %q size %d origin %q)",
			ErrExists, spec.ID, v.Name, v.Size, v.Origin)
	}
	srcCopy := *src
	b.sources[srcID]++
	defer b.releaseSource(srcID)
	v := Volume{ID: spec.ID, Name: spec.Name, Size: size, Kind: KindVolume, Owner: spec.Owner,
		Origin: srcID, Path: b.imgPath(spec.ID), Created: time.Now().UTC()}
	err := b.reserveLocked(v)
	b.mu.Unlock()
	if err != nil {
		return Volume{}, err
	}
	start := time.Now()
	if err := b.materialize(ctx, srcCopy, v, false); err != nil {
		return Volume{}, fmt.Errorf("clone %s of %s: %w", spec.ID, srcID, err)
	}
	v, err = b.commit(v)
	if err != nil {
		return Volume{}, err
	}
	b.log.Info("cloned", "id", v.ID, "origin", srcID, "took", time.Since(start))
	return v, nil
}

func (b *FileBackend) releaseSource(id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sources[id]--; b.sources[id] <= 0 {
		delete(b.sources, id)
	}
}

// frozenHook, when set by a test, runs while the source is frozen, to prove
// that errors and panics there still thaw it.
var frozenHook func() error

// materialize writes dst.Path as a point-in-time copy of src: reflink when
// possible, else (if allowCopy) a sparse copy. It quiesces src first:
// freeze when mounted, flush the loop device when only attached. On error
// the reservation is dropped and no file is left behind.
func (b *FileBackend) materialize(ctx context.Context, src, dst Volume, allowCopy bool) (err error) {
	tmp := filepath.Join(b.dir, "."+dst.ID+".img.tmp")
	done := false
	defer func() {
		// Also on panic (done still false): no debris, no reservation.
		if err != nil || !done {
			b.abort(dst.ID, tmp)
		}
	}()
	if !b.features.Clone && !allowCopy {
		return fmt.Errorf("%w: no reflink on %s", ErrNotSupported, b.dir)
	}
	if !b.features.Clone {
		// A copy needs real space for the source's data.
		if err := b.checkCopySpace(src.Path); err != nil {
			return err
		}
	}

	frozen := false
	if src.Device != "" && loopBacking(src.Device) == src.Path {
		mps, err := mountpointsOf(src.Device)
		if err != nil {
			return err
		}
		if len(mps) > 0 {
			if err := b.markFreeze(dst.ID, mps[0]); err != nil {
				return err
			}
			thaw, err := freezeFS(mps[0])
			if err != nil {
				_ = os.Remove(b.freezeMarkPath(dst.ID))
				return err
			}
			frozen = true
			freezeStart := time.Now()
			// Deferred so that errors and panics thaw too.
			defer func() {
				if terr := thaw(); terr != nil {
					// The mark stays: the next start tries the thaw again.
					b.log.Error("thaw failed", "mountpoint", mps[0], "error", terr)
					if err == nil {
						err = terr
					}
				} else {
					_ = os.Remove(b.freezeMarkPath(dst.ID))
				}
				b.log.Debug("thawed", "mountpoint", mps[0], "frozen_for", time.Since(freezeStart))
			}()
		} else {
			if !b.features.Clone {
				// Not mounted here, so nothing to freeze for a copy that
				// takes a while. Hold the device exclusively meanwhile: that
				// fails if it is mounted anywhere (another mount namespace,
				// a container) and keeps a mount from starting mid-copy,
				// either of which would make the copy torn.
				excl, err := os.OpenFile(src.Device, os.O_RDONLY|unix.O_EXCL, 0)
				if errors.Is(err, unix.EBUSY) {
					return fmt.Errorf("%w: %s (%s) is in use outside this agent's mounts (another mount namespace?) and cannot be frozen for a copy; unmount it there, or use a reflink filesystem (xfs -m reflink=1, btrfs)", ErrBusy, src.ID, src.Device)
				}
				if err != nil {
					return fmt.Errorf("open %s: %w", src.Device, err)
				}
				defer excl.Close()
				// O_EXCL keeps mounts out, not writers: one writing the raw
				// device during the copy would tear it.
				writers, err := deviceWriters(src.Device)
				if err != nil {
					return err
				}
				if len(writers) > 0 {
					return fmt.Errorf("%w: %s is attached as %s and open for writing by %s, with no mounted filesystem to freeze: a copy would be torn; stop the writer, or mount the filesystem here (forknode freezes it), or use a reflink filesystem (xfs -m reflink=1, btrfs)",
						ErrBusy, src.ID, src.Device, strings.Join(writers, ", "))
				}
			}
			if err := syncBlockDev(src.Device); err != nil {
				return err
			}
		}
	}

	if frozen && frozenHook != nil {
		if err := frozenHook(); err != nil {
			return err
		}
	}
	if b.features.Clone {
		if err := reflinkFile(src.Path, tmp); err != nil {
			return err
		}
	} else {
		cctx := ctx
		if frozen {
			// A frozen filesystem stalls its writers, so the copy is
			// bounded: past the limit it fails and the defer thaws.
			limit := b.FreezeTimeout
			if limit <= 0 {
				limit = DefaultFreezeTimeout
			}
			var cancel context.CancelFunc
			cctx, cancel = context.WithTimeout(ctx, limit)
			defer cancel()
		}
		if err := b.copyFile(cctx, src.Path, tmp); err != nil {
			if frozen && errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("%w: live copy of %s exceeded the freeze limit; use a reflink filesystem (xfs -m reflink=1, btrfs)", ErrBusy, src.ID)
			}
			return err
		}
	}
	if dst.Size > src.Size {
		if err := os.Truncate(tmp, dst.Size); err != nil {
			return fmt.Errorf("grow: %w", err)
		}
	}
	if err := os.Rename(tmp, dst.Path); err != nil {
		return err
	}
	done = true
	return nil
}

// checkCopySpace refuses a copy that cannot fit in the free space.
func (b *FileBackend) checkCopySpace(path string) error {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fmt.Errorf("source image %s: %w", path, err)
	}
	avail, err := FreeBytes(b.dir)
	if err != nil {
		return err
	}
	need := st.Blocks * 512
	if need > avail {
		return fmt.Errorf("%w: copy needs %d bytes, %d available in %s", ErrNoSpace, need, avail, b.dir)
	}
	return nil
}

// syncBlockDev flushes the page cache of a block device into its backing
// file, so a copy of the image sees what was written through the device.
func syncBlockDev(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dev, err)
	}
	return nil
}

// reflinkFile makes dst share src's extents (FICLONE) and fsyncs it.
func reflinkFile(src, dst string) error {
	sf, err := os.Open(src)
	if err != nil {
		return err
	}
	defer sf.Close()
	df, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	err = unix.IoctlFileClone(int(df.Fd()), int(sf.Fd()))
	if err != nil {
		err = fmt.Errorf("FICLONE: %w", err)
		if errors.Is(err, unix.ENOSPC) {
			err = fmt.Errorf("%w: %v", ErrNoSpace, err)
		}
	}
	if err == nil {
		err = df.Sync()
	}
	if cerr := df.Close(); err == nil {
		err = cerr
	}
	return err
}

// copyFile copies src into a new sparse file dst with the copy engine.
func (b *FileBackend) copyFile(ctx context.Context, src, dst string) error {
	sd, err := OpenFileDevice(src, false)
	if err != nil {
		return err
	}
	defer sd.Close()
	ext, err := FileExtents(src)
	if err != nil {
		return err
	}
	if err := makeSparse(dst, sd.Size()); err != nil {
		return err
	}
	dd, err := OpenFileDevice(dst, true)
	if err != nil {
		return err
	}
	_, err = Copy(ctx, sd, ext, dd, CopyOptions{Logger: b.log})
	if cerr := dd.Close(); err == nil {
		err = cerr
	}
	return err
}
