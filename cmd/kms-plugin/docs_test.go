package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/kmsplugin/kms-plugin/internal/testing/clitest"
)

// Every flag on a kms-plugin command line in the operator docs exists on the subcommand it is
// given to, and every deploy/ file they name exists.
func TestOperatorDocsMatchCLI(t *testing.T) {
	clitest.DocCommandLines(t, "../..", docPaths(), "kms-plugin", newRootCommand)
}

func docPaths() []string {
	var paths []string
	for _, d := range clitest.OperatorDocs {
		paths = append(paths, "docs/"+d)
	}
	return append(paths, "README.md")
}

// README.md's command table names every subcommand, each with a doc that exists, and its
// documentation list names every file in docs/.
func TestREADMECoversCommandsAndDocs(t *testing.T) {
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	clitest.CommandTable(t, "../..", newRootCommand)
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

// Every relative link in README.md and docs/*.md leads to a file that exists, and every
// #anchor to a heading of its file (GitHub's anchors): a renamed heading breaks its links.
func TestDocLinks(t *testing.T) {
	docs, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	paths := []string{"README.md"}
	for _, d := range docs {
		paths = append(paths, "docs/"+filepath.Base(d))
	}
	clitest.Links(t, "../..", paths)
}

// Every serve flag has a row in a flag table: the vault backend's in docs/vault.md's, every
// other one in the README's. A new flag without a row fails here.
func TestFlagTablesCoverServeFlags(t *testing.T) {
	rows := func(doc string) map[string]bool {
		raw, err := os.ReadFile("../../" + doc)
		if err != nil {
			t.Fatal(err)
		}
		flags := map[string]bool{}
		for _, line := range strings.Split(string(raw), "\n") {
			if !strings.HasPrefix(line, "| `--") {
				continue
			}
			first := strings.Split(line, "|")[1] // "`--socket-mode`, `--socket-group`"
			for _, m := range regexp.MustCompile("`--([a-z0-9-]+)`").FindAllStringSubmatch(first, -1) {
				flags[m[1]] = true
			}
		}
		if len(flags) == 0 {
			t.Fatalf("%s has no flag table", doc)
		}
		return flags
	}
	tables := map[string]map[string]bool{"README.md": rows("README.md"), "docs/vault.md": rows("docs/vault.md")}
	newRootCommand().Flags().VisitAll(func(f *pflag.Flag) {
		if f.Name == "help" || f.Name == "version" {
			return
		}
		doc := "README.md"
		if strings.HasPrefix(f.Name, "vault-") {
			doc = "docs/vault.md"
		}
		if !tables[doc][f.Name] {
			t.Errorf("%s's flag table has no row for --%s", doc, f.Name)
		}
	})
}
