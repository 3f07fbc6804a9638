package vault

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/integration/harness/run"
	"github.com/kmsplugin/kms-plugin/integration/harness/vaultd"
	"github.com/kmsplugin/kms-plugin/internal/clock"
)

// TestVaultLoginMethods logs in with TLS certificate auth and JWT auth against a real Vault
// serving HTTPS: the credential files are re-read when they change (a rotated kubelet client
// certificate, a refreshed JWT), a bad new credential keeps the working token, and a revoked,
// expired or unrenewable token leads to a fresh login with backoff, never to an exit.
func TestVaultLoginMethods(t *testing.T) {
	t.Parallel()
	v := vaultd.StartVaultDevTLS(t)
	v.EnableTransit(t, "transit")
	ctx := context.Background()

	t.Run("cert", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, v)
		dir := t.TempDir()
		ca := newTestCA(t)
		v.EnableAuth(t, "cert", "cert")
		v.Write(t, "auth/cert/certs/kms", map[string]any{
			"certificate":          string(ca.certPEM),
			"allowed_common_names": "system:node:*",
			"token_policies":       policiesOf(t, v, f.token),
			"token_ttl":            "1h",
		})
		pemFile := filepath.Join(dir, "kubelet-client-current.pem")
		first := ca.issue(t, "system:node:node-a", 10)
		replaceFile(t, pemFile, first)
		clk := clock.NewFake(time.Now())
		cfg := f.config(t, &Cert{Role: "kms", PEMFile: pemFile})
		cfg.CAFile, cfg.Clock = v.CAFile, clk
		k, err := Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		mustCheck(t, k)
		roundTrip(t, k)
		tok1 := k.tokens.token
		wantMeta(t, v, tok1, "serial_number", "10")
		wantMeta(t, v, tok1, "common_name", "system:node:node-a")

		// kubelet rotates its certificate: the next check logs in with the new one.
		replaceFile(t, pemFile, ca.issue(t, "system:node:node-a", 11))
		mustCheck(t, k)
		tok2 := k.tokens.token
		if tok2 == tok1 {
			t.Fatal("no new login after the certificate file changed")
		}
		wantMeta(t, v, tok2, "serial_number", "11")
		roundTrip(t, k)

		// Past two thirds of the TTL the token is replaced by a login, not renewed (renewal
		// would need the certificate it was issued for).
		clk.Advance(41 * time.Minute)
		mustCheck(t, k)
		tok3 := k.tokens.token
		if tok3 == tok2 || renewals(t, v, tok2) != 0 {
			t.Fatalf("at 41 min of 60: token replaced %v, renewals of the old one %d", tok3 != tok2, renewals(t, v, tok2))
		}

		// A certificate Vault does not trust: the login fails, the working token stays.
		stranger := newTestCA(t)
		replaceFile(t, pemFile, stranger.issue(t, "system:node:node-a", 12))
		mustCheck(t, k)
		if k.tokens.token != tok3 {
			t.Fatal("a failed login with a changed certificate replaced the working token")
		}
		roundTrip(t, k)
		// Revoked meanwhile: the login is retried with backoff; the backend keeps running.
		v.RevokeToken(t, tok3)
		if err := k.Check(ctx); err == nil || !strings.Contains(err.Error(), "cert login") {
			t.Fatalf("Check with a revoked token and an untrusted certificate: %v", err)
		}
		if err := k.Check(ctx); err == nil || !strings.Contains(err.Error(), "next cert login attempt") {
			t.Fatalf("second Check inside the backoff: %v", err)
		}
		replaceFile(t, pemFile, ca.issue(t, "system:node:node-a", 13))
		mustCheck(t, k) // a changed file skips the backoff
		wantMeta(t, v, k.tokens.token, "serial_number", "13")
		roundTrip(t, k)

		// Certificate and key as two files.
		certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
		pair := ca.issue(t, "system:node:node-b", 14)
		block, rest := pem.Decode(pair)
		replaceFile(t, certFile, pem.EncodeToMemory(block))
		replaceFile(t, keyFile, rest)
		cfg.Auth = &Cert{Role: "kms", CertFile: certFile, KeyFile: keyFile}
		k2, err := Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		mustCheck(t, k2)
		wantMeta(t, v, k2.tokens.token, "common_name", "system:node:node-b")
	})

	t.Run("jwt", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t, v)
		signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		pub, err := x509.MarshalPKIXPublicKey(&signer.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		v.EnableAuth(t, "jwt", "jwt")
		v.Write(t, "auth/jwt/config", map[string]any{
			"jwt_validation_pubkeys": []string{string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}))},
			"bound_issuer":           "https://issuer.test",
		})
		role := func(name string, extra map[string]any) {
			params := map[string]any{
				"role_type": "jwt", "user_claim": "sub", "bound_audiences": "vault",
				"claim_mappings": map[string]string{"sub": "subject"},
				"token_policies": policiesOf(t, v, f.token), "token_ttl": "1h",
			}
			for k, v := range extra {
				params[k] = v
			}
			v.Write(t, "auth/jwt/role/"+name, params)
		}
		role("kms", nil)
		role("short", map[string]any{"token_ttl": "1s", "token_max_ttl": "1s"})
		role("batch", map[string]any{"token_type": "batch"})
		jwt := func(sub string, exp time.Time) string { return signES256(t, signer, sub, exp) }

		file := filepath.Join(t.TempDir(), "jwt")
		replaceFile(t, file, []byte(jwt("kms-1", time.Now().Add(time.Hour))))
		clk := clock.NewFake(time.Now())
		cfg := f.config(t, &JWT{Role: "kms", TokenFile: file})
		cfg.CAFile, cfg.Clock = v.CAFile, clk
		k, err := Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		mustCheck(t, k)
		roundTrip(t, k)
		wantMeta(t, v, k.tokens.token, "subject", "kms-1")

		// A new JWT in the file: the next check logs in with it.
		tok1 := k.tokens.token
		replaceFile(t, file, []byte(jwt("kms-2", time.Now().Add(time.Hour))))
		mustCheck(t, k)
		if k.tokens.token == tok1 {
			t.Fatal("no new login after the JWT file changed")
		}
		wantMeta(t, v, k.tokens.token, "subject", "kms-2")

		// An expired JWT: the working token stays; once revoked, logins back off.
		tok2 := k.tokens.token
		replaceFile(t, file, []byte(jwt("kms-3", time.Now().Add(-time.Hour))))
		mustCheck(t, k)
		if k.tokens.token != tok2 {
			t.Fatal("a failed login with a changed JWT replaced the working token")
		}
		v.RevokeToken(t, tok2)
		if err := k.Check(ctx); err == nil || !strings.Contains(err.Error(), "jwt login") {
			t.Fatalf("Check with a revoked token and an expired JWT: %v", err)
		}
		if err := k.Check(ctx); err == nil || !strings.Contains(err.Error(), "next jwt login attempt") {
			t.Fatalf("second Check inside the backoff: %v", err)
		}
		replaceFile(t, file, []byte(jwt("kms-4", time.Now().Add(time.Hour))))
		mustCheck(t, k)
		wantMeta(t, v, k.tokens.token, "subject", "kms-4")
		roundTrip(t, k)

		// A token that really expires (1 s TTL): the next check logs in again.
		cfg.Auth = &JWT{Role: "short", TokenFile: file}
		ks, err := Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		mustCheck(t, ks)
		expired := ks.tokens.token
		run.Eventually(t, 30*time.Second, "the 1 s token expired", func(context.Context) error {
			if _, err := v.LookupToken(expired); err == nil {
				return os.ErrExist
			}
			return nil
		})
		mustCheck(t, ks)
		if ks.tokens.token == expired {
			t.Fatal("no new login after the token expired")
		}

		// An unrenewable (batch) token: replaced by a login at two thirds of its TTL.
		cfg.Auth = &JWT{Role: "batch", TokenFile: file}
		kb, err := Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		mustCheck(t, kb)
		batch := kb.tokens.token
		if kb.tokens.renewable {
			t.Fatal("a batch token reported renewable")
		}
		clk.Advance(41 * time.Minute)
		mustCheck(t, kb)
		if kb.tokens.token == batch {
			t.Fatal("an unrenewable token was not replaced at two thirds of its TTL")
		}
		roundTrip(t, kb)
	})
}

