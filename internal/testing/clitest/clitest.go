// Package clitest checks that the operator docs stay true to a command's CLI. Both binaries,
// kms-plugin and kmsctl, run the same checks on the lines that name them.
package clitest

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// OperatorDocs are the runbooks whose command lines must stay true to the CLI.
var OperatorDocs = []string{"guide.md", "rotation.md", "migration.md", "troubleshooting.md"}

var (
	flagRE    = regexp.MustCompile(`(?:^|\s)(--[a-z][a-z0-9-]*)`)
	bareWord  = regexp.MustCompile(`^[a-z][a-z-]*$`)
	deployRef = regexp.MustCompile(`deploy/static-pod/[A-Za-z0-9.-]+\.yaml`)
)

// DocCommandLines checks, in each of docs (paths from root, the module's root), that every
// flag on a line that runs binary exists on the subcommand it is given to, and that every
// deploy/ file named exists.
func DocCommandLines(t *testing.T, root string, docs []string, binary string, newRoot func() *cobra.Command) {
	t.Helper()
	for _, name := range docs {
		raw, err := os.ReadFile(filepath.Join(root, name))
		if err != nil {
			t.Fatal(err)
		}
		text := strings.ReplaceAll(string(raw), "\\\n", " ") // join continued shell lines
		for _, ref := range deployRef.FindAllString(text, -1) {
			if _, err := os.Stat(filepath.Join(root, ref)); err != nil {
				t.Errorf("%s names %s: %v", name, ref, err)
			}
		}
		inCode := false
		for _, line := range strings.Split(text, "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "```") {
				inCode = !inCode
			}
			_, after, ok := strings.Cut(line, binary+" ")
			if !ok {
				continue
			}
			fields := strings.Fields(after)
			if len(fields) == 0 {
				continue
			}
			word := strings.Trim(fields[0], "`")
			rootCmd := newRoot()
			cmd, _, err := rootCmd.Find([]string{word})
			if err != nil || cmd == rootCmd {
				cmd = rootCmd // `kms-plugin --version`, or the serve flags on the root
				// A word where a subcommand goes, on a line that runs binary, is a command it lacks
				// (`kms-plugin keygen` after keygen moved to kmsctl).
				if runsBinary(line, binary, inCode) && bareWord.MatchString(word) {
					t.Errorf("%s: %q: %s has no subcommand %q", name, strings.TrimSpace(line), binary, word)
				}
			}
			for _, m := range flagRE.FindAllStringSubmatch(after, -1) {
				flag := strings.TrimPrefix(m[1], "--")
				if flag == "help" || flag == "version" {
					continue
				}
				if cmd.Flags().Lookup(flag) == nil && !beforeBinary(line, flag, binary) {
					t.Errorf("%s: %q: %s %s has no --%s", name, strings.TrimSpace(line), binary, cmd.Name(), flag)
				}
			}
		}
	}
}

// runsBinary tells a line that runs binary (in a code block, at its start or after a prompt,
// sudo or a pipe; or in inline code) from prose that names it.
func runsBinary(line, binary string, inCode bool) bool {
	if strings.Contains(line, "`"+binary+" ") {
		return true
	}
	return inCode && regexp.MustCompile(`(?:^|\$ |sudo |\| )\S*`+regexp.QuoteMeta(binary)+` `).MatchString(strings.TrimSpace(line))
}

// beforeBinary tells a flag of another program on the same line (kubectl ... | kmsctl ...).
func beforeBinary(line, flag, binary string) bool {
	i := strings.Index(line, "--"+flag)
	j := strings.Index(line, binary+" ")
	return i >= 0 && j >= 0 && i < j
}

// CommandTable checks that the README's command table (rows "| `name` | purpose | `docs/x.md` |")
// has a row for every subcommand of newRoot, each pointing to a doc that exists.
func CommandTable(t *testing.T, root string, newRoot func() *cobra.Command) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `([a-z-]+)`[^|]*\\|[^|]+\\| `(docs/[a-z-]+\\.md)`")
	listed := map[string]bool{}
	for _, m := range row.FindAllStringSubmatch(string(raw), -1) {
		listed[m[1]] = true
		if _, err := os.Stat(filepath.Join(root, m[2])); err != nil {
			t.Errorf("README: %s points to %s: %v", m[1], m[2], err)
		}
	}
	for _, c := range newRoot().Commands() {
		if c.Hidden || c.Name() == "completion" || c.Name() == "help" {
			continue
		}
		if !listed[c.Name()] {
			t.Errorf("README's command table has no row for %s", c.Name())
		}
	}
}
