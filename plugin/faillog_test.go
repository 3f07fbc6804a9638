package plugin

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// A client retrying a bad request in a loop gets one log line per window, with the repeats
// counted on the next one, and a huge key id is cut.
func TestFailureLogIsBoundedAndRateLimited(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(1_800_000_000, 0)
	l := newFailureLog(slog.New(slog.NewTextHandler(&buf, nil)), func() time.Time { return now })
	huge := strings.Repeat("k", 64<<10)
	for i := 0; i < 1000; i++ {
		l.failed("Decrypt", "uid", huge, "InvalidArgument", "malformed ciphertext: empty")
	}
	l.failed("Decrypt", "uid", "other", "InvalidArgument", "malformed ciphertext: empty")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines for 1000 identical failures and 1 other, want 2:\n%.500s", len(lines), buf.String())
	}
	if len(lines[0]) > 1024 {
		t.Fatalf("a line of %d bytes: request fields are not bounded", len(lines[0]))
	}
	now = now.Add(repeatWindow)
	buf.Reset()
	l.failed("Decrypt", "uid", huge, "InvalidArgument", "malformed ciphertext: empty")
	if !strings.Contains(buf.String(), "repeated_before=999") {
		t.Fatalf("after the window: %q, want the 999 repeats counted", buf.String())
	}
}

// Distinct failures beyond the bound are counted, not remembered: the map stays bounded.
func TestFailureLogStaysBounded(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(1_800_000_000, 0)
	l := newFailureLog(slog.New(slog.NewTextHandler(&buf, nil)), func() time.Time { return now })
	for i := 0; i < 3*maxFailureKeys; i++ {
		l.failed("Decrypt", "uid", fmt.Sprint("key-", i), "InvalidArgument", "malformed ciphertext: empty")
	}
	if n := len(l.seen); n > maxFailureKeys {
		t.Fatalf("%d failures remembered, bound %d", n, maxFailureKeys)
	}
	now = now.Add(repeatWindow)
	buf.Reset()
	l.failed("Decrypt", "uid", "next", "InvalidArgument", "malformed ciphertext: empty")
	if !strings.Contains(buf.String(), fmt.Sprintf("other_failures_not_logged=%d", 2*maxFailureKeys)) {
		t.Fatalf("the next line: %q", buf.String())
	}
}
