// Package pace adapts a node's fork I/O rate to what its CPUs and disk can
// spare.
//
// A fork copies or streams a whole volume while the database on that host
// keeps running. A fixed rate limit is either too high (the database's
// commits wait behind the fork's writes) or too low (the fork crawls on an
// idle disk), and the right figure differs between disks and hours. So the
// Controller treats the configured limit as a ceiling and moves the real
// rate below it the way LEDBAT moves a background TCP sender: it watches a
// delay it can measure, compares it with the lowest delay seen lately, and
// backs off as soon as a queue builds.
//
// The delay is that of a probe: a 4 KiB O_DIRECT|O_DSYNC overwrite of an
// already allocated block in a small file on the volumes' file system, or
// in a small empty block device on their disks, e.g. an LV of its own on an
// LVM host (see OpenFileProbe). That is the same operation a database commit waits for (a
// small write plus a cache flush), it touches no file system metadata, and
// it is queued behind every other write to the device, the fork's and the
// database's alike. The second signal is the CPU (CPUSignal): this
// process's threads waiting in a run queue (schedstat) while the rest of
// the host keeps most CPUs busy (/proc/stat minus this process). When the
// database saturates the CPUs, each cycle a fork spends (compressing,
// hashing, and the kernel's copying on its behalf, which its nice level
// does not cover) is taken from the database.
//
// Signals are sampled every Interval while bytes pass the limiter (a
// probe write every 200 ms, only during forks) and every IdleInterval
// otherwise, to keep their baselines fresh.
//
// The rule (Step) is AIMD: a sample in which any signal fires cuts the rate
// by Backoff, down to Floor so a fork always progresses; a quiet sample adds
// (Ceiling-Floor)/Ramp. The disk signal fires when the probe's filtered
// delay exceeds Base·Factor + Slack, Base being the minimum over the last
// History (kept in ten-second buckets, so it follows a disk whose idle
// latency changes). An idle node waits at a quarter of the ceiling, so a new fork
// starts gently and climbs.
package pace
