package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kmsplugin/kms-plugin/internal/testing/clitest"
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

// One Vault policy name everywhere: every `vault policy write NAME` in the docs, the README,
// `kmsctl policy --help` and the policy's own header names the policy that every role and
// token in them attaches (token_policies=, policies=, -policy=). A policy written under one
// name and attached under another leaves the plugin's token without it: doctor then fails on a
// fresh Vault.
func TestVaultPolicyNameIsOneName(t *testing.T) {
	sources := map[string]string{}
	paths, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range append(paths, "../../README.md") {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		sources[strings.TrimPrefix(p, "../../")] = string(raw)
	}
	sources["kmsctl policy --help"] = runKmsctl(t, "policy", "--help")
	sources["kmsctl policy"] = runKmsctl(t, "policy", "--vault-transit-key", "kubernetes")

	written := regexp.MustCompile(`vault policy write(?:\s+-[a-z-]+=\S+)*\s+([A-Za-z0-9_.-]+)`)
	attached := regexp.MustCompile(`(?:token_policies|policies|-policy)=["']?([A-Za-z0-9_.,-]+)`)
	names := map[string][]string{} // name -> where
	var writes, attaches int
	for where, text := range sources {
		for _, m := range written.FindAllStringSubmatch(text, -1) {
			names[m[1]] = append(names[m[1]], where+": "+m[0])
			writes++
		}
		for _, m := range attached.FindAllStringSubmatch(text, -1) {
			for _, n := range strings.Split(m[1], ",") {
				if n != "default" && n != "" { // Vault's own default policy
					names[n] = append(names[n], where+": "+m[0])
					attaches++
				}
			}
		}
	}
	if writes < 3 || attaches < 3 {
		t.Fatalf("found %d policy writes and %d attachments: the patterns no longer match the docs", writes, attaches)
	}
	if len(names) != 1 {
		t.Errorf("the Vault policy goes by %d names, want one:", len(names))
		for n, where := range names {
			t.Errorf("  %s: %s", n, strings.Join(where, "; "))
		}
	}
	if _, ok := names["kms-plugin"]; !ok {
		t.Errorf("the policy is not called kms-plugin anywhere: %v", names)
	}
}
