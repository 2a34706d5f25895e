package main

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// renice lowers the CPU priority of every thread of this process. Forks are
// background work beside the databases they copy, so under contention the
// database should win. On Linux nice is per thread; threads created later
// are cloned from existing ones and inherit it.
func renice(n int) error {
	if n == 0 {
		return nil
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("renice: %w", err)
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, n); err != nil {
			return fmt.Errorf("renice thread %d to %d: %w", tid, n, err)
		}
	}
	return nil
}
