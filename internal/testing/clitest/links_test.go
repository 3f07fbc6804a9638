package clitest

import (
	"strings"
	"testing"
)

// GitHub's anchors, as github.com renders these headings.
func TestSlug(t *testing.T) {
	for heading, want := range map[string]string{
		"7. Verify with `kmsctl scan`":                   "7-verify-with-kmsctl-scan",
		"Preflight: `kmsctl policy` and `kmsctl doctor`": "preflight-kmsctl-policy-and-kmsctl-doctor",
		"From identity: turning encryption on":           "from-identity-turning-encryption-on",
		"Quick start (a dev Vault on your machine)":      "quick-start-a-dev-vault-on-your-machine",
		"From aescbc (or aesgcm, secretbox)":             "from-aescbc-or-aesgcm-secretbox",
		"A [linked](x.md) word and <code>tags</code>":    "a-linked-word-and-tags",
		"snake_case and hyphen-ated, 2.0/3":              "snake_case-and-hyphen-ated-203",
	} {
		if got := Slug(heading); got != want {
			t.Errorf("Slug(%q) = %q, want %q", heading, got, want)
		}
	}
}

func TestAnchors(t *testing.T) {
	a := Anchors("# Title\n## Tests\n```sh\n# not a heading\n```\n## Tests\n### Tests ###\n")
	for _, want := range []string{"title", "tests", "tests-1", "tests-2"} {
		if !a[want] {
			t.Errorf("no anchor %q in %v", want, a)
		}
	}
	if a["not-a-heading"] {
		t.Error("a comment in a code block made an anchor")
	}
}

func TestOutsideCode(t *testing.T) {
	in := "a [x](y.md) `[c](d.md)`\n```\n[e](f.md)\n```\n[g](h.md)"
	out := outsideCode(in)
	if len(out) != len(in) || !strings.Contains(out, "[x](y.md)") || !strings.Contains(out, "[g](h.md)") ||
		strings.Contains(out, "d.md") || strings.Contains(out, "f.md") {
		t.Fatalf("outsideCode(%q) = %q", in, out)
	}
}
