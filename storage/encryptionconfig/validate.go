package encryptionconfig

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// validate applies the apiserver's validation (ValidateEncryptionConfiguration), so that a
// file the apiserver would refuse is refused here too. Secrets never appear in its errors.
func validate(f *fileConfig) error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if len(f.Resources) == 0 {
		return errors.New("resources: at least one entry is required")
	}
	kmsNames := map[string]bool{}
	for i, rc := range f.Resources {
		at := fmt.Sprintf("resources[%d]", i)
		if len(rc.Resources) == 0 {
			bad("%s.resources: at least one resource is required", at)
		}
		errs = append(errs, validateResources(at, rc.Resources)...)
		if len(rc.Providers) == 0 {
			bad("%s.providers: at least one provider is required", at)
		}
		for j := range rc.Providers {
			pat := fmt.Sprintf("%s.providers[%d]", at, j)
			k, n := kindOf(&rc.Providers[j])
			if n != 1 {
				bad("%s: want exactly one of %s; found %d", pat, strings.Join(fields(), ", "), n)
				continue
			}
			if k.check != nil {
				errs = append(errs, k.check(pat+"."+k.field, &rc.Providers[j], kmsNames)...)
			}
		}
	}
	return errors.Join(errs...)
}

func validateResources(at string, resources []string) []error {
	var errs []error
	for j, r := range resources {
		gr := ParseGroupResource(r)
		switch {
		case strings.ToLower(r) != r:
			errs = append(errs, fmt.Errorf("%s.resources[%d] %q: resource names have no capital letters", at, j, r))
		case r == "*":
			errs = append(errs, fmt.Errorf("%s.resources[%d] %q: use '*.' for every core resource or '*.*' for every resource", at, j, r))
		case r == "apiserveripinfo" || r == "serviceipallocations" || r == "servicenodeportallocations":
			errs = append(errs, fmt.Errorf("%s.resources[%d] %q: resources without a REST API cannot be encrypted", at, j, r))
		case gr.Group == "events.k8s.io":
			errs = append(errs, fmt.Errorf("%s.resources[%d] %q: events.k8s.io objects are stored in the 'events' group; write 'events'", at, j, r))
		case gr.Group == "extensions":
			errs = append(errs, fmt.Errorf("%s.resources[%d] %q: the extensions group has been removed", at, j, r))
		case gr.Group == "*" && gr.Resource != "*":
			errs = append(errs, fmt.Errorf("%s.resources[%d] %q: encrypting one resource across groups is not supported", at, j, r))
		}
	}
	// Duplicates and overlaps within one list (validateResourceOverlap).
	var dup, overlap bool
	for i, a := range resources {
		for j, b := range resources {
			if i == j {
				continue
			}
			r1, r2 := ParseGroupResource(a), ParseGroupResource(b)
			switch {
			case r1 == r2:
				dup = true
			case r1 == GroupResource{Group: "*", Resource: "*"}:
				overlap = true
			case r1.Group == r2.Group && (r1.Resource == "*" || r2.Resource == "*"):
				overlap = true
			}
		}
	}
	if dup {
		errs = append(errs, fmt.Errorf("%s.resources: the same resource is listed twice", at))
	}
	if overlap {
		errs = append(errs, fmt.Errorf("%s.resources: overlapping resources (such as 'secrets' and '*.') in one list would mask each other", at))
	}
	return errs
}

func validateKeys(at string, k *keysConfig, sizes ...int) []error {
	if len(k.Keys) == 0 {
		return []error{fmt.Errorf("%s.keys: at least one key is required", at)}
	}
	var errs []error
	for i, key := range k.Keys {
		kat := fmt.Sprintf("%s.keys[%d]", at, i)
		if key.Name == "" {
			errs = append(errs, fmt.Errorf("%s.name is required", kat))
		}
		if key.Secret == "" {
			errs = append(errs, fmt.Errorf("%s.secret is required", kat))
			continue
		}
		secret, err := base64.StdEncoding.DecodeString(key.Secret)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.secret (%q): not valid base64", kat, key.Name))
			continue
		}
		ok := false
		for _, s := range sizes {
			ok = ok || len(secret) == s
		}
		if !ok {
			errs = append(errs, fmt.Errorf("%s.secret (%q): %d bytes, want one of %v", kat, key.Name, len(secret), sizes))
		}
	}
	return errs
}

func validateKMS(at string, k *kmsConfig, seen map[string]bool) []error {
	var errs []error
	if k.APIVersion == "" {
		k.APIVersion = "v1" // the apiserver's default
	}
	if k.Name == "" {
		errs = append(errs, fmt.Errorf("%s.name is required", at))
	}
	if k.APIVersion != "v1" && strings.Contains(k.Name, ":") {
		errs = append(errs, fmt.Errorf("%s.name %q: must not contain ':'", at, k.Name))
	}
	if k.APIVersion != "v1" && seen[k.Name] {
		errs = append(errs, fmt.Errorf("%s.name %q: kms provider names must be unique", at, k.Name))
	}
	if k.Timeout != nil && k.Timeout.Duration <= 0 {
		errs = append(errs, fmt.Errorf("%s.timeout must be positive", at))
	}
	if k.Endpoint == "" {
		errs = append(errs, fmt.Errorf("%s.endpoint is required", at))
	} else if u, err := url.Parse(k.Endpoint); err != nil || u.Scheme != "unix" {
		errs = append(errs, fmt.Errorf("%s.endpoint %q: want unix:///path", at, k.Endpoint))
	}
	if k.APIVersion != "v1" && k.CacheSize != nil {
		errs = append(errs, fmt.Errorf("%s.cachesize is not supported in v2", at))
	}
	if k.APIVersion == "v1" && k.CacheSize != nil && *k.CacheSize == 0 {
		errs = append(errs, fmt.Errorf("%s.cachesize should be positive, or negative to disable", at))
	}
	if k.APIVersion != "v1" && k.APIVersion != "v2" {
		errs = append(errs, fmt.Errorf("%s.apiVersion %q: want v1 or v2", at, k.APIVersion))
	}
	return errs
}