func roundTrip(t *testing.T, k *KEK) {
	t.Helper()
	ctx := context.Background()
	key := bytes.Repeat([]byte{0x77}, 32)
	w, err := k.Wrap(ctx, k.CurrentID(), key)
	if err != nil {
		t.Fatalf("Wrap: %v", err)
	}
	if got, err := k.Unwrap(ctx, k.CurrentID(), w); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("Unwrap: %v", err)
	}
}

// wantMeta checks a token's metadata, which says what credential the login used.
func wantMeta(t *testing.T, v *vaultd.Vault, token, key, want string) {
	t.Helper()
	s, err := v.LookupToken(token)
	if err != nil {
		t.Fatalf("token lookup: %v", err)
	}
	meta, _ := s.Data["meta"].(map[string]any)
	if got, _ := meta[key].(string); got != want {
		t.Fatalf("token metadata %s = %q, want %q (all: %v)", key, got, want, meta)
	}
}

// replaceFile swaps a file's content in one rename, as kubelet and token agents do.
func replaceFile(t *testing.T, path string, content []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, content, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// testCA issues client certificates like the cluster CA issues kubelet's.
type testCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kubernetes"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a combined PEM in kubelet's layout: the certificate, then its EC key.
func (ca *testCA) issue(t *testing.T, cn string, serial int64) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn, Organization: []string{"system:nodes"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})...)
}

