package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsplugin/kms-plugin/internal/clitest"
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
