package harness

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	apiserverv1 "k8s.io/apiserver/pkg/apis/apiserver/v1"
	"sigs.k8s.io/yaml"
)

// Cluster is an etcd and one kube-apiserver on it.
type Cluster struct {
	Etcd      *Etcd
	APIServer *APIServer
}

// StartCluster starts a fresh etcd and a kube-apiserver on it with opts (EtcdServers is
// filled in), and waits until the apiserver is ready. A KMS provider's plugin must already
// serve: start it first with StartPlugin.
func StartCluster(t testing.TB, opts APIServerOptions) *Cluster {
	t.Helper()
	e := StartEtcd(t)
	opts.EtcdServers = e.Endpoints
	return &Cluster{Etcd: e, APIServer: StartKubeAPIServer(t, opts)}
}

// EncryptedCluster is a Cluster whose Secrets and ConfigMaps are encrypted by one kms-plugin.
type EncryptedCluster struct {
	Cluster
	Plugin   *Plugin
	Provider string // the KMS provider's name in the EncryptionConfiguration
}

// StartEncryptedCluster starts `kms-plugin serve pluginArgs...`, an etcd and a kube-apiserver
// whose EncryptionConfiguration encrypts Secrets and ConfigMaps with that plugin as the KMS
// v2 provider "kms-plugin" (identity as the read fallback), as our deploy/ examples do.
func StartEncryptedCluster(t testing.TB, pluginArgs ...string) *EncryptedCluster {
	t.Helper()
	const provider = "kms-plugin"
	p := StartPlugin(t, pluginArgs...)
	c := StartCluster(t, APIServerOptions{EncryptionConfig: EncryptionConfig(
		[]string{"secrets", "configmaps"}, KMSv2(provider, p.Endpoint), Identity())})
	return &EncryptedCluster{Cluster: *c, Plugin: p, Provider: provider}
}

// EncryptionConfig returns an EncryptionConfiguration (YAML) with one rule: resources use
// providers, the first of which encrypts writes.
func EncryptionConfig(resources []string, providers ...apiserverv1.ProviderConfiguration) string {
	cfg := apiserverv1.EncryptionConfiguration{
		TypeMeta:  metav1.TypeMeta{APIVersion: "apiserver.config.k8s.io/v1", Kind: "EncryptionConfiguration"},
		Resources: []apiserverv1.ResourceConfiguration{{Resources: resources, Providers: providers}},
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		panic(err) // plain structs always marshal
	}
	return string(b)
}

// KMSv2 is a KMS v2 provider named name on the plugin socket endpoint (unix:///...).
func KMSv2(name, endpoint string) apiserverv1.ProviderConfiguration {
	return apiserverv1.ProviderConfiguration{KMS: &apiserverv1.KMSConfiguration{
		APIVersion: "v2", Name: name, Endpoint: endpoint,
		Timeout: &metav1.Duration{Duration: 3 * time.Second},
	}}
}

// Identity is the provider that stores plaintext.
func Identity() apiserverv1.ProviderConfiguration {
	return apiserverv1.ProviderConfiguration{Identity: &apiserverv1.IdentityConfiguration{}}
}

// AESCBC, AESGCM and Secretbox are the apiserver's local providers with one key each.
func AESCBC(keyName string, key []byte) apiserverv1.ProviderConfiguration {
	return apiserverv1.ProviderConfiguration{AESCBC: aesKeys(keyName, key)}
}

// AESGCM: see AESCBC.
func AESGCM(keyName string, key []byte) apiserverv1.ProviderConfiguration {
	return apiserverv1.ProviderConfiguration{AESGCM: aesKeys(keyName, key)}
}

// Secretbox: see AESCBC.
func Secretbox(keyName string, key []byte) apiserverv1.ProviderConfiguration {
	return apiserverv1.ProviderConfiguration{Secretbox: &apiserverv1.SecretboxConfiguration{
		Keys: []apiserverv1.Key{{Name: keyName, Secret: base64.StdEncoding.EncodeToString(key)}},
	}}
}

func aesKeys(keyName string, key []byte) *apiserverv1.AESConfiguration {
	return &apiserverv1.AESConfiguration{
		Keys: []apiserverv1.Key{{Name: keyName, Secret: base64.StdEncoding.EncodeToString(key)}},
	}
}

// KMSv2Value is what a kube-apiserver stored for one object with a KMS v2 provider.
type KMSv2Value struct {
	Provider           string
	KeyID              string // the plugin's Status key id when the value was written
	EncryptedDEKSource []byte // what the plugin's Encrypt returned
	EncryptedData      []byte
}

// ParseKMSv2 reads a raw etcd value written by the KMS v2 provider named provider:
// "k8s:enc:kms:v2:<provider>:" and an EncryptedObject protobuf, of which it reads fields 1
// (encryptedData), 2 (keyID) and 3 (encryptedDEKSource). It is written apart from the
// plugin's own code on purpose: the tests check the plugin against the wire format, not
// against itself.
func ParseKMSv2(value []byte, provider string) (KMSv2Value, error) {
	prefix := []byte("k8s:enc:kms:v2:" + provider + ":")
	if !bytes.HasPrefix(value, prefix) {
		n := min(len(value), len(prefix)+8)
		return KMSv2Value{}, fmt.Errorf("value does not start with %q (starts with %q)", prefix, value[:n])
	}
	out := KMSv2Value{Provider: provider}
	b := value[len(prefix):]
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return out, fmt.Errorf("EncryptedObject: %w", protowire.ParseError(n))
		}
		b = b[n:]
		if typ != protowire.BytesType || num > 3 {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return out, fmt.Errorf("EncryptedObject field %d: %w", num, protowire.ParseError(n))
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return out, fmt.Errorf("EncryptedObject field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
		switch num {
		case 1:
			out.EncryptedData = v
		case 2:
			out.KeyID = string(v)
		case 3:
			out.EncryptedDEKSource = v
		}
	}
	if out.KeyID == "" || len(out.EncryptedDEKSource) == 0 || len(out.EncryptedData) == 0 {
		return out, errors.New("EncryptedObject lacks a key id, encrypted DEK source or data")
	}
	return out, nil
}
