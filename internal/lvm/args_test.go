package lvm

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestArgsGolden(t *testing.T) {
	tags := []string{"forknode", "forknode-id:vol_1"}
	rep := "--reportformat json --units b --nosuffix"
	tests := []struct {
		op   string
		args func() ([]string, error)
		want string
	}{
		{"vg report", func() ([]string, error) { return VGReportArgs("vg0") },
			"vgs " + rep + " -o vg_name,vg_size,vg_free,vg_extent_size vg0"},
		{"lv report all", func() ([]string, error) { return LVReportArgs("vg0", "") },
			"lvs " + rep + " -o " + lvFields + " vg0"},
		{"lv report one", func() ([]string, error) { return LVReportArgs("vg0", "vol_1") },
			"lvs " + rep + " -o " + lvFields + " vg0/vol_1"},
		{"create linear", func() ([]string, error) { return CreateLinearArgs("vg0", "vol_1", 1<<30, tags) },
			"lvcreate -y -W y -Z y -L 1073741824b -n vol_1 --addtag forknode --addtag forknode-id:vol_1 vg0"},
		{"create snapshot", func() ([]string, error) { return CreateSnapshotArgs("vg0", "vol_1", "snap_1", 64<<20, tags) },
			"lvcreate -y -s -L 67108864b -n snap_1 --addtag forknode --addtag forknode-id:vol_1 vg0/vol_1"},
		{"create thin", func() ([]string, error) { return CreateThinArgs("vg0", "pool", "vol_1", 1<<30, tags) },
			"lvcreate -y -V 1073741824b --thinpool pool -n vol_1 --addtag forknode --addtag forknode-id:vol_1 vg0"},
		{"create thin snapshot", func() ([]string, error) { return CreateThinSnapshotArgs("vg0", "vol_1", "vol_2", nil) },
			"lvcreate -y -s -kn -n vol_2 vg0/vol_1"},
		{"remove", func() ([]string, error) { return RemoveArgs("vg0", "vol_1") }, "lvremove -y vg0/vol_1"},
		{"activate", func() ([]string, error) { return ActivateArgs("vg0", "vol_1") }, "lvchange -ay -K vg0/vol_1"},
		{"deactivate", func() ([]string, error) { return DeactivateArgs("vg0", "vol_1") }, "lvchange -an vg0/vol_1"},
		{"delete tag", func() ([]string, error) { return DelTagArgs("vg0", "vol_1", "forknode-pending") },
			"lvchange --deltag forknode-pending vg0/vol_1"},
	}
	for _, tc := range tests {
		t.Run(tc.op, func(t *testing.T) {
			got, err := tc.args()
			if err != nil {
				t.Fatal(err)
			}
			if want := strings.Fields(tc.want); !reflect.DeepEqual(got, want) {
				t.Errorf("argv\n got  %q\n want %q", got, want)
			}
		})
	}
}

func TestArgsRefuseBadInput(t *testing.T) {
	tests := []struct {
		op   string
		args func() ([]string, error)
	}{
		{"empty vg", func() ([]string, error) { return VGReportArgs("") }},
		{"vg with slash", func() ([]string, error) { return LVReportArgs("vg/0", "") }},
		{"lv with space", func() ([]string, error) { return RemoveArgs("vg0", "a b") }},
		{"lv leading dash", func() ([]string, error) { return RemoveArgs("vg0", "-rf") }},
		{"lv reserved suffix", func() ([]string, error) { return RemoveArgs("vg0", "x_tdata") }},
		{"lv reserved prefix", func() ([]string, error) { return RemoveArgs("vg0", "snapshot1") }},
		{"lv too long", func() ([]string, error) { return RemoveArgs("vg0", strings.Repeat("a", 128)) }},
		{"zero size", func() ([]string, error) { return CreateLinearArgs("vg0", "a", 0, nil) }},
		{"unaligned size", func() ([]string, error) { return CreateThinArgs("vg0", "pool", "a", 1000, nil) }},
		{"negative cow", func() ([]string, error) { return CreateSnapshotArgs("vg0", "a", "b", -512, nil) }},
		{"bad tag", func() ([]string, error) { return CreateLinearArgs("vg0", "a", 4096, []string{"has space"}) }},
		{"bad thin pool", func() ([]string, error) { return CreateThinArgs("vg0", "", "a", 4096, nil) }},
	}
	for _, tc := range tests {
		t.Run(tc.op, func(t *testing.T) {
			got, err := tc.args()
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("got %q, %v; want ErrInvalid", got, err)
			}
		})
	}
}

func TestSnapshotSize(t *testing.T) {
	const ext = 4 << 20
	tests := []struct {
		name        string
		origin, ext int64
		ratio       float64
		min, want   int64
	}{
		{"ratio wins", 10 << 30, ext, 0.2, 64 << 20, 2048 << 20},
		{"minimum wins", 100 << 20, ext, 0.2, 64 << 20, 64 << 20},
		{"rounded to extents", 1000 << 20, ext, 0.01, 0, 12 << 20},
		{"capped at origin plus metadata", 100 << 20, ext, 5, 0, 108 << 20},
		{"at least one extent", 1 << 20, ext, 0.0001, 0, ext},
		{"defaults", 1 << 30, 0, 0, 0, 208 << 20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := SnapshotSize(tc.origin, tc.ext, tc.ratio, tc.min); got != tc.want {
				t.Errorf("SnapshotSize = %d MiB, want %d MiB", got>>20, tc.want>>20)
			}
		})
	}
}
