package lvm

import (
	"errors"
	"reflect"
	"testing"
)

func TestTagEscapeRoundTrip(t *testing.T) {
	tests := []struct{ in, want string }{
		{"vol_123", "vol_123"},
		{"a b", "a&20b"},
		{"x&y", "x&26y"},
		{"ünï", "&c3&bcn&c3&af"},
		{"a:b/c=d!e#f+g.h-i", "a:b/c=d!e#f+g.h-i"},
		{"", ""},
	}
	for _, tc := range tests {
		got := EscapeTagValue(tc.in)
		if got != tc.want {
			t.Errorf("Escape(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if err := checkTags([]string{"k:" + got}); err != nil {
			t.Errorf("escaped %q is not a valid tag: %v", got, err)
		}
		back, err := UnescapeTagValue(got)
		if err != nil || back != tc.in {
			t.Errorf("Unescape(%q) = %q, %v; want %q", got, back, err, tc.in)
		}
	}
	for _, bad := range []string{"a&", "a&2", "a&zz"} {
		if _, err := UnescapeTagValue(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("Unescape(%q): %v, want ErrInvalid", bad, err)
		}
	}
}

func TestTagsListParse(t *testing.T) {
	in := Tags{Owned: true, ID: "snap_1", Name: "my db", Fork: "fork_9", Origin: "vol_1", Kind: KindSnapshot, Pending: true}
	list, err := in.List()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"forknode", "forknode-id:snap_1", "forknode-name:my&20db", "forknode-fork:fork_9",
		"forknode-origin:vol_1", "forknode-kind:snapshot", "forknode-pending"}
	if !reflect.DeepEqual(list, want) {
		t.Fatalf("List = %q, want %q", list, want)
	}
	got := ParseTags(append(list, "operator-tag", "other:x"))
	if got != in {
		t.Errorf("ParseTags = %+v, want %+v", got, in)
	}
	if ParseTags([]string{"forknode-id:x"}).Owned {
		t.Error("an LV without the forknode tag must not count as owned")
	}
	long := Tags{Name: string(make([]byte, 600))} // escapes to 1800 bytes
	if _, err := long.List(); !errors.Is(err, ErrInvalid) {
		t.Errorf("over-long tag: %v, want ErrInvalid", err)
	}
}
