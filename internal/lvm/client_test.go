package lvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeRunner records argument lists and answers from a function. It only
// tests argument building and parsing, never LVM itself.
type fakeRunner struct {
	calls  [][]string
	answer func(args []string) ([]byte, error)
}

func (f *fakeRunner) Run(_ context.Context, args ...string) ([]byte, error) {
	f.calls = append(f.calls, append([]string(nil), args...))
	if f.answer == nil {
		return nil, nil
	}
	return f.answer(args)
}

func TestLVMErrorSentinels(t *testing.T) {
	tests := []struct {
		stderr string
		want   error
	}{
		{`Volume group "nope" not found`, ErrNotFound},
		{`Failed to find logical volume "vg0/x"`, ErrNotFound},
		{`Logical Volume "a" already exists in volume group "vg0"`, ErrExists},
		{`Volume group "vg0" has insufficient free space (10 extents): 64 required.`, ErrNoSpace},
		{`Insufficient suitable allocatable extents for logical volume a: 64 more required`, ErrNoSpace},
		{`Logical volume vg0/a in use.`, ErrInUse},
	}
	all := []error{ErrNotFound, ErrExists, ErrNoSpace, ErrInUse}
	for _, tc := range tests {
		err := fmt.Errorf("wrapped: %w", &LVMError{Op: "lvcreate", Code: 5, Stderr: tc.stderr})
		for _, s := range all {
			if got := errors.Is(err, s); got != (s == tc.want) {
				t.Errorf("%q: errors.Is(%v) = %v", tc.stderr, s, got)
			}
		}
		if !strings.Contains(err.Error(), tc.stderr) || !strings.Contains(err.Error(), "exit status 5") {
			t.Errorf("message %q lacks stderr or exit code", err)
		}
		var le *LVMError
		if !errors.As(err, &le) || le.ExitCode() != 5 {
			t.Errorf("errors.As: %v", err)
		}
	}
	if errors.Is(&LVMError{Code: 0, Stderr: "not found"}, ErrNotFound) {
		t.Error("exit 0 must not match a sentinel")
	}
}

// TestExecRunner runs a stand-in lvm script: it checks the environment,
// the argv, the stdout capture and the error for a non-zero exit.
func TestExecRunner(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "lvm")
	body := `#!/bin/sh
echo "LC_ALL=$LC_ALL args=$*"
if [ "$1" = fail ]; then echo "  Failed to find logical volume \"vg/x\"" >&2; exit 5; fi
`
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	r := ExecRunner{Path: script}
	out, err := r.Run(context.Background(), "lvs", "a b")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != "LC_ALL=C args=lvs a b" {
		t.Errorf("stdout %q", got)
	}
	_, err = r.Run(context.Background(), "fail", "x")
	var le *LVMError
	if !errors.As(err, &le) || le.Op != "fail" || le.ExitCode() != 5 || le.Stderr != `Failed to find logical volume "vg/x"` ||
		strings.Join(le.Args, " ") != "fail x" {
		t.Fatalf("error %#v", err)
	}
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("not ErrNotFound: %v", err)
	}
	if _, err := (ExecRunner{Path: filepath.Join(dir, "missing")}).Run(context.Background(), "lvs"); err == nil {
		t.Error("missing binary: no error")
	}
}

func TestClientBuildsArgsAndParses(t *testing.T) {
	f := &fakeRunner{answer: func(args []string) ([]byte, error) {
		switch args[0] {
		case "vgs":
			return []byte(`{"report":[{"vg":[{"vg_name":"vg0","vg_size":"100","vg_free":"50","vg_extent_size":"4194304"}]}]}`), nil
		case "lvs":
			return []byte(lvJSON), nil
		}
		return nil, nil
	}}
	c := New(f, nil)
	ctx := context.Background()
	vg, err := c.VG(ctx, "vg0")
	if err != nil || vg.Free != 50 {
		t.Fatalf("VG: %+v %v", vg, err)
	}
	tagged, err := c.ListTagged(ctx, "vg0", TagOwned)
	if err != nil || len(tagged) != 2 || tagged[0].Name != "vol_1" || tagged[1].Name != "snap" {
		t.Fatalf("ListTagged: %+v %v", tagged, err)
	}
	pools, err := c.ThinPools(ctx, "vg0")
	if err != nil || len(pools) != 1 || pools[0].Name != "pool" {
		t.Fatalf("ThinPools: %+v %v", pools, err)
	}
	if _, err := c.LV(ctx, "vg0", "absent"); !errors.Is(err, ErrNotFound) {
		t.Errorf("LV absent: %v", err)
	}
	f.calls = nil
	if err := c.CreateThinSnapshot(ctx, "vg0", "vol_1", "vol_2", []string{"forknode"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Remove(ctx, "vg0", "bad name"); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad name: %v", err)
	}
	if len(f.calls) != 1 || strings.Join(f.calls[0], " ") != "lvcreate -y -s -kn -n vol_2 --addtag forknode vg0/vol_1" {
		t.Errorf("calls %q (an invalid name must not reach lvm)", f.calls)
	}
}

func TestSnapshotWatch(t *testing.T) {
	pct := []string{"10.00", "50.00", "85.00", "20.00"}
	n := 0
	f := &fakeRunner{answer: func(args []string) ([]byte, error) {
		p := pct[min(n, len(pct)-1)]
		n++
		return []byte(`{"report":[{"lv":[{"lv_name":"s","vg_name":"vg0","lv_size":"8388608","lv_attr":"swi-a-s---","data_percent":"` + p + `"}]}]}`), nil
	}}
	w := New(f, nil).WatchSnapshot("vg0", "s", 80, time.Hour)
	ctx := context.Background()
	if err := w.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w.Check(ctx); err != nil || n != 1 {
		t.Fatalf("Check within the interval ran lvm (n=%d) or failed: %v", n, err)
	}
	if err := w.Poll(ctx); err != nil || w.Percent() != 50 {
		t.Fatalf("50%%: %v", err)
	}
	err := w.Poll(ctx)
	if !errors.Is(err, ErrSnapshotOverflow) || !strings.Contains(err.Error(), "85.00%") {
		t.Fatalf("85%%: %v", err)
	}
	if err := w.Poll(ctx); !errors.Is(err, ErrSnapshotOverflow) {
		t.Fatalf("overflow must stick: %v", err)
	}

	invalid := &fakeRunner{answer: func([]string) ([]byte, error) {
		return []byte(`{"report":[{"lv":[{"lv_name":"s","vg_name":"vg0","lv_attr":"swi-I-s---","data_percent":"100.00"}]}]}`), nil
	}}
	if err := New(invalid, nil).WatchSnapshot("vg0", "s", 0, 0).Check(ctx); !errors.Is(err, ErrSnapshotOverflow) {
		t.Fatalf("invalid snapshot: %v", err)
	}
}

// TestExecRunnerCancel: a cancelled context interrupts lvm (SIGINT) and the
// error says it was the context.
func TestExecRunnerCancel(t *testing.T) {
	script := filepath.Join(t.TempDir(), "lvm")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexec sleep 30\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := ExecRunner{Path: script}.Run(ctx, "lvs")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v to stop", d)
	}
}
