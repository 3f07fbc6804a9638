// Command kms-plugin is a Kubernetes KMS v2 plugin: it serves the KeyManagementService on a
// unix socket for kube-apiserver, wrapping data keys with a local AES key or Vault Transit.
// It holds what serving needs and no more: the operator's tools (keygen, policy, scan,
// doctor...), some of which need client-go and the etcd client, are cmd/kmsctl.
// This package only parses flags and wires the packages together.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/kmsplugin/kms-plugin/internal/buildinfo"
)

// version and commit are set at build time by scripts/build.sh:
// -ldflags "-X main.version=v1.2.3 -X main.commit=<git commit>".
var (
	version = "dev"
	commit  = "unknown"
)

func main() {
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "kms-plugin:", err)
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	root := newServeCommand()
	root.Use = "kms-plugin"
	root.Short = "Kubernetes KMS v2 plugin: envelope encryption with local AES or Vault Transit KEKs"
	root.Version = buildinfo.String(version, commit)
	root.SilenceUsage = true
	root.SilenceErrors = true
	serve := newServeCommand()
	serve.Hidden = false
	root.AddCommand(serve)
	return root
}
