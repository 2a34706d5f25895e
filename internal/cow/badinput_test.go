package cow

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/forknode/forknode/internal/testutil"
)

// TestBadInput: every bad request gets a clear error wrapping the right
// sentinel, and leaves the backend exactly as it was.
func TestBadInput(t *testing.T) {
	ctx := context.Background()
	const budget = 64 << 20
	spec := func(id, name string, size int64) CreateSpec { return CreateSpec{ID: id, Name: name, Size: size} }
	for _, tc := range []struct {
		name string
		root bool
		op   func(b *FileBackend) error
		want error
		msg  string // the message must name the problem
	}{
		{"name charset", false, func(b *FileBackend) error { _, err := b.Create(ctx, spec("v", "bad/name", 4096)); return err }, ErrInvalid, "character"},
		{"name leading dash", false, func(b *FileBackend) error { _, err := b.Create(ctx, spec("v", "-x", 4096)); return err }, ErrInvalid, "start"},
		{"name too long", false, func(b *FileBackend) error {
			_, err := b.Create(ctx, spec("v", strings.Repeat("a", 64), 4096))
			return err
		}, ErrInvalid, "64 characters"},
		{"name empty", false, func(b *FileBackend) error { _, err := b.Create(ctx, spec("v", "", 4096)); return err }, ErrInvalid, "empty"},
		{"id path traversal", false, func(b *FileBackend) error { _, err := b.Create(ctx, spec("../v", "v", 4096)); return err }, ErrInvalid, "id"},
		{"size zero", false, func(b *FileBackend) error { _, err := b.Create(ctx, spec("v", "v", 0)); return err }, ErrInvalid, "positive"},
		{"size negative", false, func(b *FileBackend) error { _, err := b.Create(ctx, spec("v", "v", -4096)); return err }, ErrInvalid, "positive"},
		{"size unaligned", false, func(b *FileBackend) error { _, err := b.Create(ctx, spec("v", "v", 5000)); return err }, ErrInvalid, "multiple of 4096"},
		{"size over budget", false, func(b *FileBackend) error { _, err := b.Create(ctx, spec("v", "v", budget)); return err }, ErrNoSpace, "free"},
		{"duplicate name", false, func(b *FileBackend) error { _, err := b.Create(ctx, spec("v2", "src", 4096)); return err }, ErrExists, "src"},
		{"same id other spec", false, func(b *FileBackend) error { _, err := b.Create(ctx, spec("src", "src", 8192)); return err }, ErrExists, "another spec"},
		{"clone missing source", false, func(b *FileBackend) error {
			_, err := b.Clone(ctx, "nope", spec("c", "c", 0))
			return err
		}, ErrNotFound, "nope"},
		{"clone bad name", false, func(b *FileBackend) error { _, err := b.Clone(ctx, "src", spec("c", "C!", 0)); return err }, ErrInvalid, "name"},
		{"snapshot missing source", false, func(b *FileBackend) error { _, err := b.Snapshot(ctx, "nope", "s"); return err }, ErrNotFound, "nope"},
		{"snapshot bad id", false, func(b *FileBackend) error { _, err := b.Snapshot(ctx, "src", "a/b"); return err }, ErrInvalid, "id"},
		{"snapshot id taken", false, func(b *FileBackend) error { _, err := b.Snapshot(ctx, "src", "src"); return err }, ErrExists, "src"},
		{"forklocal missing source", false, func(b *FileBackend) error {
			_, err := ForkLocal(ctx, b, "nope", spec("f", "f", 0), CopyOptions{})
			return err
		}, ErrNotFound, "nope"},
		{"forklocal over budget", false, func(b *FileBackend) error {
			_, err := ForkLocal(ctx, b, "src", spec("f", "f", budget-4096), CopyOptions{})
			return err
		}, ErrNoSpace, "free"},
		{"forklocal smaller than source", false, func(b *FileBackend) error {
			_, err := ForkLocal(ctx, b, "src", spec("f", "f", 4096), CopyOptions{})
			return err
		}, ErrInvalid, "smaller"},
		{"forklocal duplicate name", false, func(b *FileBackend) error {
			_, err := ForkLocal(ctx, b, "src", spec("f", "src", 0), CopyOptions{})
			return err
		}, ErrExists, "src"},
		{"forklocal bad size", false, func(b *FileBackend) error {
			_, err := ForkLocal(ctx, b, "src", spec("f", "f", 100), CopyOptions{})
			return err
		}, ErrInvalid, "multiple"},
		{"remove missing", false, func(b *FileBackend) error { return b.Remove(ctx, "nope") }, ErrNotFound, "nope"},
		{"release missing", false, func(b *FileBackend) error { return b.Release(ctx, "nope") }, ErrNotFound, "nope"},
		{"release a volume", false, func(b *FileBackend) error { return b.Release(ctx, "src") }, ErrInvalid, "not a snapshot"},
		{"extents missing", false, func(b *FileBackend) error { _, err := b.Extents(ctx, "nope"); return err }, ErrNotFound, "nope"},
		{"attach missing", false, func(b *FileBackend) error { _, err := b.Attach(ctx, "nope"); return err }, ErrNotFound, "nope"},
		{"detach missing", false, func(b *FileBackend) error { return b.Detach(ctx, "nope") }, ErrNotFound, "nope"},
		{"remove attached", true, func(b *FileBackend) error { return b.Remove(ctx, "src") }, ErrBusy, "attached"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root {
				testutil.RequireRoot(t)
			}
			b := newTestBackend(t, "", budget)
			if _, err := b.Create(ctx, spec("src", "src", 4<<20)); err != nil {
				t.Fatal(err)
			}
			writeLayout(t, imgPath(b, "src"), "dhdz", 1)
			if tc.root {
				attachVolume(t, b, "src")
			}
			before, files := listIDs(t, b), dirFiles(t, b.Dir())
			err := tc.op(b)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("want %v mentioning %q, got %v", tc.want, tc.msg, err)
			}
			if after := listIDs(t, b); !reflect.DeepEqual(after, before) {
				t.Fatalf("List changed: %v -> %v", before, after)
			}
			if after := dirFiles(t, b.Dir()); !reflect.DeepEqual(after, files) {
				t.Fatalf("files changed: %v -> %v", files, after)
			}
		})
	}
}
