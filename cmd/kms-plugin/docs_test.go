package main

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// operatorDocs are the runbooks whose kms-plugin command lines must stay true to the CLI.
var operatorDocs = []string{"guide.md", "rotation.md", "migration.md", "troubleshooting.md"}

var (
	flagRE    = regexp.MustCompile(`(?:^|\s)(--[a-z][a-z0-9-]*)`)
	deployRef = regexp.MustCompile(`deploy/static-pod/[A-Za-z0-9.-]+\.yaml`)
)

// Every flag on a kms-plugin command line in the operator docs exists on the subcommand it is
// given to, and every deploy/ file they name exists.
func TestOperatorDocsMatchCLI(t *testing.T) {
	for _, name := range operatorDocs {
		raw, err := os.ReadFile("../../docs/" + name)
		if err != nil {
			t.Fatal(err)
		}
		text := strings.ReplaceAll(string(raw), "\\\n", " ") // join continued shell lines
		for _, ref := range deployRef.FindAllString(text, -1) {
			if _, err := os.Stat("../../" + ref); err != nil {
				t.Errorf("%s names %s: %v", name, ref, err)
			}
		}
		for _, line := range strings.Split(text, "\n") {
			_, after, ok := strings.Cut(line, "kms-plugin ")
			if !ok {
				continue
			}
			fields := strings.Fields(after)
			if len(fields) == 0 {
				continue
			}
			root := newRootCommand()
			cmd, _, err := root.Find(fields[:1])
			if err != nil || cmd == root {
				cmd = root // `kms-plugin --version`, or the serve flags on the root
			}
			for _, m := range flagRE.FindAllStringSubmatch(after, -1) {
				flag := strings.TrimPrefix(m[1], "--")
				if flag == "help" || flag == "version" {
					continue
				}
				if cmd.Flags().Lookup(flag) == nil && !isKubectlFlag(line, flag) {
					t.Errorf("%s: %q: %s has no --%s", name, strings.TrimSpace(line), cmd.Name(), flag)
				}
			}
		}
	}
}

// isKubectlFlag tells flags of other commands on the same line apart (`kubectl get --raw`).
func isKubectlFlag(line, flag string) bool {
	i := strings.Index(line, "--"+flag)
	j := strings.Index(line, "kms-plugin ")
	return i >= 0 && j >= 0 && i < j
}

// README.md's command table names every subcommand, each with a doc that exists, and its
// documentation list names every file in docs/.
func TestREADMECoversCommandsAndDocs(t *testing.T) {
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	row := regexp.MustCompile("(?m)^\\| `([a-z]+)`[^|]*\\|[^|]+\\| `(docs/[a-z]+\\.md)`")
	listed := map[string]bool{}
	for _, m := range row.FindAllStringSubmatch(readme, -1) {
		listed[m[1]] = true
		if _, err := os.Stat("../../" + m[2]); err != nil {
			t.Errorf("README: %s points to %s: %v", m[1], m[2], err)
		}
	}
	for _, c := range newRootCommand().Commands() {
		if c.Hidden || c.Name() == "completion" || c.Name() == "help" {
			continue
		}
		if !listed[c.Name()] {
			t.Errorf("README's command table has no row for %s", c.Name())
		}
	}
	docs, err := os.ReadDir("../../docs")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range docs {
		if !strings.Contains(readme, "`docs/"+d.Name()+"`") {
			t.Errorf("README does not name docs/%s", d.Name())
		}
	}
}
