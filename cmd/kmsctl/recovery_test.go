package main

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/dek/recovery"
	"github.com/kmsplugin/kms-plugin/integration/harness"
	"github.com/kmsplugin/kms-plugin/storage/providers"
	"github.com/kmsplugin/kms-plugin/storage/storedobject"
)

// aesKEK is a one-key backend for these tests: a stand-in for a transit key that is then lost.
type aesKEK struct{ aead cipher.AEAD }

func newAESKEK(t *testing.T) *aesKEK {
	key := make([]byte, 32)
	rand.Read(key)
	block, _ := aes.NewCipher(key)
	aead, _ := cipher.NewGCM(block)
	return &aesKEK{aead: aead}
}

func (*aesKEK) CurrentID() string           { return "vault:0123456789abcdef:v1" }
func (*aesKEK) Check(context.Context) error { return nil }
func (k *aesKEK) Wrap(_ context.Context, _ string, d []byte) ([]byte, error) {
	nonce := make([]byte, 12)
	rand.Read(nonce)
	return k.aead.Seal(nonce, nonce, d, nil), nil
}
func (k *aesKEK) Unwrap(_ context.Context, _ string, w []byte) ([]byte, error) {
	return k.aead.Open(nil, w[:12], w[12:], nil)
}

// pluginClient is the plugin's Encrypt and Decrypt in process, for making kms v2 values.
type pluginClient struct{ s *dek.Sealer }

func (c pluginClient) Encrypt(ctx context.Context, in *kmsapi.EncryptRequest, _ ...grpc.CallOption) (*kmsapi.EncryptResponse, error) {
	ct, err := c.s.Encrypt(ctx, "vault:0123456789abcdef:v1", in.Plaintext)
	return &kmsapi.EncryptResponse{Ciphertext: ct, KeyId: "vault:0123456789abcdef:v1"}, err
}
func (c pluginClient) Decrypt(ctx context.Context, in *kmsapi.DecryptRequest, _ ...grpc.CallOption) (*kmsapi.DecryptResponse, error) {
	p, _, err := c.s.Decrypt(ctx, in.Ciphertext)
	return &kmsapi.DecryptResponse{Plaintext: p}, err
}
func (pluginClient) Status(context.Context, *kmsapi.StatusRequest, ...grpc.CallOption) (*kmsapi.StatusResponse, error) {
	return nil, errors.New("unused")
}

// kmsValue is a Secret as the apiserver stores it through a plugin whose envelopes carry a
// seal of pub (nil: none).
func kmsValue(t *testing.T, pub *recovery.PublicKey, etcdKey string) []byte {
	s := dek.NewLocalSealer(newAESKEK(t), dek.LocalKEKConfig{Recovery: pub})
	plain, err := storedobject.Encode([]byte(secretManifest))
	if err != nil {
		t.Fatal(err)
	}
	v, err := providers.NewKMSv2("vault", pluginClient{s}, 0).Encrypt(context.Background(), nil, plain, []byte(etcdKey))
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte(providers.KMSv2Prefix+"vault:"), v...)
}

