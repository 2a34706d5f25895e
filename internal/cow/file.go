package cow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// DefaultFreezeTimeout bounds how long a mounted filesystem may stay frozen
// while a snapshot is copied on a filesystem without reflink.
const DefaultFreezeTimeout = 30 * time.Second

// FileBackend keeps volumes as sparse image files in one directory, each
// with a JSON metadata file beside it. The metadata file is the commit
// point: an image without metadata is debris from a crash and is removed
// when the backend is opened.
type FileBackend struct {
	dir      string
	budget   int64
	log      hclog.Logger
	features Features

	// FreezeTimeout bounds a frozen copy (live snapshot without reflink).
	// Set before use; DefaultFreezeTimeout when zero.
	FreezeTimeout time.Duration

	mu      sync.Mutex
	vols    map[string]*Volume
	pending map[string]Volume // ids being made: reserve name, id and budget
	sources map[string]int    // ids being read by a snapshot or clone

	claimMu sync.Mutex
	claim   *os.File // the marker, flocked, once a node claimed the directory
	owner   string
}

var _ Backend = (*FileBackend)(nil)

// NewFileBackend opens (creating if needed) the backend rooted at dir.
// budget is the most bytes of provisioned volume size it may hold; 0 means
// whatever the filesystem has free. It detects reflink support, loads the
// metadata, re-discovers loop devices that survived a restart and removes
// debris of interrupted operations.
func NewFileBackend(dir string, budget int64, logger hclog.Logger) (*FileBackend, error) {
	return OpenFileBackend(dir, budget, "", logger)
}

// OpenFileBackend is NewFileBackend for a node: the directory is claimed
// for node (see Claim) before anything in it is removed as debris, so a
// second agent pointed at a directory in use is refused before it touches
// the first one's files. An empty node claims nothing.
func OpenFileBackend(dir string, budget int64, node string, logger hclog.Logger) (*FileBackend, error) {
	if budget < 0 {
		return nil, fmt.Errorf("%w: budget %d is negative", ErrInvalid, budget)
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create backend dir: %w", err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	// The loop driver reports the resolved path of the backing file; resolve
	// symlinks so re-discovery compares like with like.
	if abs, err = filepath.EvalSymlinks(abs); err != nil {
		return nil, err
	}
	b := &FileBackend{
		dir:     abs,
		budget:  budget,
		log:     logger.Named("cow-file"),
		vols:    map[string]*Volume{},
		pending: map[string]Volume{},
		sources: map[string]int{},
	}
	if err := claimDir(abs); err != nil {
		return nil, err
	}
	if node != "" {
		if err := b.Claim(node); err != nil {
			return nil, err
		}
	}
	// First of all: a database must not stay frozen because an earlier
	// agent died mid-snapshot.
	if err := b.thawMarked(); err != nil {
		return nil, err
	}
	b.features = Features{Backend: "file", Filesystem: fsName(abs)}
	b.features.Clone, err = probeReflink(abs)
	if !b.features.Clone {
		b.features.SnapshotPermille = 1000 // a snapshot is a full copy
	}
	if err != nil {
		return nil, err
	}
	if err := b.load(); err != nil {
		return nil, err
	}
	// budget 0 means "the directory's free space", measured on every refresh.
	shown := any(budget)
	if budget == 0 {
		shown = "free space"
	}
	b.log.Info("file backend open", "dir", abs, "budget", shown, "fs", b.features.Filesystem,
		"reflink", b.features.Clone, "volumes", len(b.vols))
	return b, nil
}

// Dir is the directory holding the images.
func (b *FileBackend) Dir() string { return b.dir }

func (b *FileBackend) Features() Features { return b.features }

func (b *FileBackend) imgPath(id string) string  { return filepath.Join(b.dir, id+".img") }
func (b *FileBackend) metaPath(id string) string { return filepath.Join(b.dir, id+".json") }

// FreeBytes is the space an unprivileged writer has left on the
// filesystem under dir.
func FreeBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// fsName names the filesystem under dir from statfs's magic number.
func fsName(dir string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return "unknown"
	}
	switch uint32(st.Type) {
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlay"
	}
	return fmt.Sprintf("0x%x", st.Type)
}

