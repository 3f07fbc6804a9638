package tlsfiles_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/internal/tlsfiles"
)

func writePEM(t *testing.T, dir, name, typ string, der []byte, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// The files are judged as the plugin judges every file it trusts: a CA bundle or certificate
// may be read by others but not written, a key only by its owner; a good set gives a config
// with the roots and the client certificate.
func TestFilesAreJudgedAndLoaded(t *testing.T) {
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	ca := writePEM(t, dir, "ca.pem", "CERTIFICATE", der, 0o644)
	cert := writePEM(t, dir, "cert.pem", "CERTIFICATE", der, 0o644)
	good := writePEM(t, dir, "key.pem", "PRIVATE KEY", keyDER, 0o600)
	cfg, err := tlsfiles.Files{CAFile: ca, CertFile: cert, KeyFile: good}.Client()
	if err != nil || cfg.RootCAs == nil || len(cfg.Certificates) != 1 {
		t.Fatalf("good files: %v", err)
	}
	for name, f := range map[string]tlsfiles.Files{
		"key readable by others": {CertFile: cert, KeyFile: writePEM(t, dir, "open-key.pem", "PRIVATE KEY", keyDER, 0o644)},
		"CA writable by others":  {CAFile: writePEM(t, dir, "open-ca.pem", "CERTIFICATE", der, 0o666)},
		"certificate alone":      {CertFile: cert},
		"no PEM in the CA file":  {CAFile: writePEM(t, dir, "empty.pem", "NOTHING", nil, 0o644)},
	} {
		if _, err := f.Client(); err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(err.Error(), "PRIVATE KEY") {
			t.Errorf("%s: the error quotes the key: %v", name, err)
		}
	}
}
