package cluster

import "testing"

func TestScaleProgress(t *testing.T) {
	tests := []struct{ done, total, size, want int64 }{
		{0, 64 * MiB, 256 * MiB, 0},
		{16 * MiB, 64 * MiB, 256 * MiB, 64 * MiB},
		{64 * MiB, 64 * MiB, 256 * MiB, 256 * MiB},
		{0, 0, 256 * MiB, 256 * MiB}, // an empty source: nothing to copy
		{1 << 50, 1 << 50, 1 << 50, 1 << 50},
		{1<<50 - 1, 1 << 50, 1 << 50, 1<<50 - 1},
	}
	for _, tc := range tests {
		if got := scaleProgress(tc.done, tc.total, tc.size); got != tc.want {
			t.Errorf("scaleProgress(%d, %d, %d) = %d, want %d", tc.done, tc.total, tc.size, got, tc.want)
		}
	}
}
