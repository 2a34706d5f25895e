package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// These helpers use losetup/mount rather than the ioctls of internal/cow,
// so tests of that code are checked against an independent implementation.

// Run runs a command and fails the test with its output on error.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// AttachLoop binds image to a free loop device and detaches it at cleanup.
func AttachLoop(t testing.TB, image string) string {
	t.Helper()
	RequireRoot(t)
	RequireCmd(t, "losetup")
	dev := strings.TrimSpace(Run(t, "losetup", "--find", "--show", image))
	t.Cleanup(func() { DetachLoop(t, dev) })
	return dev
}

// DetachLoop detaches dev, retrying while udev or blkid still hold it.
func DetachLoop(t testing.TB, dev string) {
	t.Helper()
	var out []byte
	var err error
	for i := 0; i < 50; i++ {
		out, err = exec.Command("losetup", "-d", dev).CombinedOutput()
		if err == nil || strings.Contains(string(out), "No such device") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("losetup -d %s: %v: %s", dev, err, out)
}

// Mount mounts dev at a new temp dir and unmounts it at cleanup.
func Mount(t testing.TB, dev, fstype string, opts ...string) string {
	t.Helper()
	RequireRoot(t)
	dir := t.TempDir()
	args := []string{"-t", fstype}
	if len(opts) > 0 {
		args = append(args, "-o", strings.Join(opts, ","))
	}
	Run(t, "mount", append(args, dev, dir)...)
	t.Cleanup(func() { Unmount(t, dir) })
	return dir
}

// Unmount unmounts dir if it is mounted, retrying briefly while busy.
func Unmount(t testing.TB, dir string) {
	t.Helper()
	var out []byte
	var err error
	for i := 0; i < 50; i++ {
		if !IsMounted(dir) {
			return
		}
		out, err = exec.Command("umount", dir).CombinedOutput()
		if err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("umount %s: %v: %s", dir, err, out)
}

// IsMounted tells whether dir is a mount point (per /proc/self/mountinfo).
func IsMounted(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// LoopFS makes a sparse image of size bytes in a temp dir, attaches it,
// runs mkfs.<fstype> with mkfsArgs and mounts it. It returns the mount
// point; cleanup unmounts and detaches even when the test fails.
func LoopFS(t testing.TB, fstype string, size int64, mkfsArgs ...string) string {
	t.Helper()
	RequireRoot(t)
	RequireCmd(t, "losetup", "mkfs."+fstype, "mount", "umount")
	img := filepath.Join(t.TempDir(), fstype+".img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	dev := AttachLoop(t, img)
	Run(t, "mkfs."+fstype, append(append([]string{}, mkfsArgs...), dev)...)
	return Mount(t, dev, fstype)
}