func TestRecoveryKeyCommand(t *testing.T) {
	dir := t.TempDir()
	out, err := runCLI("recovery-key", "--out", dir)
	if err != nil || !strings.Contains(out, "recovery key ") {
		t.Fatalf("recovery-key: %v\n%s", err, out)
	}
	priv, pub := filepath.Join(dir, recoveryPrivateName), filepath.Join(dir, recoveryPublicName)
	for path, mode := range map[string]os.FileMode{priv: 0o600, pub: 0o644} {
		st, err := os.Stat(path)
		if err != nil || st.Mode().Perm() != mode {
			t.Fatalf("%s: %v, mode %v, want %v", path, err, st.Mode().Perm(), mode)
		}
	}
	text, _ := os.ReadFile(pub)
	k, err := recovery.ParsePublic(text)
	if err != nil || k.KEM() != recovery.KEMX25519 || !strings.Contains(out, k.ID().String()) {
		t.Fatalf("public key: %v, %v", k, err)
	}
	if _, err := runCLI("recovery-key", "--out", dir); err == nil || !strings.Contains(err.Error(), "not overwriting") {
		t.Fatalf("second run into the same directory: %v", err)
	}
	if _, err := runCLI("recovery-key", "--private", filepath.Join(dir, "p.pem"), "--public", filepath.Join(dir, "q.pem"), "--kem", "p256"); err != nil {
		t.Fatal(err)
	}
	text, _ = os.ReadFile(filepath.Join(dir, "q.pem"))
	if k, err := recovery.ParsePublic(text); err != nil || k.KEM() != recovery.KEMP256 {
		t.Fatalf("--kem p256: %v, %v", k, err)
	}
	for _, args := range [][]string{{"recovery-key"}, {"recovery-key", "--out", dir, "--private", "x"}, {"recovery-key", "--out", t.TempDir(), "--kem", "mlkem"}} {
		if _, err := runCLI(args...); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}

// newRecoveryFiles makes a key pair with the command and returns the private key's path and
// the public key.
func newRecoveryFiles(t *testing.T) (string, *recovery.PublicKey) {
	dir := t.TempDir()
	if _, err := runCLI("recovery-key", "--out", dir); err != nil {
		t.Fatal(err)
	}
	text, _ := os.ReadFile(filepath.Join(dir, recoveryPublicName))
	pub, err := recovery.ParsePublic(text)
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, recoveryPrivateName), pub
}

// decrypt with the recovery key reads a kms v2 value with no plugin and no Vault (the config's
// socket does not exist); a value without a seal of that key fails and says why.
func TestDecryptWithRecoveryKey(t *testing.T) {
	const etcdKey = "/registry/secrets/prod/db"
	privPath, pub := newRecoveryFiles(t)
	config := writeEncConfig(t, "      - kms: {apiVersion: v2, name: vault, endpoint: unix:///nonexistent/kms.sock}\n")
	value := kmsValue(t, pub, etcdKey)
	valueFile := filepath.Join(t.TempDir(), "value")
	os.WriteFile(valueFile, value, 0o600)

	out, err := runWithStdin(value, "decrypt", "--encryption-config", config, "--etcd-key", etcdKey, "--recovery-private-key", privPath, "-o", "json")
	if err != nil || !strings.Contains(string(out), `"password": "aHVudGVyMg=="`) {
		t.Fatalf("decrypt with the recovery key: %v\n%s", err, out)
	}
	key, _ := os.ReadFile(privPath)
	out, err = runWithStdin(key, "decrypt", "--encryption-config", config, "--etcd-key", etcdKey, "--recovery-private-key", "-", "--in", valueFile, "-o", "json")
	if err != nil || !strings.Contains(string(out), `"password": "aHVudGVyMg=="`) {
		t.Fatalf("decrypt with the recovery key from stdin: %v\n%s", err, out)
	}
	if _, err := runWithStdin(key, "decrypt", "--encryption-config", config, "--etcd-key", etcdKey, "--recovery-private-key", "-"); err == nil || !strings.Contains(err.Error(), "--in FILE") {
		t.Fatalf("key and value both on stdin: %v", err)
	}
	// Without the key: the plugin's socket is needed, and missing.
	if _, err := runWithStdin(value, "decrypt", "--encryption-config", config, "--etcd-key", etcdKey); err == nil {
		t.Fatal("decrypt without the recovery key and without a plugin succeeded")
	}
	// A value without a seal, one sealed to another key, one moved to another etcd key.
	otherPriv, otherPub := newRecoveryFiles(t)
	_ = otherPriv
	for name, tc := range map[string]struct {
		value []byte
		key   string
		want  string
	}{
		"no seal":         {kmsValue(t, nil, etcdKey), etcdKey, "carries no seal"},
		"another key":     {kmsValue(t, otherPub, etcdKey), etcdKey, "carries no seal"},
		"moved etcd key":  {value, "/registry/secrets/prod/other", "failed authentication"},
		"public key file": {value, etcdKey, ""},
	} {
		t.Run(name, func(t *testing.T) {
			keyPath := privPath
			if name == "public key file" {
				keyPath = filepath.Join(filepath.Dir(privPath), recoveryPublicName)
				os.Chmod(keyPath, 0o600)
				tc.want = "a \"KMS-PLUGIN RECOVERY PUBLIC KEY\" block"
			}
			_, err := runWithStdin(tc.value, "decrypt", "--encryption-config", config, "--etcd-key", tc.key, "--recovery-private-key", keyPath)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to say %q", err, tc.want)
			}
		})
	}
	// The private key file must be the owner's alone.
	os.Chmod(privPath, 0o644)
	if _, err := runWithStdin(value, "decrypt", "--encryption-config", config, "--etcd-key", etcdKey, "--recovery-private-key", privPath); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("private key readable by others: %v", err)
	}
}

