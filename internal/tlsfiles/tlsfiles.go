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

// File is one PEM file of a TLS client, with the rule Client reads it by.
type File struct {
	What string // "CA file", "client certificate", "client key"
	Path string
	Rule privatefile.Rule // a Public file that holds a private key is read as a Secret
}

// Read reads the file as Client does.
func (f File) Read() ([]byte, error) {
	b, err := privatefile.ReadAs(f.Path, f.Rule)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.What, err)
	}
	return b, nil
}

// List names the files Client reads, each with the rule it reads it by; doctor judges them so.
func (f Files) List() []File {
	var out []File
	if f.CAFile != "" {
		out = append(out, f.ca())
	}
	if f.CertFile != "" {
		out = append(out, f.cert())
	}
	if f.KeyFile != "" {
		out = append(out, f.key())
	}
	return out
}

func (f Files) ca() File { return File{What: "CA file", Path: f.CAFile, Rule: privatefile.Public} }
func (f Files) cert() File {
	return File{What: "client certificate", Path: f.CertFile, Rule: privatefile.Public}
}
func (f Files) key() File { return File{What: "client key", Path: f.KeyFile, Rule: privatefile.Secret} }

// Client returns a TLS 1.2+ client configuration with f's roots and client certificate.
func (f Files) Client() (*tls.Config, error) {
	if (f.CertFile == "") != (f.KeyFile == "") {
		return nil, errors.New("a client certificate and its key go together")
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.CAFile != "" {
		pem, err := f.ca().Read()
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificates in it", f.CAFile)
		}
	}
	if f.CertFile != "" {
		certPEM, err := f.cert().Read() // with its key in it: Secret
		if err != nil {
			return nil, err
		}
		keyPEM, err := f.key().Read()
		if err != nil {
			return nil, err
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
