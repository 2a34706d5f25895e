package cow

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"db", true},
		{"a", true},
		{"0pg-main_1.x", true},
		{strings.Repeat("a", 63), true},
		{"", false},
		{strings.Repeat("a", 64), false},
		{"Upper", false},
		{"-lead", false},
		{"_lead", false},
		{".lead", false},
		{"sp ace", false},
		{"sl/ash", false},
		{"ünï", false},
	} {
		err := ValidateName(tc.name)
		if tc.ok && err != nil {
			t.Errorf("%q: unexpected error %v", tc.name, err)
		}
		if !tc.ok && !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: want ErrInvalid, got %v", tc.name, err)
		}
	}
}

func TestValidateSize(t *testing.T) {
	for _, tc := range []struct {
		size int64
		ok   bool
		msg  string
	}{
		{4096, true, ""},
		{1 << 30, true, ""},
		{MaxSize, true, ""},
		{0, false, "positive"},
		{-4096, false, "positive"},
		{4097, false, "multiple"},
		{MaxSize + 4096, false, "maximum"},
	} {
		err := ValidateSize(tc.size)
		if tc.ok != (err == nil) {
			t.Errorf("%d: got %v", tc.size, err)
		}
		if !tc.ok && (!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.msg)) {
			t.Errorf("%d: want ErrInvalid mentioning %q, got %v", tc.size, tc.msg, err)
		}
	}
}

func TestValidateID(t *testing.T) {
	for _, id := range []string{"vol_1", "snap_vol_AbC", "x"} {
		if err := ValidateID(id); err != nil {
			t.Errorf("%q: %v", id, err)
		}
	}
	for _, id := range []string{"", "../x", "a/b", ".x", strings.Repeat("a", 129), "a b"} {
		if err := ValidateID(id); !errors.Is(err, ErrInvalid) {
			t.Errorf("%q: want ErrInvalid, got %v", id, err)
		}
	}
}
