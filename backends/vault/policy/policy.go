// Package policy is the least-privilege Vault policy of the plugin's Vault backend: the
// paths and capabilities it needs, as rules that `kmsctl doctor` checks a token against and
// as the HCL that `kmsctl policy` prints. Both come from one list, so they cannot drift.
package policy

import (
	"fmt"
	"strings"
)

// Rule is one path and the capabilities the plugin needs on it, with why.
type Rule struct {
	Path         string
	Capabilities []string
	Why          string
	// DoctorOnly marks a path the serving plugin can do without (it does less well) but
	// `kmsctl doctor` cannot.
	DoctorOnly bool
}

// Required lists every path the plugin's token needs, for the transit key key on mount
// (paths relative to the namespace, if any). Logins (AppRole, Kubernetes, certificate, JWT)
// are unauthenticated endpoints and need nothing here.
func Required(mount, key string) []Rule {
	mount = strings.Trim(mount, "/")
	return []Rule{
		{Path: mount + "/encrypt/" + key, Capabilities: []string{"update"},
			Why: `wrap DEKs; "update" only, never "create": encrypt on a missing key must fail, not create a new key`},
		{Path: mount + "/decrypt/" + key, Capabilities: []string{"update"},
			Why: "unwrap DEKs"},
		{Path: mount + "/keys/" + key, Capabilities: []string{"read"},
			Why: "read the key's versions and their creation times (the key id)"},
		{Path: "auth/token/lookup-self", Capabilities: []string{"read"},
			Why: "learn a supplied token's TTL, and tell a revoked token from a policy denial"},
		{Path: "auth/token/renew-self", Capabilities: []string{"update"},
			Why: "renew the token before it expires"},
		{Path: "sys/capabilities-self", Capabilities: []string{"update"},
			Why: "let the plugin notice a policy cut within --vault-capabilities-interval, and `kmsctl doctor` check this policy", DoctorOnly: true},
	}
}

// Options name the transit key the policy is for.
type Options struct {
	Mount     string // "transit" if empty
	Key       string // required
	Namespace string // Vault Enterprise namespace the policy is written in, if any
	Name      string // policy name for the example command; "kms-plugin" if empty
}

// HCL renders the policy with a comment per rule and, at the top, how to install it.
func HCL(o Options) (string, error) {
	if o.Mount == "" {
		o.Mount = "transit"
	}
	if o.Name == "" {
		o.Name = "kms-plugin"
	}
	if o.Key == "" || strings.Contains(o.Key, "/") {
		return "", fmt.Errorf("transit key name %q: want a single path segment", o.Key)
	}
	if strings.ContainsAny(o.Mount+o.Key+o.Namespace, "\"\n*+") {
		return "", fmt.Errorf("mount %q, key %q or namespace %q: quotes, newlines and wildcards have no place in a least-privilege path", o.Mount, o.Key, o.Namespace)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Least-privilege Vault policy for kms-plugin: transit key %q on mount %q.\n", o.Key, strings.Trim(o.Mount, "/"))
	ns := ""
	if o.Namespace != "" {
		ns = " -namespace=" + strings.Trim(o.Namespace, "/")
		fmt.Fprintf(&b, "# Write it in namespace %q (paths are relative to it):\n", strings.Trim(o.Namespace, "/"))
	} else {
		b.WriteString("# Write it with:\n")
	}
	fmt.Fprintf(&b, "#   vault policy write%s %s policy.hcl\n", ns, o.Name)
	b.WriteString("# Attach it to the plugin's token, AppRole or Kubernetes role; `kmsctl doctor` checks it.\n")
	for _, r := range Required(o.Mount, o.Key) {
		caps := make([]string, len(r.Capabilities))
		for i, c := range r.Capabilities {
			caps[i] = fmt.Sprintf("%q", c)
		}
		fmt.Fprintf(&b, "\n# %s\npath %q {\n  capabilities = [%s]\n}\n", r.Why, r.Path, strings.Join(caps, ", "))
	}
	return b.String(), nil
}
