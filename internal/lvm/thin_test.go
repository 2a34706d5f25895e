package lvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/forknode/forknode/internal/testutil"
)

const mib = 1 << 20

// dump builds thin_dump XML: a 64 KiB-block pool (128 sectors) and the
// given device bodies.
func dump(devs ...string) string {
	return `<superblock uuid="" time="1" transaction="2" flags="0" version="2" data_block_size="128" nr_data_blocks="16384">` +
		strings.Join(devs, "\n") + `</superblock>`
}

func TestParseThinDump(t *testing.T) {
	const k64 = 64 << 10
	dev1 := `<device dev_id="1" mapped_blocks="5" transaction="0" creation_time="0" snap_time="1">
	  <range_mapping origin_begin="0" data_begin="0" length="3" time="0"/>
	  <single_mapping origin_block="16" data_block="30" time="0"/>
	  <single_mapping origin_block="17" data_block="31" time="0"/>
	  <range_mapping origin_begin="100" data_begin="40" length="2" time="0"/>
	</device>`
	other := `<device dev_id="7" mapped_blocks="1" transaction="0" creation_time="0" snap_time="1">
	  <range_mapping origin_begin="1000" data_begin="0" length="1" time="0"/>
	</device>`
	tests := []struct {
		name     string
		xml      string
		dev      int64
		size     int64
		grid     int64
		want     []Range
		wantErr  error
		errMatch string
	}{
		{name: "block grid", xml: dump(dev1), dev: 1, size: 64 * mib, grid: k64,
			want: []Range{{0, 3 * k64}, {16 * k64, 2 * k64}, {100 * k64, 2 * k64}}},
		// On a 1 MiB grid blocks 0-2 and 16-17 share the first MiB, and
		// blocks 100-101 (6.25 MiB) the seventh.
		{name: "MiB grid merges", xml: dump(dev1), dev: 1, size: 64 * mib, grid: mib,
			want: []Range{{0, 2 * mib}, {6 * mib, mib}}},
		{name: "other devices ignored", xml: dump(other, dev1), dev: 1, size: 64 * mib, grid: mib,
			want: []Range{{0, 2 * mib}, {6 * mib, mib}}},
		{name: "clipped to the LV", xml: dump(dev1), dev: 1, size: 100*k64 + 100, grid: mib,
			want: []Range{{0, 2 * mib}, {6 * mib, 100*k64 + 100 - 6*mib}}},
		{name: "past the end", xml: dump(dev1), dev: 1, size: 4 * k64, grid: k64,
			want: []Range{{0, 3 * k64}}},
		{name: "no mappings is known, not unknown", dev: 3, size: mib, grid: mib,
			xml:  dump(`<device dev_id="3" mapped_blocks="0" transaction="0" creation_time="0" snap_time="0"></device>`),
			want: []Range{}},
		{name: "out of order is sorted", dev: 1, size: 64 * mib, grid: mib,
			xml:  dump(`<device dev_id="1"><single_mapping origin_block="100" data_block="1" time="0"/><single_mapping origin_block="0" data_block="2" time="0"/></device>`),
			want: []Range{{0, mib}, {6 * mib, mib}}},
		{name: "device missing", xml: dump(other), dev: 1, size: mib, grid: mib, wantErr: ErrNotFound},
		{name: "empty dump", xml: ``, dev: 1, size: mib, grid: mib, wantErr: ErrNotFound},
		{name: "block size too small", dev: 1, size: mib, grid: mib,
			xml:      `<superblock data_block_size="8"><device dev_id="1"/></superblock>`,
			errMatch: "data_block_size"},
		{name: "mapping before superblock", dev: 1, size: mib, grid: mib,
			xml:      `<device dev_id="1"><single_mapping origin_block="0" data_block="0" time="0"/></device>`,
			errMatch: "bad mapping"},
		{name: "negative length", dev: 1, size: mib, grid: mib,
			xml:      dump(`<device dev_id="1"><range_mapping origin_begin="0" data_begin="0" length="-1" time="0"/></device>`),
			errMatch: "length"},
		{name: "zero length", dev: 1, size: mib, grid: mib,
			xml:      dump(`<device dev_id="1"><range_mapping origin_begin="0" data_begin="0" length="0" time="0"/></device>`),
			errMatch: "bad mapping"},
		{name: "missing attribute", dev: 1, size: mib, grid: mib,
			xml:      dump(`<device dev_id="1"><single_mapping data_block="0" time="0"/></device>`),
			errMatch: "without origin_block"},
		{name: "huge numbers do not overflow", dev: 1, size: 64 * mib, grid: mib,
			xml:  dump(`<device dev_id="1"><range_mapping origin_begin="9223372036854775807" data_begin="0" length="9223372036854775807" time="0"/><single_mapping origin_block="0" data_block="0" time="0"/></device>`),
			want: []Range{{0, mib}}},
		{name: "a range running past the end is clipped, not dropped", dev: 1, size: 2 * mib, grid: mib,
			xml:  dump(`<device dev_id="1"><range_mapping origin_begin="20" data_begin="0" length="9223372036854775000" time="0"/></device>`),
			want: []Range{{mib, mib}}},
		{name: "broken XML", xml: dump(`<device dev_id="1"><single_mapping`), dev: 1, size: mib, grid: mib, errMatch: "thin_dump"},
		{name: "bad grid", xml: dump(dev1), dev: 1, size: mib, grid: 0, wantErr: ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseThinDump(strings.NewReader(tc.xml), tc.dev, tc.size, tc.grid)
			switch {
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
			case tc.errMatch != "":
				if err == nil || !strings.Contains(err.Error(), tc.errMatch) {
					t.Fatalf("err = %v, want one containing %q", err, tc.errMatch)
				}
			case err != nil:
				t.Fatal(err)
			case !reflect.DeepEqual(got, tc.want):
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestThinDumpReal writes pool metadata with the real thin_restore and
// parses what the real thin_dump prints for it: the format is the tool's,
// not this test's idea of it.
func TestThinDumpReal(t *testing.T) {
	testutil.RequireCmd(t, "thin_restore", "thin_dump")
	dir := testutil.DiskTempDir(t) // thin_restore writes with O_DIRECT
	in := filepath.Join(dir, "in.xml")
	meta := filepath.Join(dir, "meta")
	// dev 1 maps blocks 0-2 and 40; dev 2 (a snapshot of it, sharing data
	// blocks) maps block 0 and blocks 64-79.
	x := `<superblock uuid="" time="1" transaction="2" flags="0" version="2" data_block_size="128" nr_data_blocks="1024">
  <device dev_id="1" mapped_blocks="4" transaction="0" creation_time="0" snap_time="1">
    <range_mapping origin_begin="0" data_begin="0" length="3" time="0"/>
    <single_mapping origin_block="40" data_block="30" time="0"/>
  </device>
  <device dev_id="2" mapped_blocks="17" transaction="1" creation_time="1" snap_time="1">
    <single_mapping origin_block="0" data_block="0" time="0"/>
    <range_mapping origin_begin="64" data_begin="100" length="16" time="1"/>
  </device>
</superblock>`
	if err := os.WriteFile(in, []byte(x), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(meta, make([]byte, 4*mib), 0o600); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "thin_restore", "-i", in, "-o", meta)
	for _, tc := range []struct {
		dev  int64
		want []Range
	}{
		{1, []Range{{0, 3 << 16}, {40 << 16, 1 << 16}}},
		{2, []Range{{0, 1 << 16}, {4 * mib, mib}}},
	} {
		out, err := exec.Command("thin_dump", "-f", "xml", "--dev-id", fmt.Sprint(tc.dev), meta).Output()
		if err != nil {
			t.Fatalf("thin_dump: %v", err)
		}
		got, err := ParseThinDump(strings.NewReader(string(out)), tc.dev, 16*mib, 64<<10)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("dev %d: got %v, want %v\n%s", tc.dev, got, tc.want, out)
		}
	}
}

func TestParseHeldRoot(t *testing.T) {
	tests := []struct {
		status string
		held   bool
		err    bool
	}{
		{"0 1048576 thin-pool 1 11/1024 10/4096 - rw discard_passdown queue_if_no_space - 1024", false, false},
		{"0 1048576 thin-pool 3 12/1024 10/4096 27 rw discard_passdown queue_if_no_space - 1024", true, false},
		{"0 1048576 thin-pool Fail", false, true},
		{"0 1048576 linear", false, true},
		{"", false, true},
	}
	for _, tc := range tests {
		held, err := parseHeldRoot(tc.status)
		if (err != nil) != tc.err || held != tc.held {
			t.Errorf("%q: held %v err %v", tc.status, held, err)
		}
	}
}

// fakeTools answers lvm reports and the dm tools from a table of commands.
type fakeTools struct {
	fakeRunner
	tools map[string]string // "dmsetup table vg-lv" → output; missing: exit 1
	calls []string
}

func (f *fakeTools) RunTool(_ context.Context, stdout io.Writer, tool string, args ...string) error {
	cmd := tool + " " + strings.Join(args, " ")
	f.calls = append(f.calls, cmd)
	out, ok := f.tools[cmd]
	if !ok {
		return &LVMError{Tool: tool, Op: args[0], Code: 1, Stderr: "Device does not exist."}
	}
	_, err := io.WriteString(stdout, out)
	return err
}

func thinLVReport(attr, pool string) func([]string) ([]byte, error) {
	seg := "linear"
	if attr[0] == 'V' {
		seg = "thin"
	}
	return func([]string) ([]byte, error) {
		return []byte(`{"report":[{"lv":[{"lv_name":"snap-a","vg_name":"vg-0","lv_size":"67108864","lv_attr":"` + attr +
			`","pool_lv":"` + pool + `","segtype":"` + seg + `"}]}]}`), nil
	}
}

func TestThinDevice(t *testing.T) {
	// The VG's '-' is doubled in device-mapper names.
	base := map[string]string{
		"dmsetup table vg--0-snap--a": "0 131072 thin 253:4 7",
		"dmsetup info -c --noheadings -o major,minor --separator : vg--0-pool-tpool": "253:4",
		"dmsetup table vg--0-pool-tpool":                                             "0 524288 thin-pool 253:2 253:3 128 0 1 skip_block_zeroing",
		"dmsetup info -c --noheadings -o major,minor --separator : vg--0-pool_tmeta": "253:2",
	}
	with := func(k, v string) map[string]string {
		m := map[string]string{}
		for a, b := range base {
			m[a] = b
		}
		if v == "" {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	tests := []struct {
		name  string
		attr  string
		tools map[string]string
		want  ThinDev
		err   error
	}{
		{"thin LV", "Vwi-a-tz--", base, ThinDev{DevID: 7, Pool: "vg--0-pool-tpool", MetaPath: "/dev/mapper/vg--0-pool_tmeta"}, nil},
		{"thick LV", "-wi-a-----", base, ThinDev{}, ErrUnsupported},
		{"external origin", "Vwi-a-tz--", with("dmsetup table vg--0-snap--a", "0 131072 thin 253:4 7 253:9"), ThinDev{}, ErrUnsupported},
		{"pool name is another device", "Vwi-a-tz--", with("dmsetup info -c --noheadings -o major,minor --separator : vg--0-pool-tpool", "253:5"), ThinDev{}, ErrUnsupported},
		{"pool without a tpool layer", "Vwi-a-tz--", with("dmsetup info -c --noheadings -o major,minor --separator : vg--0-pool-tpool", ""), ThinDev{}, ErrUnsupported},
		{"metadata name is another device", "Vwi-a-tz--", with("dmsetup info -c --noheadings -o major,minor --separator : vg--0-pool_tmeta", "253:6"), ThinDev{}, ErrUnsupported},
		{"LV not active", "Vwi---tz--", with("dmsetup table vg--0-snap--a", ""), ThinDev{}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeTools{tools: tc.tools}
			f.answer = thinLVReport(tc.attr, "pool")
			got, err := New(f, nil).ThinDevice(context.Background(), "vg-0", "snap-a")
			if tc.name == "LV not active" {
				var le *LVMError
				if !errors.As(err, &le) || le.Tool != "dmsetup" || !strings.Contains(err.Error(), "dmsetup table: exit status 1: Device does not exist.") {
					t.Fatalf("err = %v, want dmsetup's own error", err)
				}
				return
			}
			if !errors.Is(err, tc.err) || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v, %v", got, err, tc.want, tc.err)
			}
		})
	}
	// A runner that cannot run the dm tools has no thin maps.
	r := &fakeRunner{answer: thinLVReport("Vwi-a-tz--", "pool")}
	if _, err := New(r, nil).ThinDevice(context.Background(), "vg-0", "snap-a"); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("plain runner: %v, want ErrUnsupported", err)
	}
}

func TestMetadataSnapAndThinMap(t *testing.T) {
	const pool = "vg-pool-tpool"
	free := "0 524288 thin-pool 1 11/1024 10/4096 - rw discard_passdown queue_if_no_space - 1024"
	held := "0 524288 thin-pool 1 11/1024 10/4096 27 rw discard_passdown queue_if_no_space - 1024"
	f := &fakeTools{tools: map[string]string{
		"dmsetup status " + pool:                                   free,
		"dmsetup message " + pool + " 0 reserve_metadata_snap":     "",
		"dmsetup message " + pool + " 0 release_metadata_snap":     "",
		"thin_dump -f xml -m --dev-id 7 /dev/mapper/vg-pool_tmeta": dump(`<device dev_id="7"><range_mapping origin_begin="16" data_begin="0" length="16" time="0"/></device>`),
	}}
	c := New(f, nil)
	ctx := context.Background()
	if err := c.ReserveMetadataSnap(ctx, pool); err != nil {
		t.Fatal(err)
	}
	d := ThinDev{DevID: 7, Pool: pool, MetaPath: "/dev/mapper/vg-pool_tmeta"}
	got, err := c.ThinMap(ctx, d, 64*mib, mib)
	if err != nil || !reflect.DeepEqual(got, []Range{{mib, mib}}) {
		t.Fatalf("ThinMap = %v, %v", got, err)
	}
	if err := c.ReleaseMetadataSnap(ctx, pool); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"dmsetup status " + pool,
		"dmsetup message " + pool + " 0 reserve_metadata_snap",
		"thin_dump -f xml -m --dev-id 7 /dev/mapper/vg-pool_tmeta",
		"dmsetup message " + pool + " 0 release_metadata_snap",
	}
	if !reflect.DeepEqual(f.calls, want) {
		t.Fatalf("calls:\n%s\nwant:\n%s", strings.Join(f.calls, "\n"), strings.Join(want, "\n"))
	}

	// A held snapshot (another tool's, or a crashed agent's) is refused
	// before any message is sent.
	f.tools["dmsetup status "+pool] = held
	f.calls = nil
	if err := c.ReserveMetadataSnap(ctx, pool); !errors.Is(err, ErrMetadataSnapHeld) {
		t.Fatalf("reserve with a held snapshot: %v", err)
	}
	if len(f.calls) != 1 {
		t.Fatalf("calls %v: want only the status", f.calls)
	}

	// thin_dump failing (no metadata snapshot held, say) is its error, with
	// its stderr; a dump without the device is ErrNotFound, not "no data".
	d.DevID = 8
	if _, err := c.ThinMap(ctx, d, 64*mib, mib); err == nil || !strings.Contains(err.Error(), "thin_dump -f: exit status 1") {
		t.Fatalf("failing thin_dump: %v", err)
	}
	f.tools["thin_dump -f xml -m --dev-id 8 /dev/mapper/vg-pool_tmeta"] = dump()
	if _, err := c.ThinMap(ctx, d, 64*mib, mib); !errors.Is(err, ErrNotFound) {
		t.Fatalf("dump without the device: %v", err)
	}
}

// TestThinMapStopsTool: a parse error mid-stream ends the tool instead of
// leaving it blocked on a full pipe.
func TestThinMapStopsTool(t *testing.T) {
	testutil.RequireCmd(t, "sh")
	c := New(&shToolRunner{}, nil)
	// 'thin_dump' here prints a broken document, then output without end.
	start := time.Now()
	_, err := c.ThinMap(context.Background(), ThinDev{DevID: 1, MetaPath: "x"}, mib, mib)
	if err == nil || !strings.Contains(err.Error(), "thin_dump: XML syntax error") {
		t.Fatalf("err = %v, want the parse error", err)
	}
	// Not a speed goal: without the cancel ThinMap would never return, and
	// a SIGKILL after WaitDelay (30 s) would mean SIGINT went unheeded.
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("ThinMap took %v to stop the tool", d)
	}
}

// shToolRunner runs a shell script standing in for thin_dump through the
// real runCommand, so cancellation is the production code's.
type shToolRunner struct{ fakeRunner }

func (shToolRunner) RunTool(ctx context.Context, stdout io.Writer, tool string, args ...string) error {
	script := `printf '<superblock data_block_size="128"><device dev_id="1"><bad'; exec yes '<x/>'`
	return runCommand(ctx, tool, "sh", []string{"-c", script}, stdout)
}
