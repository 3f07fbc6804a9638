// Command kmsctl is the offline toolbox beside the kms-plugin daemon: it reads and writes the
// apiserver's storage formats (scan, decrypt, encrypt, compare) and checks a serve
// configuration (doctor). It carries client-go and the etcd client, which the serving binary
// must not; new operator tools land here too.
package main

import (
	"errors"
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

// checkFailure is a command that ran and whose result failed a check (scan --fail-on-stale,
// doctor): exit status 3, apart from 1 for a command that could not run.
type checkFailure struct{ msg string }

func (e checkFailure) Error() string { return e.msg }

func main() {
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "kmsctl:", err)
		var failed checkFailure
		if errors.As(err, &failed) {
			os.Exit(3)
		}
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "kmsctl",
		Short:         "Offline tools for kms-plugin: read etcd's encrypted values, compare providers, check a serve configuration",
		Version:       buildinfo.String(version, commit),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newKeygenCommand(), newPolicyCommand(), newDoctorCommand(),
		newScanCommand(), newRewriteCommand(), newRolloutStatusCommand(), newDecryptCommand(), newEncryptCommand(), newRecoveryKeyCommand(), newCompareCommand(), newLoadCommand())
	return root
}
