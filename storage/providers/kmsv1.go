package providers

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	kmsv1 "k8s.io/kms/apis/v1beta1"

	"github.com/kmsplugin/kms-plugin/internal/kmsclient"
)

// KMSv1 reads "k8s:enc:kms:v1:<name>:" values, left by apiservers that used the deprecated
// v1beta1 KMS API: uint16 big-endian length || encrypted DEK || data, the data sealed by
// AES-GCM with the etcd key as additional data, or (apiservers up to 1.24) by AES-CBC. It
// does not write: a v1 plugin is asked to encrypt on every write, and v1 is off by default
// since Kubernetes 1.29.
type KMSv1 struct {
	name    string
	client  kmsv1.KeyManagementServiceClient
	timeout time.Duration

	mu   sync.Mutex
	deks map[string][]byte // encrypted DEK -> DEK
}

// NewKMSv1Provider returns the "k8s:enc:kms:v1:<name>:" link.
func NewKMSv1Provider(name string, client kmsv1.KeyManagementServiceClient, timeout time.Duration) Link {
	if timeout <= 0 {
		timeout = kmsclient.APIServerTimeout
	}
	return Link{Prefix: KMSv1Prefix + name + ":", Transformer: &KMSv1{name: name, client: client, timeout: timeout, deks: map[string][]byte{}}}
}

// Encrypt refuses: see the type's comment.
func (t *KMSv1) Encrypt(context.Context, []byte, []byte, []byte) ([]byte, error) {
	return nil, errors.New("kms v1 is read-only here: make a kms v2 or local provider the first provider")
}

// Decrypt opens a kms v1 value, trying AES-GCM and then AES-CBC as the apiserver does.
func (t *KMSv1) Decrypt(ctx context.Context, data, etcdKey []byte) ([]byte, error) {
	if len(data) < 2 || len(data)-2 < int(binary.BigEndian.Uint16(data)) {
		return nil, fmt.Errorf("%w: kms v1 value too short for its DEK", ErrMalformed)
	}
	n := int(binary.BigEndian.Uint16(data))
	encDEK, body := data[2:2+n], data[2+n:]
	dek, err := t.dek(ctx, encDEK)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(dek)
	if err != nil {
		return nil, fmt.Errorf("%w: kms provider %q returned a DEK: %v", ErrKMS, t.name, err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	out, gcmErr := gcmOpen(aead, "kms v1 "+t.name+" (AES-GCM)", body, etcdKey)
	if gcmErr == nil {
		return out, nil
	}
	out, cbcErr := (&AESCBC{block: block}).Decrypt(ctx, body, nil)
	if cbcErr == nil {
		return out, nil
	}
	return nil, errors.Join(gcmErr, cbcErr)
}

func (t *KMSv1) dek(ctx context.Context, encDEK []byte) ([]byte, error) {
	t.mu.Lock()
	dek, ok := t.deks[string(encDEK)]
	t.mu.Unlock()
	if ok {
		return dek, nil
	}
	cctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	resp, err := t.client.Decrypt(cctx, &kmsv1.DecryptRequest{Version: "v1beta1", Cipher: encDEK})
	if err != nil {
		return nil, fmt.Errorf("%w: kms v1 provider %q, Decrypt of the DEK: %v", ErrKMS, t.name, err)
	}
	t.mu.Lock()
	t.deks[string(encDEK)] = resp.Plain
	t.mu.Unlock()
	return resp.Plain, nil
}
