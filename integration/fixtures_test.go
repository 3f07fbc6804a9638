package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	apiserverv1 "k8s.io/apiserver/pkg/apis/apiserver/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/kmsplugin/kms-plugin/integration/harness"
)

// kekBackend is a KEK backend under test. Plugins started with pluginArgs share one KEK (the
// same key file; the same Vault key), as the plugins of several control-plane nodes do.
type kekBackend interface {
	pluginArgs() []string
	// rotate makes a new key the write key, gets every plugin to use it, and returns the key
	// id they now report.
	rotate(t *testing.T, plugins ...*harness.Plugin) string
}

// providerConfig is one provider of an EncryptionConfiguration.
type providerConfig = apiserverv1.ProviderConfiguration

// provider is the KMS provider's name in every EncryptionConfiguration of these tests.
const provider = "kms-plugin"

// encrypted are the resources the tests encrypt.
var encrypted = []string{"secrets", "configmaps"}

// object is a Secret or ConfigMap a test wrote, with the random value that must never appear
// in etcd in plaintext.
type object struct {
	resource, namespace, name string
	value                     string
}

func (o *object) key() string { return harness.Key(o.resource, o.namespace, o.name) }

func (o *object) String() string { return o.resource + "/" + o.namespace + "/" + o.name }

func randomHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func createNamespace(t *testing.T, cs kubernetes.Interface, name string) {
	t.Helper()
	_, err := cs.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating namespace %s: %v", name, err)
	}
}

// create writes a Secret or ConfigMap holding a fresh random value.
func create(t *testing.T, cs kubernetes.Interface, resource, namespace, name string) *object {
	t.Helper()
	o := &object{resource: resource, namespace: namespace, name: name, value: "plaintext-" + randomHex(t, 24)}
	meta := metav1.ObjectMeta{Name: name, Namespace: namespace}
	var err error
	switch resource {
	case "secrets":
		_, err = cs.CoreV1().Secrets(namespace).Create(t.Context(), &corev1.Secret{ObjectMeta: meta, Data: map[string][]byte{"value": []byte(o.value)}}, metav1.CreateOptions{})
	case "configmaps":
		_, err = cs.CoreV1().ConfigMaps(namespace).Create(t.Context(), &corev1.ConfigMap{ObjectMeta: meta, Data: map[string]string{"value": o.value}}, metav1.CreateOptions{})
	default:
		t.Fatalf("create: resource %q", resource)
	}
	if err != nil {
		t.Fatalf("creating %s: %v", o, err)
	}
	return o
}

// createMany writes n Secrets and n ConfigMaps named prefix-<i>.
func createMany(t *testing.T, cs kubernetes.Interface, namespace, prefix string, n int) []*object {
	t.Helper()
	var out []*object
	for i := range n {
		for _, r := range encrypted {
			out = append(out, create(t, cs, r, namespace, fmt.Sprintf("%s-%d", prefix, i)))
		}
	}
	return out
}

// get returns the object's value as the apiserver reads it now.
func (o *object) get(ctx context.Context, cs kubernetes.Interface) (string, error) {
	switch o.resource {
	case "secrets":
		s, err := cs.CoreV1().Secrets(o.namespace).Get(ctx, o.name, metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		return string(s.Data["value"]), nil
	default:
		c, err := cs.CoreV1().ConfigMaps(o.namespace).Get(ctx, o.name, metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		return c.Data["value"], nil
	}
}

// checkReads fails the test unless every object reads back with its value.
func checkReads(t *testing.T, cs kubernetes.Interface, objs ...*object) {
	t.Helper()
	for _, o := range objs {
		got, err := o.get(t.Context(), cs)
		if err != nil {
			t.Errorf("reading %s: %v", o, err)
		} else if got != o.value {
			t.Errorf("%s reads %q, want %q", o, got, o.value)
		}
	}
}

// setValue stores a new random value in the object (a write through the current write
// provider).
func (o *object) setValue(ctx context.Context, cs kubernetes.Interface) error {
	value := "plaintext-" + fmt.Sprint(time.Now().UnixNano())
	var err error
	switch o.resource {
	case "secrets":
		var s *corev1.Secret
		if s, err = cs.CoreV1().Secrets(o.namespace).Get(ctx, o.name, metav1.GetOptions{}); err == nil {
			s.Data["value"] = []byte(value)
			_, err = cs.CoreV1().Secrets(o.namespace).Update(ctx, s, metav1.UpdateOptions{})
		}
	default:
		var c *corev1.ConfigMap
		if c, err = cs.CoreV1().ConfigMaps(o.namespace).Get(ctx, o.name, metav1.GetOptions{}); err == nil {
			c.Data["value"] = value
			_, err = cs.CoreV1().ConfigMaps(o.namespace).Update(ctx, c, metav1.UpdateOptions{})
		}
	}
	if err == nil {
		o.value = value
	}
	return err
}

// migrate is the storage migration of the docs (`kubectl get secrets -A -o json | kubectl
// replace -f -`) for every Secret and ConfigMap: read each and write it back unchanged. The
// apiserver rewrites an unchanged object only when it is stale, that is, when it was read
// through a provider or key other than the current write one.
func migrate(t *testing.T, cs kubernetes.Interface) {
	t.Helper()
	ctx := t.Context()
	secrets, err := cs.CoreV1().Secrets("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("listing secrets: %v", err)
	}
	for _, s := range secrets.Items {
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			cur, err := cs.CoreV1().Secrets(s.Namespace).Get(ctx, s.Name, metav1.GetOptions{})
			if err == nil {
				_, err = cs.CoreV1().Secrets(s.Namespace).Update(ctx, cur, metav1.UpdateOptions{})
			}
			return err
		})
		if err != nil {
			t.Fatalf("migrating secret %s/%s: %v", s.Namespace, s.Name, err)
		}
	}
	configMaps, err := cs.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("listing configmaps: %v", err)
	}
	for _, c := range configMaps.Items {
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			cur, err := cs.CoreV1().ConfigMaps(c.Namespace).Get(ctx, c.Name, metav1.GetOptions{})
			if err == nil {
				_, err = cs.CoreV1().ConfigMaps(c.Namespace).Update(ctx, cur, metav1.UpdateOptions{})
			}
			return err
		})
		if err != nil {
			t.Fatalf("migrating configmap %s/%s: %v", c.Namespace, c.Name, err)
		}
	}
}

