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
)

// version is set at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

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
	root.Version = version
	root.SilenceUsage = true
	root.SilenceErrors = true
	serve := newServeCommand()
	serve.Hidden = false
	root.AddCommand(serve)
	return root
}