// scan lists the objects that carry a recovery seal under the recovery key's id, and with the
// private key counts which open with it alone (real etcd).
func TestScanWithRecoveryKey(t *testing.T) {
	e := harness.StartEtcdMTLS(t)
	endpoint, etcd := e.Endpoints[0], e.Client
	privPath, pub := newRecoveryFiles(t)
	for key, v := range map[string][]byte{
		"/registry/secrets/default/a": kmsValue(t, pub, "/registry/secrets/default/a"),
		"/registry/secrets/default/b": kmsValue(t, pub, "/registry/secrets/default/b"),
		"/registry/secrets/default/c": kmsValue(t, nil, "/registry/secrets/default/c"),
		// Its seed opens with the key, its data does not: it was written for another etcd key.
		"/registry/secrets/default/d": kmsValue(t, pub, "/registry/secrets/default/a"),
	} {
		if _, err := etcd.Put(context.Background(), key, string(v)); err != nil {
			t.Fatal(err)
		}
	}
	etcdFlags := []string{"--etcd-endpoints", endpoint, "--etcd-cacert", e.CAFile, "--etcd-cert", e.ClientCert, "--etcd-key", e.ClientKey}
	out, err := runCLI(append([]string{"scan"}, etcdFlags...)...)
	if err != nil || !strings.Contains(out, "RECOVERY KEY") || !strings.Contains(out, "recovery key "+pub.ID().String()+": 3 objects carry its seal") {
		t.Fatalf("scan: %v\n%s", err, out)
	}
	out, err = runCLI(append([]string{"scan", "--recovery-private-key", privPath}, etcdFlags...)...)
	if err != nil || !strings.Contains(out, "2 of 4 kms v2 objects open with it alone, 1 do not open, 1 carry no seal of it") || !strings.Contains(out, "/registry/secrets/default/c") || !strings.Contains(out, "/registry/secrets/default/d") {
		t.Fatalf("scan --recovery-private-key: %v\n%s", err, out)
	}
	_, err = runCLI(append([]string{"scan", "--recovery-private-key", privPath, "--fail-on-unrecoverable"}, etcdFlags...)...)
	var failed checkFailure
	if !errors.As(err, &failed) || !strings.Contains(err.Error(), "2 of 4 kms v2 objects do not open") {
		t.Fatalf("--fail-on-unrecoverable: %v", err)
	}
	if _, err := runCLI(append([]string{"scan", "--fail-on-unrecoverable"}, etcdFlags...)...); err == nil {
		t.Fatal("--fail-on-unrecoverable without the key: no error")
	}
}

// doctor judges the recovery flags as serve does.
func TestDoctorRecoveryFlags(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys.yaml")
	if _, err := runCLI("keygen", "--localaes-key-file", keys); err != nil {
		t.Fatal(err)
	}
	privPath, pub := newRecoveryFiles(t)
	base := []string{"doctor", "--listen", filepath.Join(dir, "kms.sock"), "--localaes-key-file", keys, "--health-addr", "127.0.0.1:0"}
	out, err := runCLI(append(base, "--break-glass-recovery-key", privPath, "--break-glass-until", time.Now().Add(2*time.Hour).UTC().Format(time.RFC3339))...)
	if err != nil || !strings.Contains(out, "BREAK-GLASS with recovery key "+pub.ID().String()) {
		t.Fatalf("doctor in break-glass mode: %v\n%s", err, out)
	}
	pubPath := filepath.Join(filepath.Dir(privPath), recoveryPublicName)
	out, err = runCLI(append(base, "--recovery-public-key", pubPath)...)
	if err == nil || !strings.Contains(out, "needs --backend vault in local KEK mode") {
		t.Fatalf("doctor with a recovery public key and localaes: %v\n%s", err, out)
	}
}
