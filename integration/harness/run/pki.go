package run

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestPKI is a throwaway CA with a server certificate for localhost/127.0.0.1 (and any other
// names asked for) and a client certificate, as PEM files in a test dir.
type TestPKI struct {
	CAFile                string
	ServerCert, ServerKey string
	ClientCert, ClientKey string
}

// NewTestPKI writes a fresh TestPKI into dir; the certificates also name dnsNames.
func NewTestPKI(t testing.TB, dir string, dnsNames ...string) TestPKI {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	Must(t, err, "CA key")
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kms-plugin test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	Must(t, err, "CA certificate")
	ca, err := x509.ParseCertificate(caDER)
	Must(t, err, "CA certificate")
	p := TestPKI{CAFile: filepath.Join(dir, "ca.pem")}
	writePEMFile(t, p.CAFile, "CERTIFICATE", caDER)

	issue := func(name string, serial int64, usage x509.ExtKeyUsage) (certFile, keyFile string) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		Must(t, err, "key")
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			DNSNames: append([]string{"localhost"}, dnsNames...), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		Must(t, err, "certificate")
		keyDER, err := x509.MarshalECPrivateKey(key)
		Must(t, err, "key")
		certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
		writePEMFile(t, certFile, "CERTIFICATE", der)
		writePEMFile(t, keyFile, "EC PRIVATE KEY", keyDER)
		return certFile, keyFile
	}
	p.ServerCert, p.ServerKey = issue("server", 2, x509.ExtKeyUsageServerAuth)
	p.ClientCert, p.ClientKey = issue("client", 3, x509.ExtKeyUsageClientAuth)
	return p
}

// ClientTLS is a client's TLS config that trusts the CA and presents the client certificate.
func (p TestPKI) ClientTLS(t testing.TB) *tls.Config {
	t.Helper()
	ca, err := os.ReadFile(p.CAFile)
	Must(t, err, "CA file")
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		t.Fatalf("%s: no PEM certificate", p.CAFile)
	}
	cert, err := tls.LoadX509KeyPair(p.ClientCert, p.ClientKey)
	Must(t, err, "client certificate")
	return &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
}

func writePEMFile(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	Must(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600), "writing %s", path)
}
