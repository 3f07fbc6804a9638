package vault

import (
	"bytes"
	"fmt"

	"github.com/kmsplugin/kms-plugin/internal/privatefile"
	"github.com/kmsplugin/kms-plugin/internal/tlsfiles"
)

// File is a file the backend reads: its TLS files when it opens, an auth method's credentials
// at every login. Read reads it exactly as the backend does, so that kmsctl doctor's verdict on
// it is the backend's.
type File struct {
	What string // as the backend's errors name it: "token file", "vault CA file", ...
	Path string
	// Rule is internal/privatefile's rule it is read by. Any is a projected service-account
	// token, which kubelet usually mounts readable by all: the backend takes it, doctor warns.
	Rule privatefile.Rule
	read func() ([]byte, error)
}

// Read reads the file as the backend does. A refusal wraps the *privatefile.Error (or the
// fs error) that says why.
func (f File) Read() ([]byte, error) { return f.read() }

// Files lists every file cfg has the backend read, at the default path where cfg names none:
// the TLS files (internal/tlsfiles), then the auth method's credentials. A supplied token
// ($VAULT_TOKEN) has none.
func Files(cfg Config) []File {
	var out []File
	for _, f := range cfg.tlsFiles().List() {
		out = append(out, File{What: "vault " + f.What, Path: f.Path, Rule: f.Rule, read: f.Read})
	}
	if a, ok := cfg.Auth.(interface{ credentials() []File }); ok {
		out = append(out, a.credentials()...)
	}
	return out
}

func (c *Config) tlsFiles() tlsfiles.Files {
	return tlsfiles.Files{CAFile: c.CAFile, CertFile: c.ClientCert, KeyFile: c.ClientKey}
}

// Each auth method's files, as its Login reads them (auth.go).

func (f *TokenFile) file() File          { return credential("token file", f.Path, privatefile.Secret) }
func (f *TokenFile) credentials() []File { return []File{f.file()} }

func (a AppRole) roleIDFile() File {
	return credential("approle role id file", a.RoleIDFile, privatefile.Secret)
}
func (a AppRole) secretIDFile() File {
	return credential("approle secret id file", a.SecretIDFile, privatefile.Secret)
}

// credentials are the files Login reads: a role id given inline and a role without a secret id
// have none.
func (a AppRole) credentials() []File {
	var out []File
	if a.RoleIDFile != "" {
		out = append(out, a.roleIDFile())
	}
	if a.SecretIDFile != "" {
		out = append(out, a.secretIDFile())
	}
	return out
}

// jwtFile is kubelet's mode whatever it is (privatefile.Any), at the pod's default path unless
// JWTFile names another.
func (k Kubernetes) jwtFile() File {
	path := k.JWTFile
	if path == "" {
		path = DefaultServiceAccountTokenFile
	}
	return credential("service-account token file", path, privatefile.Any)
}
func (k Kubernetes) credentials() []File { return []File{k.jwtFile()} }

// credentials are the certificate and its key, or the one file holding both: that file holds a
// private key, so it is a secret.
func (c *Cert) credentials() []File {
	switch {
	case c.PEMFile != "":
		return []File{credential("client certificate and key file", c.PEMFile, privatefile.Secret)}
	case c.CertFile != "" && c.KeyFile != "":
		return []File{credential("client certificate file", c.CertFile, privatefile.Public), // with a key in it: Secret
			credential("client key file", c.KeyFile, privatefile.Secret)}
	}
	return nil
}

func (j *JWT) file() File          { return credential("JWT file", j.TokenFile, privatefile.Secret) }
func (j *JWT) credentials() []File { return []File{j.file()} }

func credential(what, path string, rule privatefile.Rule) File {
	return File{What: what, Path: path, Rule: rule, read: func() ([]byte, error) { return readCredential(path, what, rule) }}
}

// readCredential reads a small credential file; trailing whitespace (a newline from echo) is
// not part of the secret. Errors name the file, never its content. The file is held to rule
// (internal/privatefile): a secret private (chmod 600), every file owned by root or us.
func readCredential(path, what string, rule privatefile.Rule) ([]byte, error) {
	if path == "" {
		return nil, &localError{"no " + what + " configured"}
	}
	b, err := privatefile.ReadAs(path, rule)
	if err != nil {
		return nil, &fileError{localError{what + ": " + err.Error()}, err}
	}
	if len(b) > 64<<10 {
		clear(b)
		return nil, &localError{fmt.Sprintf("%s %s: %d bytes is too large for a credential", what, path, len(b))}
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return nil, &localError{what + " " + path + " is empty"}
	}
	return b, nil
}

// fileError is a credential file the backend cannot read or refuses: a localError (no retry
// fixes it) that still wraps why, for doctor's fix.
type fileError struct {
	localError
	err error
}

func (e *fileError) Unwrap() error { return e.err }

// As lets errors.As find the localError within.
func (e *fileError) As(target any) bool {
	if p, ok := target.(**localError); ok {
		*p = &e.localError
		return true
	}
	return false
}
