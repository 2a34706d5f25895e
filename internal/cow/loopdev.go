package cow

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Loop devices are driven with ioctls rather than losetup, so that errors
// are errnos we can classify and no tool output has to be parsed.

// loopAttach binds path to a free loop device and returns /dev/loopN.
// LO_FLAGS_AUTOCLEAR is deliberately not set: the backend records the
// device in the volume's metadata and clears it itself on Detach.
func loopAttach(path string) (string, error) {
	img, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("open image: %w", err)
	}
	defer img.Close()

	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("open /dev/loop-control: %w", err)
	}
	defer ctl.Close()

	// Another process may take the same free device between GET_FREE and
	// CONFIGURE; the kernel then answers EBUSY and we ask again.
	var lastErr error
	for attempt := 0; attempt < 20; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", fmt.Errorf("LOOP_CTL_GET_FREE: %w", err)
		}
		dev := fmt.Sprintf("/dev/loop%d", n)
		lastErr = loopBind(dev, img)
		if lastErr == nil {
			return dev, nil
		}
		if !errors.Is(lastErr, unix.EBUSY) {
			return "", lastErr
		}
		time.Sleep(time.Duration(attempt+1) * 5 * time.Millisecond)
	}
	return "", fmt.Errorf("no free loop device after retries: %w", lastErr)
}

func loopBind(dev string, img *os.File) error {
	var lf *os.File
	var err error
	// devtmpfs creates the node asynchronously after LOOP_CTL_GET_FREE adds
	// a new device; give it a moment.
	for i := 0; i < 50; i++ {
		lf, err = os.OpenFile(dev, os.O_RDWR, 0)
		if !errors.Is(err, os.ErrNotExist) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer lf.Close()

	var info unix.LoopInfo64
	copy(info.File_name[:unix.LO_NAME_SIZE-1], img.Name())
	cfg := unix.LoopConfig{Fd: uint32(img.Fd()), Info: info}
	err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOTTY) {
		return fmt.Errorf("LOOP_CONFIGURE %s: %w", dev, err)
	}
	// Kernels before 5.8: two-step setup.
	if err := unix.IoctlSetInt(int(lf.Fd()), unix.LOOP_SET_FD, int(img.Fd())); err != nil {
		return fmt.Errorf("LOOP_SET_FD %s: %w", dev, err)
	}
	if err := unix.IoctlLoopSetStatus64(int(lf.Fd()), &info); err != nil {
		_ = unix.IoctlSetInt(int(lf.Fd()), unix.LOOP_CLR_FD, 0)
		return fmt.Errorf("LOOP_SET_STATUS64 %s: %w", dev, err)
	}
	return nil
}

// loopDetach clears the binding of dev and waits until the kernel has
// really let go of the backing file.
func loopDetach(dev string) error {
	lf, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	err = unix.IoctlSetInt(int(lf.Fd()), unix.LOOP_CLR_FD, 0)
	lf.Close()
	if errors.Is(err, unix.ENXIO) {
		return nil // already unbound
	}
	if err != nil {
		return fmt.Errorf("LOOP_CLR_FD %s: %w", dev, err)
	}
	// With other openers (udev, blkid) the kernel defers the clear to the
	// last close; wait for it so the image can be removed safely.
	deadline := time.Now().Add(5 * time.Second)
	for loopBacking(dev) != "" {
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %s still bound after LOOP_CLR_FD (held open elsewhere)", ErrBusy, dev)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// loopBacking returns the backing file of dev from sysfs, or "" when the
// device is unbound or unknown.
func loopBacking(dev string) string {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// loopFind returns every loop device whose backing file is path.
func loopFind(path string) []string {
	matches, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []string
	for _, m := range matches {
		b, err := os.ReadFile(m)
		if err != nil {
			continue
		}
		if strings.TrimSpace(string(b)) == path {
			out = append(out, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(m))))
		}
	}
	return out
}