// probeReflink tries FICLONE between two small files in dir: the only
// reliable test, since reflink depends on mkfs options, not just the type.
func probeReflink(dir string) (bool, error) {
	src := filepath.Join(dir, ".probe-src.tmp")
	dst := filepath.Join(dir, ".probe-dst.tmp")
	defer os.Remove(src)
	defer os.Remove(dst)
	sf, err := os.OpenFile(src, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return false, fmt.Errorf("reflink probe: %w", err)
	}
	defer sf.Close()
	if _, err := sf.Write(make([]byte, BlockSize)); err != nil {
		return false, fmt.Errorf("reflink probe: %w", err)
	}
	df, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return false, fmt.Errorf("reflink probe: %w", err)
	}
	defer df.Close()
	return unix.IoctlFileClone(int(df.Fd()), int(sf.Fd())) == nil, nil
}

// markerName marks a directory as a forknode volume directory. Start-up
// removes the debris of interrupted operations, so it must never mistake
// someone else's files for it: a directory without the marker is adopted
// only when it is empty or holds nothing but names forknode makes, and
// even then only those names are ever removed. Pointed at a directory of
// VM disk images, the backend refuses to start instead.
const markerName = ".forknode-volumes"

// ProbeFileName is the agent's default pacing probe file, which lives in
// the volume directory so that it times the volumes' disk.
const ProbeFileName = ".forknode-ioprobe"

// knownName: a name in the volume directory that is not a volume's but is
// expected there, and never removed.
func knownName(name string) bool {
	return name == markerName || name == ProbeFileName || name == "lost+found" || isFreezeMark(name)
}

// ownName reports whether name is one the file backend makes: an image or
// metadata file of a volume or snapshot id, their temporary files, or the
// reflink probe's.
func ownName(name string) bool {
	switch name {
	case ".probe-src.tmp", ".probe-dst.tmp":
		return true
	}
	if tmp, ok := strings.CutPrefix(name, "."); ok {
		if name, ok = strings.CutSuffix(tmp, ".tmp"); !ok {
			return false
		}
	}
	id, ok := strings.CutSuffix(name, ".img")
	if !ok {
		if id, ok = strings.CutSuffix(name, ".json"); !ok {
			return false
		}
	}
	return (strings.HasPrefix(id, "vol_") || strings.HasPrefix(id, "snap_")) && ValidateID(id) == nil
}

// claimDir makes sure dir is forknode's, marking it on first use.
func claimDir(dir string) error {
	marker := filepath.Join(dir, markerName)
	if _, err := os.Stat(marker); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("volume directory marker: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read backend dir: %w", err)
	}
	var foreign []string
	names := map[string]bool{}
	for _, e := range entries {
		names[e.Name()] = true
	}
	for _, e := range entries {
		n := e.Name()
		id, img := strings.CutSuffix(n, ".img")
		switch {
		case !ownName(n) && !knownName(n):
			foreign = append(foreign, n)
		case img && !names[id+".json"]:
			// An image without metadata would be removed as the debris of
			// an interrupted create, but in an unmarked directory nothing
			// says forknode made it: a user's vol_backup.img looks the same.
			foreign = append(foreign, n+" (an image without metadata)")
		}
	}
	if len(foreign) > 0 {
		more := ""
		if len(foreign) > 3 {
			more, foreign = fmt.Sprintf(" and %d more", len(foreign)-3), foreign[:3]
		}
		return fmt.Errorf("%w: volume directory %s holds files forknode did not make (%s%s): give forknode an empty or new directory of its own",
			ErrInvalid, dir, strings.Join(foreign, ", "), more)
	}
	f, err := os.OpenFile(marker, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("volume directory marker: %w", err)
	}
	_, err = f.WriteString("forknode volume directory: image files here are managed by forknode\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = SyncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("volume directory marker: %w", err)
	}
	return nil
}

