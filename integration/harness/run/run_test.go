package run

import (
	"fmt"
	"strings"
	"testing"
)

// outcomeTB records how Binary ends a test instead of ending it.
type outcomeTB struct {
	testing.TB
	skipped, failed string
}

func (o *outcomeTB) Helper()                        {}
func (o *outcomeTB) Skipf(format string, a ...any)  { o.skipped = fmt.Sprintf(format, a...) }
func (o *outcomeTB) Fatalf(format string, a ...any) { o.failed = fmt.Sprintf(format, a...) }

// A server that is not built skips a test run by hand, naming the command that builds it, and
// fails it under scripts/test.sh.
func TestMissingServerSkipsByHandAndFailsInTheSuite(t *testing.T) {
	t.Setenv("KMS_PLUGIN_SERVERS_DIR", t.TempDir())

	t.Setenv(RequireServersEnv, "")
	byHand := &outcomeTB{TB: t}
	Binary(byHand, "etcd")
	if byHand.failed != "" || byHand.skipped == "" || !strings.Contains(byHand.skipped, "bash integration/servers/build.sh etcd") {
		t.Errorf("by hand: skipped %q, failed %q", byHand.skipped, byHand.failed)
	}

	t.Setenv(RequireServersEnv, "1")
	suite := &outcomeTB{TB: t}
	Binary(suite, "etcd")
	if suite.skipped != "" || suite.failed == "" {
		t.Errorf("under scripts/test.sh: skipped %q, failed %q", suite.skipped, suite.failed)
	}
}
