package providers_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/server/options/encryptionconfig"
	"k8s.io/apiserver/pkg/storage/value"
	aestransformer "k8s.io/apiserver/pkg/storage/value/encrypt/aes"
	"k8s.io/apiserver/pkg/storage/value/encrypt/envelope"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"
	kmsv1 "k8s.io/kms/apis/v1beta1"

	"github.com/kmsplugin/kms-plugin/internal/testing/plugintest"
	"github.com/kmsplugin/kms-plugin/plugin"
	ourconfig "github.com/kmsplugin/kms-plugin/storage/encryptionconfig"
	"github.com/kmsplugin/kms-plugin/storage/providers"
)

// startPlugin serves our KMS v2 plugin (localaes backend) in-process on a temp socket.
func startPlugin(t testing.TB) string {
	return plugintest.ServeLocalAES(t, plugintest.Options{}).Socket
}

var shortTempDir = plugintest.ShortTempDir

func writeConfig(t testing.TB, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "encryption.yaml")
	if err := os.WriteFile(path, []byte("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n"+body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// apiserverTransformer loads path with kube-apiserver's own loader and waits until its KMS
// v2 transformer has its first DEK seed (it asks the plugin at load time, and retries).
func apiserverTransformer(t testing.TB, path string, gr schema.GroupResource) value.Transformer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	loaded, err := encryptionconfig.LoadEncryptionConfig(ctx, path, false, "test-apiserver")
	if err != nil {
		t.Fatal(err)
	}
	tr := loaded.Transformers[gr]
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := tr.TransformToStorage(ctx, []byte("probe"), value.DefaultContext("/registry/probe"))
		if err == nil {
			return tr
		}
		if time.Now().After(deadline) {
			t.Fatalf("apiserver transformer never became ready: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func loadOurs(t *testing.T, path string) *ourconfig.Config {
	t.Helper()
	c, err := ourconfig.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// KMS v2 values written by kube-apiserver's kmsv2 envelope transformer (through its
// encryption-config loader, talking to our plugin on its socket) read with ours, and the
// other way round; a value moved to another etcd key or changed fails. Both DEK source types:
// the HKDF seed every current apiserver writes, and the plain AES key of 1.27-1.28.
func TestKMSv2Differential(t *testing.T) {
	socket := startPlugin(t)
	secrets := schema.GroupResource{Resource: "secrets"}
	for _, tc := range []struct {
		name    string
		useSeed bool
	}{{"kmsv2-seed", true}, {"kmsv2-aeskey", false}} {
		t.Run(tc.name, func(t *testing.T) {
			defer encryptionconfig.SetKDFForTests(tc.name, tc.useSeed)()
			path := writeConfig(t, fmt.Sprintf(`resources:
  - resources: [secrets]
    providers:
      - kms: {apiVersion: v2, name: %s, endpoint: "unix://%s", timeout: 3s}
      - identity: {}
`, tc.name, socket))
			ref := apiserverTransformer(t, path, secrets)
			ours := loadOurs(t, path).TransformerFor(ourconfig.GroupResource{Resource: "secrets"})
			r := rand.New(rand.NewPCG(5, 5))
			for _, n := range sizes(r, 30) {
				plain := randomBytes(r, n)
				etcdKey := fmt.Sprintf("/registry/secrets/ns/s%d", n)

				stored := refEncrypt(t, ref, plain, etcdKey)
				o, err := providers.ParseEncryptedObject(stored[len(providers.KMSv2Prefix+tc.name+":"):])
				if err != nil {
					t.Fatal(err)
				}
				if wantType := map[bool]kmstypes.EncryptedDEKSourceType{true: 1, false: 0}[tc.useSeed]; o.EncryptedDEKSourceType != wantType {
					t.Fatalf("apiserver wrote DEK source type %d", o.EncryptedDEKSourceType)
				}
				got, err := ours.Decrypt(bg, stored, []byte(etcdKey))
				if err != nil || !bytes.Equal(got, plain) {
					t.Fatalf("%d bytes: apiserver wrote, ours read: %v", n, err)
				}
				if _, err := ours.Decrypt(bg, stored, []byte(etcdKey+"x")); !errors.Is(err, providers.ErrAuthentication) {
					t.Fatalf("moved value: %v", err)
				}
				// Any changed byte of the encrypted data fails. (The key id is not authenticated,
				// by the apiserver either: the plugin finds its key from the encrypted DEK source.)
				prefix := stored[:len(providers.KMSv2Prefix+tc.name+":")]
				o.EncryptedData[r.IntN(len(o.EncryptedData))] ^= byte(1 + r.IntN(255))
				tampered := append(bytes.Clone(prefix), marshal(t, o)...)
				if _, err := ours.Decrypt(bg, tampered, []byte(etcdKey)); !errors.Is(err, providers.ErrAuthentication) && !errors.Is(err, providers.ErrMalformed) {
					t.Fatalf("tampered value: %v", err)
				}
				if _, err := refDecrypt(ref, tampered, etcdKey); err == nil {
					t.Fatal("the apiserver read the tampered value")
				}

				if !tc.useSeed {
					continue // ours writes only the seed type, as every current apiserver does
				}
				stored, err = ours.Encrypt(bg, nil, plain, []byte(etcdKey))
				if err != nil {
					t.Fatal(err)
				}
				got, err = refDecrypt(ref, stored, etcdKey)
				if err != nil || !bytes.Equal(got, plain) {
					t.Fatalf("%d bytes: ours wrote, apiserver read: %v", n, err)
				}
				// Encrypt writes field 1 itself: the bytes are what proto.Marshal would give.
				body := stored[len(providers.KMSv2Prefix+tc.name+":"):]
				if o, err := providers.ParseEncryptedObject(body); err != nil || !bytes.Equal(marshal(t, o), body) {
					t.Fatalf("our EncryptedObject differs from proto.Marshal's encoding of it (%v)", err)
				}
				if _, err := refDecrypt(ref, stored, etcdKey+"x"); err == nil {
					t.Fatal("apiserver read our value under another etcd key")
				}
			}
		})
	}
}

// A kms v2 value whose plugin is not running fails with a clear error, not a hang.
func TestKMSv2PluginDown(t *testing.T) {
	socket := startPlugin(t)
	defer encryptionconfig.SetKDFForTests("down", true)()
	body := fmt.Sprintf(`resources:
  - resources: [secrets]
    providers:
      - kms: {apiVersion: v2, name: down, endpoint: "unix://%s", timeout: 1s}
`, socket)
	ref := apiserverTransformer(t, writeConfig(t, body), schema.GroupResource{Resource: "secrets"})
	stored := refEncrypt(t, ref, []byte("x"), "/registry/secrets/a/b")
	ours := loadOurs(t, writeConfig(t, fmt.Sprintf(`resources:
  - resources: [secrets]
    providers:
      - kms: {apiVersion: v2, name: down, endpoint: "unix://%s", timeout: 1s}
`, filepath.Join(shortTempDir(t), "none.sock")))).TransformerFor(ourconfig.GroupResource{Resource: "secrets"})
	if _, err := ours.Decrypt(bg, stored, []byte("/registry/secrets/a/b")); !errors.Is(err, providers.ErrKMS) {
		t.Fatalf("plugin down: %v", err)
	}
}

// fakeKMSv1 is a v1beta1 plugin for reading old data: its "encryption" is AES-GCM under a
// fixed test key. It serves both the apiserver's envelope.Service and the gRPC API.
type fakeKMSv1 struct {
	kmsv1.UnimplementedKeyManagementServiceServer
	aead cipher.AEAD
}

func newFakeKMSv1() *fakeKMSv1 {
	key := sha256.Sum256([]byte("kms v1 test key"))
	block, _ := aes.NewCipher(key[:])
	aead, _ := cipher.NewGCM(block)
	return &fakeKMSv1{aead: aead}
}

func (f *fakeKMSv1) Encrypt(data []byte) ([]byte, error) {
	nonce := make([]byte, 12)
	return f.aead.Seal(nonce, nonce, data, nil), nil
}

func (f *fakeKMSv1) Decrypt(data []byte) ([]byte, error) {
	if len(data) < 12 {
		return nil, errors.New("short")
	}
	return f.aead.Open(nil, data[:12], data[12:], nil)
}

type fakeKMSv1GRPC struct {
	kmsv1.UnimplementedKeyManagementServiceServer
	f *fakeKMSv1
}

func (g fakeKMSv1GRPC) Decrypt(_ context.Context, r *kmsv1.DecryptRequest) (*kmsv1.DecryptResponse, error) {
	p, err := g.f.Decrypt(r.Cipher)
	return &kmsv1.DecryptResponse{Plain: p}, err
}

// KMS v1 values written by the apiserver's v1 envelope transformer, with AES-GCM (1.25+) and
// AES-CBC (up to 1.24), read with ours through a v1beta1 plugin socket.
func TestKMSv1ReadsOldValues(t *testing.T) {
	f := newFakeKMSv1()
	socket := filepath.Join(shortTempDir(t), "v1.sock")
	lis, err := plugin.Listen(socket, plugin.SocketOptions{GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	kmsv1.RegisterKeyManagementServiceServer(srv, fakeKMSv1GRPC{f: f})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	ours := loadOurs(t, writeConfig(t, fmt.Sprintf(`resources:
  - resources: [secrets]
    providers:
      - kms: {name: old, endpoint: "unix://%s", cachesize: 10}
      - identity: {}
`, socket))).TransformerFor(ourconfig.GroupResource{Resource: "secrets"})

	for name, base := range map[string]func(cipher.Block) (value.Transformer, error){
		"gcm": aestransformer.NewGCMTransformer,
		"cbc": func(b cipher.Block) (value.Transformer, error) { return aestransformer.NewCBCTransformer(b), nil },
	} {
		ref := value.NewPrefixTransformers(nil, value.PrefixTransformer{
			Prefix: []byte("k8s:enc:kms:v1:old:"), Transformer: envelope.NewEnvelopeTransformer(f, 10, base),
		})
		r := rand.New(rand.NewPCG(6, 6))
		for _, n := range sizes(r, 15) {
			plain := randomBytes(r, n)
			stored := refEncrypt(t, ref, plain, "/registry/secrets/a/b")
			got, err := ours.Decrypt(bg, stored, []byte("/registry/secrets/a/b"))
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("%s, %d bytes: %v", name, n, err)
			}
		}
	}
	if _, err := ours.Encrypt(bg, nil, []byte("x"), nil); err == nil {
		t.Fatal("kms v1 wrote a value")
	}
}

// marshal encodes o as the apiserver does (proto.Marshal), annotations in name order.
func marshal(t *testing.T, o *kmstypes.EncryptedObject) []byte {
	t.Helper()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