// load reads every metadata file, drops debris and reconciles loop devices.
func (b *FileBackend) load() error {
	entries, err := os.ReadDir(b.dir)
	if err != nil {
		return fmt.Errorf("read backend dir: %w", err)
	}
	haveMeta := map[string]bool{}
	removed := map[string]bool{}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") && strings.HasSuffix(name, ".tmp") && ownName(name) {
			b.log.Warn("removing debris of an interrupted operation", "file", name)
			_ = os.Remove(filepath.Join(b.dir, name))
			removed[name] = true
			continue
		}
		if !strings.HasSuffix(name, ".json") {
			continue
		}
		// One volume's damaged files must not take the host's other
		// volumes down with it: that volume is left alone (its image is
		// never removed as debris) and not served, and the log says so.
		id := strings.TrimSuffix(name, ".json")
		v, err := b.readMeta(name)
		if err != nil {
			b.log.Error("volume left in place and not served: fix or remove its files by hand, then restart",
				"volume", id, "error", err)
			haveMeta[id] = true
			continue
		}
		haveMeta[v.ID] = true
		b.vols[v.ID] = v
	}
	for _, e := range entries {
		name := e.Name()
		id, ok := strings.CutSuffix(name, ".img")
		switch {
		case ok && haveMeta[id], removed[name]:
		case ok && ownName(name):
			b.log.Warn("removing image without metadata (interrupted create)", "file", name)
			_ = os.Remove(filepath.Join(b.dir, name))
		case !knownName(name) && !strings.HasSuffix(name, ".json"):
			b.log.Warn("leaving a file forknode did not make", "file", name)
		}
	}
	for _, v := range b.vols {
		b.rediscover(v)
	}
	return nil
}

// readMeta reads the metadata file name and checks its image is there.
func (b *FileBackend) readMeta(name string) (*Volume, error) {
	raw, err := os.ReadFile(filepath.Join(b.dir, name))
	if err != nil {
		return nil, fmt.Errorf("read metadata %s: %w", name, err)
	}
	var v Volume
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("parse metadata %s: %w", name, err)
	}
	if v.ID+".json" != name {
		return nil, fmt.Errorf("metadata %s holds id %q", name, v.ID)
	}
	v.Path = b.imgPath(v.ID)
	if _, err := os.Stat(v.Path); err != nil {
		return nil, fmt.Errorf("volume %s: image missing: %w", v.ID, err)
	}
	return &v, nil
}

// rediscover makes v.Device match what the loop driver really has bound,
// so an attach survives a restart of the process (and a crash between the
// ioctl and the metadata write is repaired).
func (b *FileBackend) rediscover(v *Volume) {
	want := v.Device
	if v.Device != "" && loopBacking(v.Device) != v.Path {
		v.Device = ""
	}
	if v.Device == "" {
		if devs := loopFind(v.Path); len(devs) > 0 {
			v.Device = devs[0]
		}
	}
	if v.Device != want {
		b.log.Info("loop device re-discovered", "id", v.ID, "recorded", want, "actual", v.Device)
		if err := b.writeMeta(v); err != nil {
			b.log.Error("cannot record re-discovered device", "id", v.ID, "error", err)
		}
	}
}

// writeMeta stores v durably: temp file, fsync, rename, fsync dir.
func (b *FileBackend) writeMeta(v *Volume) error {
	raw, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(b.dir, "."+v.ID+".json.tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write metadata: %w", err)
	}
	_, err = f.Write(raw)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, b.metaPath(v.ID))
	}
	if err == nil {
		err = SyncDir(b.dir)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write metadata of %s: %w", v.ID, err)
	}
	return nil
}

