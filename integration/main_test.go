// Package integration runs the plugin end to end: a real kube-apiserver on a real etcd stores
// Secrets and ConfigMaps through kms-plugin processes, and the tests read what landed in etcd.
// The scenarios (scenarios_test.go) take the KEK backend as a parameter; e2e_<backend>_test.go
// run them with each backend.
package integration

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"testing"

	"github.com/kmsplugin/kms-plugin/integration/harness"
)

func TestMain(m *testing.M) {
	flag.Parse()
	// The scenarios spend their time waiting on the apiserver's real timers (a 60 s Status
	// poll, a 60 s config reload), not on CPU: run them all at once unless -parallel says
	// otherwise, instead of go test's default of one per core.
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.parallel" })
	if !explicit {
		_ = flag.Set("test.parallel", strconv.Itoa(max(16, runtime.GOMAXPROCS(0))))
	}
	// Built here, before m.Run starts the -timeout clock, so no test's time includes it.
	if _, err := harness.BuildPlugin(); err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}
