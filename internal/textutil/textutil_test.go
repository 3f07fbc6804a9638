package textutil

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestTruncate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"abcdefghijk", 10, "abcdefg..."},
		{strings.Repeat("é", 6), 10, "ééé..."}, // é is 2 bytes: a cut at byte 7 would split one
		{"bad\xffbyte", 64, "bad\uFFFDbyte"},
	} {
		got := Truncate(tc.in, tc.n)
		if got != tc.want || len(got) > max(tc.n, len(tc.want)) || !utf8.ValidString(got) {
			t.Errorf("Truncate(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}
