package main

import (
	"os"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"
)

func TestRenice(t *testing.T) {
	if err := renice(0); err != nil {
		t.Fatalf("renice 0: %v", err)
	}
	// Raising niceness cannot be undone without privilege, so it runs in a
	// child process: this test binary again.
	if os.Getenv("FORKNODE_RENICE_CHILD") == "1" {
		if err := renice(5); err != nil {
			t.Fatal(err)
		}
		// Every thread, not only the calling one.
		tasks, _ := os.ReadDir("/proc/self/task")
		for _, task := range tasks {
			var tid int
			for _, c := range task.Name() {
				tid = tid*10 + int(c-'0')
			}
			p, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
			if err != nil {
				t.Fatal(err)
			}
			if nice := 20 - p; nice != 5 { // the syscall returns 20-nice
				t.Fatalf("thread %d has niceness %d after renice 5", tid, nice)
			}
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestRenice$", "-test.count=1")
	cmd.Env = append(os.Environ(), "FORKNODE_RENICE_CHILD=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
}
