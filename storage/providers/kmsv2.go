package providers

import (
	"context"
	"crypto/aes"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/internal/kmsclient"
)

const (
	seedSize = 32 // the apiserver's DEK seed, and the minimum it accepts on read
	infoSize = 32 // random HKDF info stored at the start of each value's encrypted data

	// fieldEncryptedData is EncryptedObject's field 1 (api.proto), which Encrypt writes itself
	// so that the data is sealed in place.
	fieldEncryptedData = 1
)

// KMSv2 reads and writes "k8s:enc:kms:v2:<name>:" values the way kube-apiserver does: the
// plugin decrypts the DEK seed named in each value (cached here by its encrypted form), and a
// key derived from the seed and the value's random info opens the data, with the etcd key as
// additional data. For writes it asks the plugin once to encrypt a fresh seed and derives a
// new key per value, as the apiserver does between key_id changes.
type KMSv2 struct {
	name    string
	client  kmsapi.KeyManagementServiceClient
	timeout time.Duration

	mu    sync.Mutex
	seeds map[string][]byte // cache key (see cacheKey) -> decrypted seed or key
	write *kmsWriteState
}

type kmsWriteState struct {
	seed []byte
	tail []byte // the EncryptedObject's fields after EncryptedData, encoded once
}

// NewKMSv2 returns the transformer of the kms v2 provider name, whose plugin answers on
// client; timeout bounds each plugin call (the provider's `timeout`, 3 s by default).
func NewKMSv2(name string, client kmsapi.KeyManagementServiceClient, timeout time.Duration) *KMSv2 {
	if timeout <= 0 {
		timeout = kmsclient.APIServerTimeout
	}
	return &KMSv2{name: name, client: client, timeout: timeout, seeds: map[string][]byte{}}
}

// NewKMSv2Provider returns the "k8s:enc:kms:v2:<name>:" link.
func NewKMSv2Provider(name string, client kmsapi.KeyManagementServiceClient, timeout time.Duration) Link {
	return Link{Prefix: KMSv2Prefix + name + ":", Transformer: NewKMSv2(name, client, timeout)}
}

// Decrypt opens an EncryptedObject.
func (t *KMSv2) Decrypt(ctx context.Context, data, etcdKey []byte) ([]byte, error) {
	o, err := ParseEncryptedObject(data)
	if err != nil {
		return nil, err
	}
	key, err := t.dataKey(ctx, o)
	if err != nil {
		return nil, err
	}
	enc := o.EncryptedData
	if o.EncryptedDEKSourceType == kmstypes.EncryptedDEKSourceType_HKDF_SHA256_XNONCE_AES_GCM_SEED {
		if len(enc) < infoSize {
			return nil, fmt.Errorf("%w: kms v2 encrypted data of %d bytes is shorter than its HKDF info", ErrMalformed, len(enc))
		}
		key, err = deriveKey(key, enc[:infoSize])
		if err != nil {
			return nil, err
		}
		enc = enc[infoSize:]
	}
	aead, err := newGCM(key)
	if err != nil {
		return nil, fmt.Errorf("%w: kms v2 data key: %v", ErrMalformed, err)
	}
	return gcmOpen(aead, "kms v2 "+t.name, enc, etcdKey)
}

