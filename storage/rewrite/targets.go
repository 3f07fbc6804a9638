package rewrite

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"

	"github.com/kmsplugin/kms-plugin/storage/encryptionconfig"
)

// Resolve finds, by discovery, the served version of each named resource ("secrets",
// "widgets.example.com", and the wildcards of an EncryptionConfiguration: "*.apps", "*.*",
// "*." for the core group), keeping those that can be listed and patched. Each resource comes
// once, in the order of names (a wildcard's matches sorted). Names that match nothing are
// returned apart: for the operator's --resources an error, for a config's rules a note.
func Resolve(dc discovery.DiscoveryInterface, names []encryptionconfig.GroupResource) (targets []Target, missing []string, err error) {
	lists, err := dc.ServerPreferredResources()
	if err != nil && !discovery.IsGroupDiscoveryFailedError(err) {
		return nil, nil, fmt.Errorf("discovery: %w", err)
	}
	var served []Target
	for _, l := range lists {
		gv, perr := schema.ParseGroupVersion(l.GroupVersion)
		if perr != nil {
			continue
		}
		for _, r := range l.APIResources {
			if strings.Contains(r.Name, "/") || !hasVerbs(r, "list", "patch") {
				continue
			}
			served = append(served, Target{GVR: gv.WithResource(r.Name), Namespaced: r.Namespaced})
		}
	}
	sort.Slice(served, func(i, j int) bool { return served[i].String() < served[j].String() })
	seen := map[schema.GroupResource]bool{}
	for _, n := range names {
		found := false
		for _, t := range served {
			gr := t.GroupResource()
			if (n.Group == "*" || n.Group == gr.Group) && (n.Resource == "*" || n.Resource == gr.Resource) {
				found = true
				if !seen[t.GVR.GroupResource()] {
					seen[t.GVR.GroupResource()] = true
					targets = append(targets, t)
				}
			}
		}
		if !found {
			missing = append(missing, n.String())
		}
	}
	return targets, missing, nil
}

func hasVerbs(r metav1.APIResource, verbs ...string) bool {
	for _, v := range verbs {
		if !slices.Contains(r.Verbs, v) {
			return false
		}
	}
	return true
}

// ConfigResources lists the resources the rules of an EncryptionConfiguration name, in order.
func ConfigResources(cfg *encryptionconfig.Config) []encryptionconfig.GroupResource {
	var out []encryptionconfig.GroupResource
	for _, rule := range cfg.Rules() {
		for _, gr := range rule.Resources {
			if !slices.Contains(out, gr) {
				out = append(out, gr)
			}
		}
	}
	return out
}
