// Command kms-plugin is a Kubernetes KMS v2 plugin: it serves the KeyManagementService on a
// unix socket for kube-apiserver, wrapping data keys with a local AES key or Vault Transit.
// This package only parses flags and wires the packages together.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// version is set at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "kms-plugin:", err)
		var failed checkFailed
		if errors.As(err, &failed) {
			os.Exit(3) // scan or doctor ran, and its result failed a check
		}
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
	root.AddCommand(serve, newKeygenCommand(), newScanCommand(),
		newDecryptCommand(), newEncryptCommand(), newCompareCommand(),
		newDoctorCommand(), newPolicyCommand())
	return root
}