// dataKey returns the seed (type 1) or AES key (type 0) that the plugin decrypts from o.
func (t *KMSv2) dataKey(ctx context.Context, o *kmstypes.EncryptedObject) ([]byte, error) {
	ck := cacheKey(o)
	t.mu.Lock()
	key, ok := t.seeds[ck]
	t.mu.Unlock()
	if ok {
		return key, nil
	}
	cctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	resp, err := t.client.Decrypt(cctx, &kmsapi.DecryptRequest{
		Ciphertext: o.EncryptedDEKSource, Uid: newUID(), KeyId: o.KeyID, Annotations: o.Annotations,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: kms provider %q, Decrypt of the DEK seed (key id %q): %v", ErrKMS, t.name, o.KeyID, err)
	}
	key = resp.Plaintext
	switch o.EncryptedDEKSourceType {
	case kmstypes.EncryptedDEKSourceType_HKDF_SHA256_XNONCE_AES_GCM_SEED:
		if len(key) < seedSize {
			return nil, fmt.Errorf("%w: kms provider %q returned a DEK seed of %d bytes, want at least %d", ErrKMS, t.name, len(key), seedSize)
		}
	default:
		if err := checkAESKeySize(key); err != nil {
			return nil, fmt.Errorf("%w: kms provider %q returned a DEK: %v", ErrKMS, t.name, err)
		}
	}
	t.mu.Lock()
	t.seeds[ck] = key
	t.mu.Unlock()
	return key, nil
}

// Encrypt writes an EncryptedObject of type HKDF seed, as every current apiserver does.
func (t *KMSv2) Encrypt(ctx context.Context, dst, plaintext, etcdKey []byte) ([]byte, error) {
	w, err := t.writeState(ctx)
	if err != nil {
		return nil, err
	}
	// Field 1 comes first in proto.Marshal's order, so the data is sealed in place after its
	// tag and length; the other fields follow, encoded once by proto.Marshal.
	encLen := infoSize + gcmNonceSize + len(plaintext) + gcmTagSize
	dst = protowire.AppendTag(dst, fieldEncryptedData, protowire.BytesType)
	dst = protowire.AppendVarint(dst, uint64(encLen))
	dst = slices.Grow(dst, encLen+len(w.tail))
	info := dst[len(dst) : len(dst)+infoSize]
	if _, err := rand.Read(info); err != nil {
		return nil, fmt.Errorf("kms v2: reading random HKDF info: %w", err)
	}
	key, err := deriveKey(w.seed, info)
	if err != nil {
		return nil, err
	}
	aead, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	dst, err = gcmSeal(aead, dst[:len(dst)+infoSize], plaintext, etcdKey)
	if err != nil {
		return nil, err
	}
	return append(dst, w.tail...), nil
}

// writeState asks the plugin once to encrypt a fresh seed.
func (t *KMSv2) writeState(ctx context.Context) (*kmsWriteState, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.write != nil {
		return t.write, nil
	}
	seed := make([]byte, seedSize)
	if _, err := rand.Read(seed); err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	resp, err := t.client.Encrypt(cctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: newUID()})
	if err != nil {
		return nil, fmt.Errorf("%w: kms provider %q, Encrypt of a new DEK seed: %v", ErrKMS, t.name, err)
	}
	obj := &kmstypes.EncryptedObject{
		EncryptedData:          []byte{0}, // for the validation; never written
		KeyID:                  resp.KeyId,
		EncryptedDEKSource:     resp.Ciphertext,
		Annotations:            resp.Annotations,
		EncryptedDEKSourceType: kmstypes.EncryptedDEKSourceType_HKDF_SHA256_XNONCE_AES_GCM_SEED,
	}
	if err := validateEncryptedObject(obj); err != nil {
		return nil, fmt.Errorf("%w: kms provider %q answered Encrypt with %v", ErrKMS, t.name, err)
	}
	obj.EncryptedData = nil
	// Deterministic: annotations in name order, so that equal answers give equal bytes.
	tail, err := proto.MarshalOptions{Deterministic: true}.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("kms v2: encoding the EncryptedObject: %w", err)
	}
	t.write = &kmsWriteState{seed: seed, tail: tail}
	return t.write, nil
}

// deriveKey is the apiserver's sha256KDFExpandOnly: HKDF-Expand without Extract.
func deriveKey(seed, info []byte) ([]byte, error) {
	key, err := hkdf.Expand(sha256.New, seed, string(info), aes.BlockSize*2)
	if err != nil {
		return nil, fmt.Errorf("kms v2: deriving the data key: %w", err)
	}
	return key, nil
}

// cacheKey identifies what the plugin would decrypt: type, encrypted source, key id and
// annotations, each length-prefixed so that no two objects share a key.
func cacheKey(o *kmstypes.EncryptedObject) string {
	b := binary.BigEndian.AppendUint32(nil, uint32(o.EncryptedDEKSourceType))
	add := func(p []byte) {
		b = binary.BigEndian.AppendUint32(b, uint32(len(p)))
		b = append(b, p...)
	}
	add(o.EncryptedDEKSource)
	add([]byte(o.KeyID))
	names := make([]string, 0, len(o.Annotations))
	for k := range o.Annotations {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		add([]byte(k))
		add(o.Annotations[k])
	}
	return string(b)
}

func newUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
