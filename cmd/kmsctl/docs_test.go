package main

import (
	"testing"

	"github.com/kmsplugin/kms-plugin/internal/clitest"
)

// Every flag on a kmsctl command line in the operator docs and the README exists on the
// subcommand it is given to, and every deploy/ file they name exists.
func TestOperatorDocsMatchCLI(t *testing.T) {
	var paths []string
	for _, d := range append(clitest.OperatorDocs, "localaes.md", "vault.md", "providers.md", "performance.md") {
		paths = append(paths, "docs/"+d)
	}
	clitest.DocCommandLines(t, "../..", append(paths, "README.md"), "kmsctl", newRootCommand)
}

// README.md's command table names every kmsctl command, each with a doc that exists.
func TestREADMECoversCommands(t *testing.T) {
	clitest.CommandTable(t, "../..", newRootCommand)
}
