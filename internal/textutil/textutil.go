// Package textutil shortens text that leaves the process (Status's healthz, /readyz, log
// fields) without ever producing invalid UTF-8.
package textutil

import (
	"strings"
	"unicode/utf8"
)

// Truncate shortens s to at most n bytes of valid UTF-8, ending in "..." when cut: healthz is
// a proto3 string, and an invalid one makes Status fail to marshal.
func Truncate(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	cut := max(n-3, 0)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}