// SyncDir fsyncs a directory, making the renames and removals in it
// durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// capacityLocked computes the figures. The rule: effective budget =
// min(configured budget, used + statfs available - unwritten), where used
// is the sum of provisioned volume sizes (volumes in the making included)
// and unwritten is what those sparse volumes may still allocate: their
// provisioned size less the blocks they hold, and all of a volume in the
// making. Without that subtraction the free space a sparse volume has not
// used yet counted twice, once as provisioned and once as free on disk,
// and two volumes of 60 % of the free space both fit. Snapshots do not
// count. A budget of 0 means no configured limit.
//
// A reflinked clone reports its shared blocks as its own, so its future
// writes are not counted as unwritten: on XFS or btrfs, clones can still
// overcommit the disk, and --capacity bounds them.
//
// Without reflink a snapshot is a full copy that holds disk space while a
// fork runs. That space is forknode's and comes back when the fork ends,
// so it is added back: else every fork would move the budget down and up
// again (a catalog write each way) and show the planner less room than
// the host has.
func (b *FileBackend) capacityLocked() (Capacity, error) {
	avail, err := FreeBytes(b.dir)
	if err != nil {
		return Capacity{}, err
	}
	var used, unwritten, snapshots int64
	allocated := func(path string) (int64, bool) {
		var st unix.Stat_t
		if unix.Stat(path, &st) != nil {
			return 0, false
		}
		return st.Blocks * 512, true
	}
	for _, v := range b.vols {
		a, ok := allocated(v.Path)
		switch {
		case v.Kind != KindVolume:
			if !b.features.Clone {
				snapshots += a
			}
		case ok:
			used += v.Size
			unwritten += max(v.Size-a, 0)
		default:
			used += v.Size
			unwritten += v.Size // cannot tell: assume it may all be written
		}
	}
	for id, v := range b.pending {
		if v.Kind == KindVolume {
			used += v.Size
			unwritten += v.Size
		} else if !b.features.Clone {
			a, _ := allocated(filepath.Join(b.dir, "."+id+".img.tmp")) // a copy in progress
			snapshots += a
		}
	}
	eff := max(used+avail+snapshots-unwritten, 0)
	if b.budget > 0 && b.budget < eff {
		eff = b.budget
	}
	return Capacity{Budget: eff, Used: used, Free: max(eff-used, 0)}, nil
}

func (b *FileBackend) Capacity(ctx context.Context) (Capacity, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.capacityLocked()
}

// reserveLocked claims v's id, name and (for volumes) budget until commit
// or abort.
func (b *FileBackend) reserveLocked(v Volume) error {
	if _, ok := b.pending[v.ID]; ok {
		return fmt.Errorf("%w: %s is being created right now", ErrBusy, v.ID)
	}
	if v.Kind == KindVolume {
		for _, o := range b.vols {
			if o.Kind == KindVolume && o.Name == v.Name {
				return fmt.Errorf("%w: name %q is taken by %s", ErrExists, v.Name, o.ID)
			}
		}
		for _, o := range b.pending {
			if o.Kind == KindVolume && o.Name == v.Name {
				return fmt.Errorf("%w: name %q is taken by %s (being created)", ErrExists, v.Name, o.ID)
			}
		}
		c, err := b.capacityLocked()
		if err != nil {
			return err
		}
		if v.Size > c.Free {
			return fmt.Errorf("%w: volume %s needs %d bytes, %d free (budget %d, used %d)",
				ErrNoSpace, v.ID, v.Size, c.Free, c.Budget, c.Used)
		}
	}
	b.pending[v.ID] = v
	return nil
}

// commit records v durably and makes it visible. When the metadata cannot
// be written, the image is removed and the reservation dropped.
func (b *FileBackend) commit(v Volume) (Volume, error) {
	if err := b.writeMeta(&v); err != nil {
		// The id is new, so a metadata file (renamed before a failed dir
		// fsync) is ours to drop too.
		b.abort(v.ID, b.metaPath(v.ID), v.Path)
		return Volume{}, err
	}
	b.mu.Lock()
	delete(b.pending, v.ID)
	b.vols[v.ID] = &v
	b.mu.Unlock()
	return v, nil
}

func (b *FileBackend) abort(id string, files ...string) {
	for _, f := range files {
		_ = os.Remove(f)
	}
	b.mu.Lock()
	delete(b.pending, id)
	b.mu.Unlock()
}

// sameVolume tells whether an existing volume answers a retried create.
func sameVolume(v *Volume, kind Kind, name string, size int64, owner, origin string) bool {
	return v.Kind == kind && v.Name == name && v.Size == size && v.Owner == owner && v.Origin == origin
}

