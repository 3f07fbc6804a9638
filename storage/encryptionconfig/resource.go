package encryptionconfig

import "strings"

// Resource is the kind of object an etcd key holds: the group and resource whose rule applies
// to it (String gives the form a `resources:` list uses: "secrets", "deployments.apps",
// "widgets.example.com"), and where in etcd its objects live.
type Resource struct {
	GroupResource
	// Prefix is the etcd key prefix the objects share, e.g. "/registry/deployments/".
	Prefix string
	// Known is false for prefixes that are not an API resource Kubernetes 1.37 stores
	// ("masterleases", "ranges") or that cannot be placed in a group.
	Known bool
}

// specialPrefixes are the etcd prefixes that differ from the resource name
// (k8s.io/kubernetes pkg/kubeapiserver SpecialDefaultResourcePrefixes).
var specialPrefixes = map[string]GroupResource{
	"controllers":        {Resource: "replicationcontrollers"},
	"services/endpoints": {Resource: "endpoints"},
	"minions":            {Resource: "nodes"},
	"services/specs":     {Resource: "services"},
	"ingress":            {Group: "networking.k8s.io", Resource: "ingresses"},
}

// builtinGroups places the built-in resources of Kubernetes 1.37, whose etcd prefix is the bare
// resource name, in their API group. Core ("") resources are listed too, so that an unknown
// name is told apart from a core one.
var builtinGroups = map[string]string{
	// core
	"configmaps": "", "events": "", "limitranges": "", "namespaces": "", "persistentvolumes": "",
	"persistentvolumeclaims": "", "pods": "", "podtemplates": "", "resourcequotas": "",
	"secrets": "", "serviceaccounts": "",
	"mutatingadmissionpolicies":         "admissionregistration.k8s.io",
	"mutatingadmissionpolicybindings":   "admissionregistration.k8s.io",
	"mutatingwebhookconfigurations":     "admissionregistration.k8s.io",
	"validatingadmissionpolicies":       "admissionregistration.k8s.io",
	"validatingadmissionpolicybindings": "admissionregistration.k8s.io",
	"validatingwebhookconfigurations":   "admissionregistration.k8s.io",
	"storageversions":                   "internal.apiserver.k8s.io",
	"controllerrevisions":               "apps", "daemonsets": "apps", "deployments": "apps",
	"replicasets": "apps", "statefulsets": "apps",
	"horizontalpodautoscalers": "autoscaling",
	"cronjobs":                 "batch", "jobs": "batch",
	"certificatesigningrequests": "certificates.k8s.io", "clustertrustbundles": "certificates.k8s.io",
	"podcertificaterequests": "certificates.k8s.io",
	"leases":                 "coordination.k8s.io", "leasecandidates": "coordination.k8s.io",
	"endpointslices":              "discovery.k8s.io",
	"flowschemas":                 "flowcontrol.apiserver.k8s.io",
	"evictionrequests":            "lifecycle.k8s.io",
	"prioritylevelconfigurations": "flowcontrol.apiserver.k8s.io",
	"ingressclasses":              "networking.k8s.io", "ipaddresses": "networking.k8s.io",
	"networkpolicies": "networking.k8s.io", "servicecidrs": "networking.k8s.io",
	"runtimeclasses":       "node.k8s.io",
	"poddisruptionbudgets": "policy",
	"clusterroles":         "rbac.authorization.k8s.io", "clusterrolebindings": "rbac.authorization.k8s.io",
	"roles": "rbac.authorization.k8s.io", "rolebindings": "rbac.authorization.k8s.io",
	"deviceclasses": "resource.k8s.io", "devicetaintrules": "resource.k8s.io",
	"resourceclaims": "resource.k8s.io", "resourceclaimtemplates": "resource.k8s.io",
	"resourcepoolstatusrequests": "resource.k8s.io", "resourceslices": "resource.k8s.io",
	"compositepodgroups": "scheduling.k8s.io", "podgroups": "scheduling.k8s.io",
	"priorityclasses": "scheduling.k8s.io", "workloads": "scheduling.k8s.io",
	"csidrivers": "storage.k8s.io", "csinodes": "storage.k8s.io",
	"csistoragecapacities": "storage.k8s.io", "storageclasses": "storage.k8s.io",
	"volumeattachments": "storage.k8s.io", "volumeattributesclasses": "storage.k8s.io",
	"storageversionmigrations": "storagemigration.k8s.io",
}

// ResourceOf tells which resource an etcd key under root (normally "/registry/") belongs to.
// Built-in resources live at root+"<resource>/", a few at special prefixes, and resources of
// groups with a dot in their name (CRDs, apiextensions, apiregistration) at
// root+"<group>/<resource>/".
func ResourceOf(root, key string) Resource {
	rest := strings.TrimPrefix(key, root)
	segs := strings.SplitN(rest, "/", 3)
	first := segs[0]
	if len(segs) >= 2 {
		two := first + "/" + segs[1]
		if gr, ok := specialPrefixes[two]; ok {
			return Resource{GroupResource: gr, Prefix: root + two + "/", Known: true}
		}
		if strings.Contains(first, ".") {
			return Resource{GroupResource: GroupResource{Group: first, Resource: segs[1]}, Prefix: root + two + "/", Known: true}
		}
	}
	if gr, ok := specialPrefixes[first]; ok {
		return Resource{GroupResource: gr, Prefix: root + first + "/", Known: true}
	}
	group, known := builtinGroups[first]
	return Resource{GroupResource: GroupResource{Group: group, Resource: first}, Prefix: root + first + "/", Known: known}
}

// PrefixOf is the etcd key prefix (under root, normally "/registry/") of a resource's objects:
// the inverse of ResourceOf for the resources it knows, and root+"<group>/<resource>/" for
// any other group with a dot in its name (custom resources).
func PrefixOf(root string, gr GroupResource) string {
	for p, special := range specialPrefixes {
		if special == gr {
			return root + p + "/"
		}
	}
	if group, ok := builtinGroups[gr.Resource]; ok && group == gr.Group {
		return root + gr.Resource + "/"
	}
	if gr.Group == "" || !strings.Contains(gr.Group, ".") {
		return root + gr.Resource + "/"
	}
	return root + gr.Group + "/" + gr.Resource + "/"
}
