package lvm

import (
	"testing"
	"time"
)

const lvJSON = `  {
      "report": [
          {
              "lv": [
                  {"lv_name":"pool", "vg_name":"vg0", "lv_size":"104857600", "lv_attr":"twi-aotz--", "pool_lv":"", "origin":"", "origin_size":"", "data_percent":"1.56", "lv_tags":"", "lv_path":"", "segtype":"thin-pool", "lv_time":"2026-11-24 04:06:00 +0000"},
                  {"lv_name":"vol_1", "vg_name":"vg0", "lv_size":"1073741824", "lv_attr":"Vwi-a-tz--", "pool_lv":"pool", "origin":"", "origin_size":"", "data_percent":"0.00", "lv_tags":"forknode,forknode-id:vol_1", "lv_path":"/dev/vg0/vol_1", "segtype":"thin", "lv_time":"2026-11-24 04:06:01 +0000"},
                  {"lv_name":"snap", "vg_name":"vg0", "lv_size":"8388608", "lv_attr":"swi-I-s---", "pool_lv":"", "origin":"thick", "origin_size":"268435456", "data_percent":"100.00", "lv_tags":"forknode", "lv_path":"/dev/vg0/snap", "segtype":"linear", "lv_time":""}
              ]
          }
      ]
  }
`

func TestParseLVReport(t *testing.T) {
	lvs, err := ParseLVReport([]byte(lvJSON))
	if err != nil {
		t.Fatal(err)
	}
	if len(lvs) != 3 {
		t.Fatalf("got %d LVs", len(lvs))
	}
	pool, thin, snap := lvs[0], lvs[1], lvs[2]
	if !pool.IsThinPool() || !pool.ZeroesNewBlocks() || pool.IsThin() || pool.Size != 100<<20 || pool.DataPct != 1.56 || !pool.HasDataPct {
		t.Errorf("pool: %+v", pool)
	}
	if !pool.Created.Equal(time.Date(2026, 11, 24, 4, 6, 0, 0, time.UTC)) {
		t.Errorf("pool created %v", pool.Created)
	}
	if pool.DevicePath() != "/dev/vg0/pool" {
		t.Errorf("pool path fallback %q", pool.DevicePath())
	}
	if !thin.IsThin() || thin.Pool != "pool" || !thin.HasTag("forknode-id:vol_1") || !thin.Active() || thin.Size != 1<<30 {
		t.Errorf("thin: %+v", thin)
	}
	if !snap.IsClassicSnapshot() || !snap.Invalid() || snap.Origin != "thick" || snap.OriginSize != 256<<20 || !snap.Created.IsZero() {
		t.Errorf("snap: %+v", snap)
	}
}

func TestParseVGReport(t *testing.T) {
	vgs, err := ParseVGReport([]byte(`{"report":[{"vg":[{"vg_name":"vg0","vg_size":"532676608","vg_free":"264241152","vg_extent_size":"4194304"}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	want := VG{Name: "vg0", Size: 532676608, Free: 264241152, ExtentSize: 4 << 20}
	if len(vgs) != 1 || vgs[0] != want {
		t.Errorf("got %+v, want %+v", vgs, want)
	}
}

func TestParseReportErrors(t *testing.T) {
	bad := []string{
		`not json`,
		`{"report":[{"vg":[{"vg_name":"a","vg_size":"12.5"}]}]}`,
	}
	for _, b := range bad {
		if _, err := ParseVGReport([]byte(b)); err == nil {
			t.Errorf("ParseVGReport(%q) accepted", b)
		}
	}
	if _, err := ParseLVReport([]byte(`{"report":[{"lv":[{"lv_name":"a","data_percent":"x"}]}]}`)); err == nil {
		t.Error("bad data_percent accepted")
	}
}
