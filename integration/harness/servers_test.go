package harness

import (
	"os"
	"regexp"
	"testing"
)

// kubelet runs the same Kubernetes as kube-apiserver, and the runc shim the same containerd as
// containerd: the server modules in integration/servers must pin one version of each.
func TestServerModulesAgree(t *testing.T) {
	for _, c := range []struct{ module, a, b string }{
		{"k8s.io/kubernetes", "kube-apiserver", "kubelet"},
		{"github.com/containerd/containerd/v2", "containerd", "containerd-shim-runc-v2"},
	} {
		re := regexp.MustCompile(`(?m)^\s*(?:require\s+)?` + regexp.QuoteMeta(c.module) + `\s+(v\S+)`)
		version := func(server string) string {
			raw, err := os.ReadFile("../servers/" + server + "/go.mod")
			if err != nil {
				t.Fatal(err)
			}
			m := re.FindSubmatch(raw)
			if m == nil {
				t.Fatalf("%s/go.mod does not require %s", server, c.module)
			}
			return string(m[1])
		}
		if va, vb := version(c.a), version(c.b); va != vb {
			t.Errorf("%s: %s pins %s, %s pins %s", c.module, c.a, va, c.b, vb)
		}
	}
}