// Create makes a sparse image of spec.Size. Retrying with the same spec
// returns the existing volume; a different spec under the same id is
// ErrExists.
func (b *FileBackend) Create(ctx context.Context, spec CreateSpec) (Volume, error) {
	if err := ValidateSpec(spec); err != nil {
		return Volume{}, err
	}
	b.mu.Lock()
	if v, ok := b.vols[spec.ID]; ok {
		b.mu.Unlock()
		if sameVolume(v, KindVolume, spec.Name, spec.Size, spec.Owner, "") {
			return *v, nil
		}
		return Volume{}, fmt.Errorf("%w: id %s exists with another spec (name %q size %d kind %s)",
			ErrExists, spec.ID, v.Name, v.Size, v.Kind)
	}
	v := Volume{ID: spec.ID, Name: spec.Name, Size: spec.Size, Kind: KindVolume, Owner: spec.Owner,
		Path: b.imgPath(spec.ID), Created: time.Now().UTC()}
	err := b.reserveLocked(v)
	b.mu.Unlock()
	if err != nil {
		return Volume{}, err
	}
	tmp := filepath.Join(b.dir, "."+spec.ID+".img.tmp")
	if err := makeSparse(tmp, spec.Size); err != nil {
		b.abort(spec.ID, tmp)
		return Volume{}, err
	}
	if err := os.Rename(tmp, v.Path); err != nil {
		b.abort(spec.ID, tmp)
		return Volume{}, fmt.Errorf("create %s: %w", spec.ID, err)
	}
	v, err = b.commit(v)
	if err != nil {
		return Volume{}, err
	}
	b.log.Info("volume created", "id", v.ID, "name", v.Name, "size", v.Size)
	return v, nil
}

func makeSparse(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create image: %w", err)
	}
	err = f.Truncate(size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EFBIG) {
			return fmt.Errorf("%w: create image of %d bytes: %v", ErrNoSpace, size, err)
		}
		return fmt.Errorf("create image: %w", err)
	}
	return nil
}