// signES256 makes a JWT signed with ES256 (RFC 7518 3.4: R and S, 32 bytes each).
func signES256(t *testing.T, key *ecdsa.PrivateKey, sub string, exp time.Time) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signed := enc(map[string]string{"alg": "ES256", "typ": "JWT"}) + "." + enc(map[string]any{
		"iss": "https://issuer.test", "sub": sub, "aud": "vault",
		"iat": time.Now().Add(-time.Minute).Unix(), "nbf": time.Now().Add(-2 * time.Hour).Unix(), "exp": exp.Unix(),
	})
	digest := sha256.Sum256([]byte(signed))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// TestCertFileErrors: unusable certificate files give errors that name the file and never
// quote the key.
func TestCertFileErrors(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	good := ca.issue(t, "system:node:n", 2)
	block, keyPEM := pem.Decode(good)
	expired := func() []byte {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(3), NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, _ := x509.MarshalECPrivateKey(key)
		return append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})...)
	}()
	otherKey := ca.issue(t, "x", 4)
	_, otherKeyPEM := pem.Decode(otherKey)
	for name, c := range map[string]struct {
		content []byte
		want    string
	}{
		"no key":         {pem.EncodeToMemory(block), "key"},
		"no certificate": {keyPEM, "certificate"},
		"wrong key":      {append(pem.EncodeToMemory(block), otherKeyPEM...), "private key does not match"},
		"expired":        {expired, "expired at"},
		"empty":          {nil, "empty"},
	} {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".pem")
		replaceFile(t, path, c.content)
		_, err := (&Cert{PEMFile: path}).clientCertificate()
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) || strings.Contains(err.Error(), "PRIVATE KEY") {
			t.Errorf("%s: %v; want an error naming %s and saying %q", name, err, path, c.want)
		}
	}
	if _, err := (&Cert{PEMFile: filepath.Join(dir, "missing.pem")}).clientCertificate(); err == nil || !strings.Contains(err.Error(), "missing.pem") {
		t.Errorf("missing file: %v", err)
	}
	replaceFile(t, filepath.Join(dir, "good.pem"), good)
	if _, err := (&Cert{PEMFile: filepath.Join(dir, "good.pem")}).clientCertificate(); err != nil {
		t.Errorf("good file: %v", err)
	}
}
