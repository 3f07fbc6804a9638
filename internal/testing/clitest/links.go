package clitest

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

var (
	// linkRE is an inline link or image, [text](target); its text may span lines.
	linkRE    = regexp.MustCompile(`\]\(([^()\s]*)\)`)
	headingRE = regexp.MustCompile(`^#{1,6}\s+(.*?)\s*#*\s*$`)
	// A link inside a heading counts by its text; an HTML tag counts for nothing.
	headingLinkRE = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`)
	htmlTagRE     = regexp.MustCompile(`<[^>]+>`)
)

// Links checks that every relative link in the Markdown files docs (paths from root, the
// module's root) leads to a file that exists and, with a #fragment into a Markdown file, to a
// heading of that file, by GitHub's anchors (see Slug). Links to other sites are not followed.
func Links(t *testing.T, root string, docs []string) {
	t.Helper()
	anchors := map[string]map[string]bool{} // file (from root) -> its anchors
	anchorsOf := func(name string) map[string]bool {
		if a, ok := anchors[name]; ok {
			return a
		}
		raw, err := os.ReadFile(filepath.Join(root, name))
		if err != nil {
			t.Fatal(err)
		}
		a := Anchors(string(raw))
		anchors[name] = a
		return a
	}
	for _, name := range docs {
		raw, err := os.ReadFile(filepath.Join(root, name))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range linkRE.FindAllStringSubmatchIndex(outsideCode(string(raw)), -1) {
			target := string(raw[m[2]:m[3]])
			line := 1 + strings.Count(string(raw[:m[0]]), "\n")
			if target == "" || strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			path, fragment, _ := strings.Cut(target, "#")
			file := name
			if path != "" {
				file = filepath.ToSlash(filepath.Join(filepath.Dir(name), path))
				if _, err := os.Stat(filepath.Join(root, file)); err != nil {
					t.Errorf("%s:%d: link to %s: %v", name, line, target, err)
					continue
				}
			}
			if fragment != "" && strings.HasSuffix(file, ".md") && !anchorsOf(file)[fragment] {
				t.Errorf("%s:%d: link to %s: %s has no heading with anchor #%s", name, line, target, file, fragment)
			}
		}
	}
}

// outsideCode is text with its fenced code blocks and inline code spans blanked (same
// length, newlines kept), so that offsets into it are offsets into text.
func outsideCode(text string) string {
	b := []byte(text)
	inFence := false
	start := 0
	for start < len(b) {
		end := start + strings.IndexByte(text[start:], '\n')
		if end < start {
			end = len(b)
		}
		line := text[start:end]
		fence := strings.HasPrefix(strings.TrimSpace(line), "```")
		if inFence || fence {
			blank(b[start:end])
		} else {
			for {
				i := strings.IndexByte(string(b[start:end]), '`')
				if i < 0 {
					break
				}
				j := strings.IndexByte(string(b[start+i+1:end]), '`')
				if j < 0 {
					break
				}
				blank(b[start+i : start+i+j+2])
			}
		}
		if fence {
			inFence = !inFence
		}
		start = end + 1
	}
	return string(b)
}

func blank(b []byte) {
	for i := range b {
		if b[i] != '\n' {
			b[i] = ' '
		}
	}
}

// Anchors returns the anchors GitHub gives the headings of a Markdown text: each heading's
// Slug, and for a repeated slug "-1", "-2", ... in order.
func Anchors(text string) map[string]bool {
	out := map[string]bool{}
	seen := map[string]int{}
	inFence := false
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			inFence = !inFence
			continue
		}
		m := headingRE.FindStringSubmatch(line)
		if inFence || m == nil {
			continue
		}
		slug := Slug(m[1])
		if n := seen[slug]; n > 0 {
			out[slug+"-"+strconv.Itoa(n)] = true
		} else {
			out[slug] = true
		}
		seen[slug]++
	}
	return out
}

// Slug is GitHub's anchor for a heading: its text (a link counts by its text, markup and
// HTML tags by nothing) in lower case, without punctuation except '-' and '_', each space a '-'.
func Slug(heading string) string {
	heading = headingLinkRE.ReplaceAllString(heading, "$1")
	heading = htmlTagRE.ReplaceAllString(heading, "")
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}
