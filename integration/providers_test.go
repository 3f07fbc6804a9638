package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/kmsplugin/kms-plugin/integration/harness"
)

// A real kube-apiserver writes Secrets with each local provider (and with our plugin as KMS
// v2); `kmsctl decrypt`, given the apiserver's own EncryptionConfiguration file, reads
// the raw etcd values back to the exact objects; values that `kmsctl encrypt` makes and a
// test puts straight into etcd are served by the apiserver.
func TestLocalProvidersAgainstAPIServer(t *testing.T) {
	t.Parallel()
	bin := harness.KmsctlBinary(t)
	for _, tc := range []struct {
		name          string
		prefix        string
		authenticated bool // a changed byte always fails
		bindsKey      bool // a value moved to another etcd key fails
		config        func(t *testing.T) string
	}{
		{"aescbc", "k8s:enc:aescbc:v1:cbc1:", false, false, func(t *testing.T) string {
			return harness.EncryptionConfig([]string{"secrets"}, harness.AESCBC("cbc1", lpKey(t, 32)), harness.Identity())
		}},
		{"aesgcm", "k8s:enc:aesgcm:v1:gcm1:", true, true, func(t *testing.T) string {
			return harness.EncryptionConfig([]string{"secrets"}, harness.AESGCM("gcm1", lpKey(t, 16)), harness.Identity())
		}},
		{"secretbox", "k8s:enc:secretbox:v1:box1:", true, false, func(t *testing.T) string {
			return harness.EncryptionConfig([]string{"secrets"}, harness.Secretbox("box1", lpKey(t, 32)), harness.Identity())
		}},
		{"kmsv2", "k8s:enc:kms:v2:ours:", true, true, func(t *testing.T) string {
			keys := filepath.Join(t.TempDir(), "keys.yaml")
			lpRun(t, bin, nil, "keygen", "--localaes-key-file", keys)
			p := harness.StartPlugin(t, "--localaes-key-file", keys)
			return harness.EncryptionConfig([]string{"secrets"}, harness.KMSv2("ours", p.Endpoint), harness.Identity())
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := harness.StartCluster(t, harness.APIServerOptions{EncryptionConfig: tc.config(t)})
			cs, config := c.APIServer.Clientset, c.APIServer.EncryptionConfigPath()
			ctx := t.Context()
			ns := "lp-" + tc.name
			if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}

			// The apiserver writes; decrypt reads the raw etcd value.
			secret := "secret-value-" + rand.Text()
			if _, err := cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: "from-apiserver", Namespace: ns},
				Data:       map[string][]byte{"password": []byte(secret)},
			}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			key := harness.Key("secrets", ns, "from-apiserver")
			raw := c.Etcd.Get(t, key)
			if !bytes.HasPrefix(raw, []byte(tc.prefix)) || bytes.Contains(raw, []byte(secret)) {
				t.Fatalf("etcd holds %q...", raw[:min(len(raw), 40)])
			}
			in := filepath.Join(t.TempDir(), "value")
			os.WriteFile(in, raw, 0o600)
			stored := lpRun(t, bin, nil, "decrypt", "--encryption-config", config, "--etcd-key", key, "--in", in)
			got := lpSecret(t, stored)
			if got.Name != "from-apiserver" || string(got.Data["password"]) != secret {
				t.Fatalf("decrypt gave %s/%s with password %q", got.Namespace, got.Name, got.Data["password"])
			}
			asYAML := lpRun(t, bin, raw, "decrypt", "--encryption-config", config, "--etcd-key", key, "-o", "yaml")
			if !bytes.Contains(asYAML, []byte("kind: Secret")) || !bytes.Contains(asYAML, []byte("name: from-apiserver")) {
				t.Fatalf("decrypt -o yaml:\n%s", asYAML)
			}

			// Moved to another etcd key, and changed.
			moved := harness.Key("secrets", ns, "elsewhere")
			_, err := lpTry(bin, raw, "decrypt", "--encryption-config", config, "--etcd-key", moved)
			if tc.bindsKey != (err != nil) {
				t.Errorf("value read under another etcd key: error %v", err)
			}
			tampered := bytes.Clone(raw)
			tampered[len(tampered)-5] ^= 0x01
			if _, err := lpTry(bin, tampered, "decrypt", "--encryption-config", config, "--etcd-key", key); tc.authenticated && err == nil {
				t.Error("a changed value decrypted")
			}

			// encrypt makes a value; put into etcd, the apiserver serves it.
			manifest := fmt.Sprintf("apiVersion: v1\nkind: Secret\nmetadata:\n  name: from-cli\n  namespace: %s\ndata:\n  password: %s\n", ns, "aHVudGVyMg==")
			newKey := harness.Key("secrets", ns, "from-cli")
			value := lpRun(t, bin, []byte(manifest), "encrypt", "--encryption-config", config, "--etcd-key", newKey, "--input", "yaml")
			if !bytes.HasPrefix(value, []byte(tc.prefix)) || bytes.Contains(value, []byte("hunter2")) {
				t.Fatalf("encrypt wrote %q...", value[:min(len(value), 40)])
			}
			if _, err := c.Etcd.Client.Put(ctx, newKey, string(value)); err != nil {
				t.Fatal(err)
			}
			served, err := cs.CoreV1().Secrets(ns).Get(ctx, "from-cli", metav1.GetOptions{})
			if err != nil {
				t.Fatalf("the apiserver does not serve the value encrypt made: %v", err)
			}
			if string(served.Data["password"]) != "hunter2" {
				t.Fatalf("served password %q", served.Data["password"])
			}
			// And it rewrites it with its own writer on update, which decrypt reads again.
			served.Data["password"] = []byte("changed")
			if _, err := cs.CoreV1().Secrets(ns).Update(ctx, served, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			again := lpSecret(t, lpRun(t, bin, c.Etcd.Get(t, newKey), "decrypt", "--encryption-config", config, "--etcd-key", newKey))
			if string(again.Data["password"]) != "changed" {
				t.Fatalf("after update: %q", again.Data["password"])
			}
		})
	}
}

func lpKey(t *testing.T, n int) []byte {
	k := make([]byte, n)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// lpTry runs the kmsctl binary with stdin and returns its stdout, or its stderr as error.
func lpTry(bin string, stdin []byte, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(context.Background(), bin, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("kms-plugin %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.Bytes(), nil
}

func lpRun(t *testing.T, bin string, stdin []byte, args ...string) []byte {
	t.Helper()
	out, err := lpTry(bin, stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// lpSecret decodes a Secret in the apiserver's stored form (protobuf).
func lpSecret(t *testing.T, stored []byte) *corev1.Secret {
	t.Helper()
	obj, _, err := protobuf.NewSerializer(scheme.Scheme, scheme.Scheme).Decode(stored, nil, nil)
	if err != nil {
		t.Fatalf("decoding the stored object: %v", err)
	}
	s, ok := obj.(*corev1.Secret)
	if !ok {
		t.Fatalf("stored object is a %T", obj)
	}
	return s
}
