package buildinfo

import (
	"runtime"
	"testing"
)

func TestString(t *testing.T) {
	want := "v1.2.3 (commit 0123abc, " + runtime.Version() + ")"
	if got := String("v1.2.3", "0123abc"); got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
}
