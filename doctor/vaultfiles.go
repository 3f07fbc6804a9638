package doctor

import "github.com/kmsplugin/kms-plugin/backends/vault"

// VaultFiles lists the files a Vault configuration reads: TLS files and the auth method's
// credentials. Auth methods it does not know contribute none.
func VaultFiles(cfg vault.Config) []File {
	var files []File
	add := func(what, path string, secret bool) {
		if path != "" {
			files = append(files, File{What: what, Path: path, Secret: secret})
		}
	}
	add("vault CA file", cfg.CAFile, false)
	add("vault client certificate", cfg.ClientCert, false)
	add("vault client key", cfg.ClientKey, true)
	switch a := cfg.Auth.(type) {
	case *vault.TokenFile:
		add("vault token file", a.Path, true)
	case vault.AppRole:
		add("approle role id file", a.RoleIDFile, true)
		add("approle secret id file", a.SecretIDFile, true)
	case *vault.Cert:
		if a.PEMFile != "" {
			add("vault cert auth certificate-and-key file", a.PEMFile, true)
		}
		add("vault cert auth certificate", a.CertFile, false)
		add("vault cert auth key", a.KeyFile, true)
	case *vault.JWT:
		add("vault jwt file", a.TokenFile, true)
	case vault.Kubernetes:
		path := a.JWTFile
		if path == "" {
			path = vault.DefaultServiceAccountTokenFile
		}
		files = append(files, File{What: "service-account token file", Path: path, Secret: true, Lenient: true})
	}
	return files
}
