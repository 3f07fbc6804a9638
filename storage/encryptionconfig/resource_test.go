package encryptionconfig_test

import (
	"testing"

	"github.com/kmsplugin/kms-plugin/storage/encryptionconfig"
)

const root = "/registry/"

func TestResourceOf(t *testing.T) {
	for key, want := range map[string]string{
		"/registry/secrets/kube-system/token":                                          "secrets",
		"/registry/configmaps/default/cm":                                              "configmaps",
		"/registry/namespaces/default":                                                 "namespaces",
		"/registry/deployments/default/web":                                            "deployments.apps",
		"/registry/clusterroles/admin":                                                 "clusterroles.rbac.authorization.k8s.io",
		"/registry/services/specs/default/kubernetes":                                  "services",
		"/registry/services/endpoints/default/kubernetes":                              "endpoints",
		"/registry/minions/node-1":                                                     "nodes",
		"/registry/controllers/default/rc":                                             "replicationcontrollers",
		"/registry/ingress/default/web":                                                "ingresses.networking.k8s.io",
		"/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com": "customresourcedefinitions.apiextensions.k8s.io",
		"/registry/apiregistration.k8s.io/apiservices/v1.apps":                         "apiservices.apiregistration.k8s.io",
		"/registry/example.com/widgets/default/w1":                                     "widgets.example.com",
		"/registry/masterleases/127.0.0.1":                                             "masterleases",
	} {
		if got := encryptionconfig.ResourceOf(root, key).String(); got != want {
			t.Errorf("ResourceOf(%s) = %s, want %s", key, got, want)
		}
	}
	if r := encryptionconfig.ResourceOf(root, "/registry/masterleases/x"); r.Known || r.Prefix != "/registry/masterleases/" {
		t.Errorf("masterleases: %+v, want an unknown resource at /registry/masterleases/", r)
	}
	if r := encryptionconfig.ResourceOf(root, "/registry/example.com/widgets/ns/w"); r.Prefix != "/registry/example.com/widgets/" {
		t.Errorf("custom resource prefix %s", r.Prefix)
	}
}

// PrefixOf is ResourceOf's inverse: the prefix it gives holds keys that ResourceOf places
// back in the same resource.
func TestPrefixOf(t *testing.T) {
	for gr, want := range map[string]string{
		"secrets":                                "/registry/secrets/",
		"deployments.apps":                       "/registry/deployments/",
		"services":                               "/registry/services/specs/",
		"endpoints":                              "/registry/services/endpoints/",
		"nodes":                                  "/registry/minions/",
		"ingresses.networking.k8s.io":            "/registry/ingress/",
		"clusterroles.rbac.authorization.k8s.io": "/registry/clusterroles/",
		"customresourcedefinitions.apiextensions.k8s.io": "/registry/apiextensions.k8s.io/customresourcedefinitions/",
		"widgets.example.com":                            "/registry/example.com/widgets/",
	} {
		got := encryptionconfig.PrefixOf(root, encryptionconfig.ParseGroupResource(gr))
		if got != want {
			t.Errorf("PrefixOf(%s) = %s, want %s", gr, got, want)
		}
		if back := encryptionconfig.ResourceOf(root, got+"ns/name"); back.String() != gr || back.Prefix != got {
			t.Errorf("ResourceOf(PrefixOf(%s)+ns/name) = %s at %s", gr, back, back.Prefix)
		}
	}
}