// kmsStored checks the raw etcd value of o: written by our KMS v2 provider under keyID, with
// neither its value nor that value's base64 anywhere in it.
func kmsStored(raw []byte, o *object, keyID string) error {
	if raw == nil {
		return fmt.Errorf("%s: not in etcd", o)
	}
	if err := hasNoPlaintext(raw, o.value); err != nil {
		return fmt.Errorf("%s: %w", o, err)
	}
	v, err := harness.ParseKMSv2(raw, provider)
	if err != nil {
		return fmt.Errorf("%s: %w", o, err)
	}
	if v.KeyID != keyID {
		return fmt.Errorf("%s: stored under key id %q, want %q", o, v.KeyID, keyID)
	}
	return nil
}

func hasNoPlaintext(raw []byte, value string) error {
	for _, form := range []string{value, base64.StdEncoding.EncodeToString([]byte(value))} {
		if bytes.Contains(raw, []byte(form)) {
			return fmt.Errorf("the plaintext value is in etcd: %.60q", raw)
		}
	}
	return nil
}

// checkKMSStored fails the test unless every object is stored by KMS v2 under keyID.
func checkKMSStored(t *testing.T, e *harness.Etcd, keyID string, objs ...*object) {
	t.Helper()
	for _, o := range objs {
		if err := kmsStored(e.Get(t, o.key()), o, keyID); err != nil {
			t.Error(err)
		}
	}
}

// checkAllKMSStored fails the test unless every object of resources in etcd (Secrets and
// ConfigMaps when none are named), the apiserver's own included, is stored by KMS v2 under
// keyID, and there is at least one.
func checkAllKMSStored(t *testing.T, e *harness.Etcd, keyID string, resources ...string) {
	t.Helper()
	if len(resources) == 0 {
		resources = encrypted
	}
	n := 0
	for _, r := range resources {
		for key, raw := range e.List(t, "/registry/"+r+"/") {
			n++
			v, err := harness.ParseKMSv2(raw, provider)
			if err != nil {
				t.Errorf("%s: %v", key, err)
			} else if v.KeyID != keyID {
				t.Errorf("%s: stored under key id %q, want %q", key, v.KeyID, keyID)
			}
		}
	}
	if n == 0 {
		t.Errorf("no %v in etcd at all", resources)
	}
}

// waitForWrites rewrites probe until its stored value satisfies check: the way to see that
// the apiserver has switched its write key or provider. Each attempt also asks
// /readyz/kms-providers, as kubelet's readiness probe does, which makes the apiserver call
// Status once its cached answer expires instead of at its next 60 s poll.
func waitForWrites(t *testing.T, c *harness.Cluster, timeout time.Duration, what string, probe *object, check func(raw []byte) error) {
	t.Helper()
	harness.Eventually(t, timeout, what, func(ctx context.Context) error {
		_, _, _ = c.APIServer.KMSHealth(ctx)
		if err := probe.setValue(ctx, c.APIServer.Clientset); err != nil {
			return err
		}
		if err := check(c.Etcd.Get(t, probe.key())); err != nil {
			time.Sleep(time.Second)
			return err
		}
		return nil
	})
}

// prefixOf is the storage prefix of a raw value, for messages.
func prefixOf(raw []byte) string {
	s := string(raw[:min(len(raw), 40)])
	if i := strings.LastIndex(s, ":"); strings.HasPrefix(s, "k8s:enc:") && i > 0 {
		return s[:i+1]
	}
	return "(no k8s:enc: prefix)"
}
