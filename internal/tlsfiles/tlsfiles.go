// Package tlsfiles builds a TLS client configuration from PEM files, judged by privatefile's
// rules: a CA bundle may be readable by all but writable by no one else (whoever can replace it
// can impersonate the server), a client key only by its owner. The Vault backend and kmsctl's
// etcd client read their files here, and doctor judges them by the same rules.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/kmsplugin/kms-plugin/internal/privatefile"
)

// Files names the PEM files of a TLS client. Empty fields are not used: no CAFile keeps the
// system roots; CertFile and KeyFile go together. KeyFile may be CertFile itself when that file
// holds both.
type Files struct {
	CAFile, CertFile, KeyFile string
}

// Client returns a TLS 1.2+ client configuration with f's roots and client certificate.
func (f Files) Client() (*tls.Config, error) {
	if (f.CertFile == "") != (f.KeyFile == "") {
		return nil, errors.New("a client certificate and its key go together")
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.CAFile != "" {
		pem, err := privatefile.ReadAs(f.CAFile, privatefile.Public)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificates in it", f.CAFile)
		}
	}
	if f.CertFile != "" {
		certPEM, err := privatefile.ReadAs(f.CertFile, privatefile.Public) // with its key in it: Secret
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		keyPEM, err := privatefile.ReadAs(f.KeyFile, privatefile.Secret)
		if err != nil {
			return nil, fmt.Errorf("client key: %w", err)
		}
		defer clear(keyPEM)
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("client certificate %s and key %s: %w", f.CertFile, f.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}