func (b *FileBackend) Get(ctx context.Context, id string) (Volume, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	v, ok := b.vols[id]
	if !ok {
		return Volume{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	return *v, nil
}

// List returns volumes and snapshots ordered by id.
func (b *FileBackend) List(ctx context.Context) ([]Volume, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]Volume, 0, len(b.vols))
	for _, v := range b.vols {
		out = append(out, *v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Remove deletes a volume or snapshot. An attached one is ErrBusy.
// Metadata goes first (the commit point), then the image.
func (b *FileBackend) Remove(ctx context.Context, id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	v, ok := b.vols[id]
	if !ok {
		return fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	if v.Device != "" {
		return fmt.Errorf("%w: %s is attached as %s; detach it first", ErrBusy, id, v.Device)
	}
	if b.sources[id] > 0 {
		return fmt.Errorf("%w: %s is being snapshotted or cloned", ErrBusy, id)
	}
	if err := os.Remove(b.metaPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	if err := SyncDir(b.dir); err != nil {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	delete(b.vols, id)
	if err := os.Remove(v.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
		// Metadata is gone, so the volume is gone; the image is debris
		// that the next open removes.
		b.log.Warn("image left behind", "id", id, "error", err)
	}
	b.log.Info("removed", "id", id, "kind", v.Kind)
	return nil
}

// Release drops a snapshot.
func (b *FileBackend) Release(ctx context.Context, snapID string) error {
	return releaseSnapshot(ctx, b, snapID)
}

// releaseSnapshot removes snapID after checking it is a snapshot, so a
// Release can never drop a volume.
func releaseSnapshot(ctx context.Context, b Backend, snapID string) error {
	v, err := b.Get(ctx, snapID)
	if err != nil {
		return err
	}
	if v.Kind != KindSnapshot {
		return fmt.Errorf("%w: %s is a %s, not a snapshot", ErrInvalid, snapID, v.Kind)
	}
	return b.Remove(ctx, snapID)
}

// Open opens a volume or snapshot. Writing to an attached volume behind the
// back of its block device (and maybe a mounted filesystem) would corrupt
// it, so that is ErrBusy; snapshots are read-only.
func (b *FileBackend) Open(ctx context.Context, id string, writable bool) (Device, error) {
	v, err := b.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if writable && v.Device != "" {
		return nil, fmt.Errorf("%w: %s is attached as %s", ErrBusy, id, v.Device)
	}
	if writable && v.Kind == KindSnapshot {
		return nil, fmt.Errorf("%w: snapshot %s is read-only", ErrInvalid, id)
	}
	d, err := OpenFileDevice(v.Path, writable)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", id, err)
	}
	return d, nil
}

func (b *FileBackend) Extents(ctx context.Context, id string) ([]Extent, error) {
	v, err := b.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	ext, err := FileExtents(v.Path)
	if err != nil {
		return nil, fmt.Errorf("extents of %s: %w", id, err)
	}
	return ext, nil
}

// Attach binds the volume to a loop device and records it. Attaching an
// attached volume returns its device.
func (b *FileBackend) Attach(ctx context.Context, id string) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	v, ok := b.vols[id]
	if !ok {
		return "", fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	if v.Device != "" {
		if loopBacking(v.Device) == v.Path {
			return v.Device, nil
		}
		v.Device = "" // stale record: the binding is gone
	}
	if !b.features.Clone && b.sources[id] > 0 {
		// A snapshot is copying it: a device attached now could be mounted
		// and written mid-copy, and the copy would be torn.
		return "", fmt.Errorf("%w: a snapshot of %s is being copied; attach it when that is done", ErrBusy, id)
	}
	dev, err := loopAttach(v.Path)
	if err != nil {
		return "", fmt.Errorf("attach %s: %w", id, err)
	}
	nv := *v
	nv.Device = dev
	if err := b.writeMeta(&nv); err != nil {
		_ = loopDetach(dev)
		return "", fmt.Errorf("attach %s: %w", id, err)
	}
	*v = nv
	b.log.Info("attached", "id", id, "device", dev)
	return dev, nil
}

// Detach unbinds the loop device. A mounted device is ErrBusy.
func (b *FileBackend) Detach(ctx context.Context, id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	v, ok := b.vols[id]
	if !ok {
		return fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	if v.Device == "" {
		return nil
	}
	if loopBacking(v.Device) == v.Path {
		mps, err := mountpointsOf(v.Device)
		if err != nil {
			return fmt.Errorf("detach %s: %w", id, err)
		}
		if len(mps) > 0 {
			return fmt.Errorf("%w: %s (%s) is mounted at %s", ErrBusy, id, v.Device, strings.Join(mps, ", "))
		}
		if err := loopDetach(v.Device); err != nil {
			return fmt.Errorf("detach %s: %w", id, err)
		}
	}
	nv := *v
	nv.Device = ""
	if err := b.writeMeta(&nv); err != nil {
		return fmt.Errorf("detach %s: %w", id, err)
	}
	b.log.Info("detached", "id", id, "device", v.Device)
	*v = nv
	return nil
}

// Claim binds the directory to the node that runs on it: the marker gets
// the node's name, and an exclusive lock on it is held until Unclaim. Two
// agents on one directory would each take the other's volumes for
// strays and remove them at start; the second is refused instead, and so
// is a node of another name on a directory that a node used before.
// Claiming again for the same node (a restart in the same process) is a
// no-op.
func (b *FileBackend) Claim(node string) error {
	b.claimMu.Lock()
	defer b.claimMu.Unlock()
	if b.claim != nil {
		if b.owner != node {
			return fmt.Errorf("%w: volume directory %s is claimed by node %s in this process", ErrBusy, b.dir, b.owner)
		}
		return nil
	}
	f, err := os.OpenFile(filepath.Join(b.dir, markerName), os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("volume directory marker: %w", err)
	}
	if err := claimMarker(f, b.dir, node); err != nil {
		f.Close()
		return err
	}
	b.claim, b.owner = f, node
	return nil
}

// claimMarker locks the marker f and checks or records its node.
func claimMarker(f *os.File, dir, node string) error {
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); errors.Is(err, unix.EWOULDBLOCK) {
		return fmt.Errorf("%w: volume directory %s is in use by another agent; give each agent a directory of its own", ErrBusy, dir)
	} else if err != nil {
		return fmt.Errorf("lock the volume directory marker: %w", err)
	}
	raw, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("volume directory marker: %w", err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if owner, ok := strings.CutPrefix(line, "node: "); ok {
			if owner != node {
				return fmt.Errorf("%w: volume directory %s belongs to node %s, not %s: its volumes are that node's; give this node a directory of its own",
					ErrBusy, dir, owner, node)
			}
			return nil
		}
	}
	if _, err := f.WriteAt([]byte("node: "+node+"\n"), int64(len(raw))); err != nil {
		return fmt.Errorf("volume directory marker: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("volume directory marker: %w", err)
	}
	return nil
}

// Unclaim drops the lock Claim took.
func (b *FileBackend) Unclaim() {
	b.claimMu.Lock()
	defer b.claimMu.Unlock()
	if b.claim != nil {
		b.claim.Close()
		b.claim, b.owner = nil, ""
	}
}
