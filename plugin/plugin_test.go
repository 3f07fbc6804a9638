package plugin_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/backends/localaes"
	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/internal/clock"
	"github.com/kmsplugin/kms-plugin/internal/testing/plugintest"
	"github.com/kmsplugin/kms-plugin/plugin"
)

// faultKEK puts a switchable fault in front of a real localaes backend.
type faultKEK struct {
	*localaes.KEK
	mu    sync.Mutex
	err   error         // returned by Check, Wrap and Unwrap while set
	delay time.Duration // before Wrap and Unwrap, honouring the context
}

func (f *faultKEK) set(err error, delay time.Duration) {
	f.mu.Lock()
	f.err, f.delay = err, delay
	f.mu.Unlock()
}

func (f *faultKEK) fault(ctx context.Context) error {
	f.mu.Lock()
	err, delay := f.err, f.delay
	f.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return err
}

func (f *faultKEK) Check(ctx context.Context) error {
	if err := f.fault(ctx); err != nil {
		return err
	}
	return f.KEK.Check(ctx)
}

func (f *faultKEK) Wrap(ctx context.Context, id string, d []byte) ([]byte, error) {
	if err := f.fault(ctx); err != nil {
		return nil, err
	}
	return f.KEK.Wrap(ctx, id, d)
}

func (f *faultKEK) Unwrap(ctx context.Context, id string, w []byte) ([]byte, error) {
	if err := f.fault(ctx); err != nil {
		return nil, err
	}
	return f.KEK.Unwrap(ctx, id, w)
}

// testPlugin is a plugin served on a real unix socket, with a client connected to it.
type testPlugin struct {
	keyFile string
	kek     *faultKEK
	monitor *plugin.Monitor
	clock   *clock.Fake
	client  kmsapi.KeyManagementServiceClient
	socket  string
}

func startPlugin(t *testing.T) *testPlugin {
	t.Helper()
	keyFile := filepath.Join(shortTempDir(t), "keys.yaml")
	if _, err := localaes.AddKey(keyFile, "one", true); err != nil {
		t.Fatal(err)
	}
	backend, err := localaes.Open(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	kek := &faultKEK{KEK: backend}
	clk := clock.NewFake(time.Unix(1_800_000_000, 0))
	p := plugintest.Serve(t, kek, plugintest.Options{Clock: clk, Timeout: time.Second})
	return &testPlugin{keyFile: keyFile, kek: kek, monitor: p.Monitor, clock: clk, client: dial(t, p.Socket), socket: p.Socket}
}

func dial(t *testing.T, socket string) kmsapi.KeyManagementServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(1<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return kmsapi.NewKeyManagementServiceClient(conn)
}

var shortTempDir = plugintest.ShortTempDir

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestStatus(t *testing.T) {
	p := startPlugin(t)
	st, err := p.client.Status(ctx(t), &kmsapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Version != "v2" || st.Healthz != "ok" || !strings.HasPrefix(st.KeyId, "localaes:one:") {
		t.Fatalf("Status = %+v", st)
	}
}

func TestEncryptDecryptRoundTrip(t *testing.T) {
	p := startPlugin(t)
	st, _ := p.client.Status(ctx(t), &kmsapi.StatusRequest{})
	seed := bytes.Repeat([]byte{0x5a}, 32)
	enc, err := p.client.Encrypt(ctx(t), &kmsapi.EncryptRequest{Plaintext: seed, Uid: "uid-1"})
	if err != nil {
		t.Fatal(err)
	}
	if enc.KeyId != st.KeyId {
		t.Fatalf("Encrypt key_id %q != Status key_id %q", enc.KeyId, st.KeyId)
	}
	if len(enc.Ciphertext) == 0 || len(enc.Ciphertext) >= 1024 || bytes.Contains(enc.Ciphertext, seed) {
		t.Fatalf("ciphertext of %d bytes", len(enc.Ciphertext))
	}
	if len(enc.Annotations) != 0 {
		t.Fatalf("annotations %v", enc.Annotations)
	}
	dec, err := p.client.Decrypt(ctx(t), &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Uid: "uid-2"})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(dec.Plaintext, seed) {
		t.Fatal("Decrypt returned other plaintext")
	}
	// The envelope names its key: a wrong or missing request key_id does not matter.
	for _, kid := range []string{"", "some-other-id"} {
		dec, err := p.client.Decrypt(ctx(t), &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: kid})
		if err != nil || !bytes.Equal(dec.Plaintext, seed) {
			t.Fatalf("request key_id %q: %v", kid, err)
		}
	}
}

func TestRotation(t *testing.T) {
	p := startPlugin(t)
	c := ctx(t)
	before, _ := p.client.Status(c, &kmsapi.StatusRequest{})
	old, err := p.client.Encrypt(c, &kmsapi.EncryptRequest{Plaintext: []byte("old seed")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := localaes.AddKey(p.keyFile, "two", true); err != nil {
		t.Fatal(err)
	}
	if err := p.kek.Reload(); err != nil {
		t.Fatal(err)
	}
	p.monitor.Refresh(c)
	after, _ := p.client.Status(c, &kmsapi.StatusRequest{})
	if after.KeyId == before.KeyId || !strings.HasPrefix(after.KeyId, "localaes:two:") || after.Healthz != "ok" {
		t.Fatalf("after rotation Status = %+v (before %q)", after, before.KeyId)
	}
	enc, err := p.client.Encrypt(c, &kmsapi.EncryptRequest{Plaintext: []byte("new seed")})
	if err != nil || enc.KeyId != after.KeyId {
		t.Fatalf("Encrypt after rotation: key_id %q, %v", enc.GetKeyId(), err)
	}
	for _, ct := range [][]byte{old.Ciphertext, enc.Ciphertext} {
		if _, err := p.client.Decrypt(c, &kmsapi.DecryptRequest{Ciphertext: ct, KeyId: after.KeyId}); err != nil {
			t.Fatalf("Decrypt after rotation: %v", err)
		}
	}
	// Retiring the old key: its data fails with FailedPrecondition, never other plaintext.
	raw, _ := os.ReadFile(p.keyFile)
	lines := strings.Split(string(raw), "\n")
	os.WriteFile(p.keyFile, []byte(strings.Join(lines[:3], "\n")+"\n"), 0o600)
	if err := p.kek.Reload(); err != nil {
		t.Fatal(err)
	}
	_, err = p.client.Decrypt(c, &kmsapi.DecryptRequest{Ciphertext: old.Ciphertext})
	wantCode(t, err, codes.FailedPrecondition)
}

func TestBadInput(t *testing.T) {
	p := startPlugin(t)
	c := ctx(t)
	enc, err := p.client.Encrypt(c, &kmsapi.EncryptRequest{Plaintext: []byte("seed")})
	if err != nil {
		t.Fatal(err)
	}
	ct := enc.Ciphertext
	flipped := bytes.Clone(ct)
	flipped[len(flipped)-1] ^= 1
	wrappedFlipped := bytes.Clone(ct)
	wrappedFlipped[len(enc.KeyId)+5] ^= 1
	// Same-length id of a key the plugin does not hold (format in docs/format.md).
	otherKey := bytes.Clone(ct)
	copy(otherKey[2:], "localaes:one:0000000000000000")
	cases := []struct {
		name string
		ct   []byte
		want codes.Code
	}{
		{"empty", nil, codes.InvalidArgument},
		{"garbage", []byte("not an envelope"), codes.InvalidArgument},
		{"truncated", ct[:len(ct)/2], codes.InvalidArgument},
		{"tampered sealed data", flipped, codes.InvalidArgument},
		{"tampered wrapped DEK", wrappedFlipped, codes.InvalidArgument},
		{"oversized", make([]byte, dek.MaxCiphertextSize+1), codes.InvalidArgument},
		{"over the request limit", make([]byte, plugin.MaxRequestSize+1), codes.ResourceExhausted},
		{"unknown key", otherKey, codes.FailedPrecondition},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := p.client.Decrypt(c, &kmsapi.DecryptRequest{Ciphertext: tc.ct, KeyId: enc.KeyId})
			if resp != nil && resp.Plaintext != nil {
				t.Fatalf("plaintext returned: %q", resp.Plaintext)
			}
			wantCode(t, err, tc.want)
		})
	}
	_, err = p.client.Encrypt(c, &kmsapi.EncryptRequest{Plaintext: make([]byte, dek.MaxPlaintextSize+1)})
	wantCode(t, err, codes.InvalidArgument)
	_, err = p.client.Encrypt(c, &kmsapi.EncryptRequest{})
	wantCode(t, err, codes.InvalidArgument)
}

func TestBackendFailures(t *testing.T) {
	p := startPlugin(t)
	c := ctx(t)
	enc, _ := p.client.Encrypt(c, &kmsapi.EncryptRequest{Plaintext: []byte("seed")})
	cases := []struct {
		name string
		err  error
		want codes.Code
	}{
		{"unreachable", fmt.Errorf("dial tcp: connection refused: %w", dek.ErrUnavailable), codes.Unavailable},
		{"denied", fmt.Errorf("403 permission denied: %w", dek.ErrDenied), codes.PermissionDenied},
		{"bug", errors.New("something unexpected"), codes.Internal},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p.kek.set(tc.err, 0)
			defer p.kek.set(nil, 0)
			_, err := p.client.Encrypt(c, &kmsapi.EncryptRequest{Plaintext: []byte("seed")})
			wantCode(t, err, tc.want)
			_, err = p.client.Decrypt(c, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext})
			wantCode(t, err, tc.want)
		})
	}
	t.Run("caller deadline", func(t *testing.T) {
		p.kek.set(nil, 5*time.Second)
		defer p.kek.set(nil, 0)
		short, cancel := context.WithTimeout(c, 100*time.Millisecond)
		defer cancel()
		_, err := p.client.Decrypt(short, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext})
		wantCode(t, err, codes.DeadlineExceeded)
	})
	t.Run("backend slower than --timeout", func(t *testing.T) {
		p.kek.set(nil, 5*time.Second)
		defer p.kek.set(nil, 0)
		_, err := p.client.Decrypt(c, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext})
		wantCode(t, err, codes.Unavailable)
	})
}

// An outage must not look like a rotation: Status keeps the last good key id and says why
// it is unhealthy; it recovers by itself.
func TestOutageKeepsKeyID(t *testing.T) {
	p := startPlugin(t)
	c := ctx(t)
	good, _ := p.client.Status(c, &kmsapi.StatusRequest{})
	p.kek.set(fmt.Errorf("vault at https://10.0.0.7:8200 is sealed: %w", dek.ErrUnavailable), 0)
	p.monitor.Refresh(c)
	st, err := p.client.Status(c, &kmsapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// The reason is the error's kind: the address is configuration, which only the log gets.
	if st.KeyId != good.KeyId || !strings.HasPrefix(st.Healthz, dek.ErrUnavailable.Error()) || strings.Contains(st.Healthz, "10.0.0.7") {
		t.Fatalf("during outage Status = %+v, want key id %q and the kind of failure, no address", st, good.KeyId)
	}
	p.kek.set(nil, 0)
	p.monitor.Refresh(c)
	st, _ = p.client.Status(c, &kmsapi.StatusRequest{})
	if st.KeyId != good.KeyId || st.Healthz != "ok" {
		t.Fatalf("after recovery Status = %+v", st)
	}
}

func wantCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("code = %v (%v), want %v", got, err, want)
	}
}

// A long reason is cut to a short healthz without splitting a character: a proto3 string must
// be valid UTF-8, or Status itself fails to marshal (Internal) and the apiserver counts it as
// a failed Status rather than an unhealthy one.
func TestLongUnhealthyReasonStaysValidUTF8(t *testing.T) {
	p := startPlugin(t)
	c := ctx(t)
	good, _ := p.client.Status(c, &kmsapi.StatusRequest{})
	reason := strings.Repeat("a", 252) + strings.Repeat("é", 100) // the cut falls inside an é
	p.kek.set(dek.Public(fmt.Errorf("%s: %w", reason, dek.ErrUnavailable)), 0)
	p.monitor.Refresh(c)
	st, err := p.client.Status(c, &kmsapi.StatusRequest{})
	if err != nil {
		t.Fatalf("Status with a long non-ASCII reason: %v", err)
	}
	if st.KeyId != good.KeyId || !utf8.ValidString(st.Healthz) || len(st.Healthz) > 256 || !strings.HasPrefix(st.Healthz, "aaa") {
		t.Fatalf("Status = %+v", st)
	}
}

// A Decrypt under a key the plugin does not hold tells the client the key id, and the log the
// key file's path: local paths and configuration never reach the client.
func TestClientIsNotToldLocalPaths(t *testing.T) {
	p := plugintest.ServeLocalAES(t, plugintest.Options{})
	client := plugintest.Client(t, p.Socket)
	ctx := context.Background()
	enc, err := client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: []byte("seed")})
	if err != nil {
		t.Fatal(err)
	}
	other := plugintest.ServeLocalAES(t, plugintest.Options{KEKName: "other"})
	_, err = plugintest.Client(t, other.Socket).Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId})
	if status.Code(err) != codes.FailedPrecondition || strings.Contains(err.Error(), other.KeyFile) ||
		strings.Contains(err.Error(), filepath.Dir(other.KeyFile)) || !strings.Contains(err.Error(), enc.KeyId) {
		t.Fatalf("Decrypt under an unknown key: %v; want FailedPrecondition naming the key id and no path", err)
	}
}

// A check that finds the key gone makes Status fail, not merely answer unhealthy: only a
// failing Status starts the apiserver's countdown after which it stops writing with its DEK
// seed. A refusal of the credentials keeps the key id with an unhealthy healthz.
func TestStatusFailsWhenTheKeyIsGone(t *testing.T) {
	p := startPlugin(t)
	c := ctx(t)
	good, _ := p.client.Status(c, &kmsapi.StatusRequest{})
	p.kek.set(fmt.Errorf("%w: transit key \"k\" not found on mount \"/etc/secret-mount\"", dek.ErrUnknownKey), 0)
	p.monitor.Refresh(c)
	st, err := p.client.Status(c, &kmsapi.StatusRequest{})
	if status.Code(err) != codes.FailedPrecondition || strings.Contains(err.Error(), "/etc/secret-mount") {
		t.Fatalf("Status with the key gone = %+v, %v; want FailedPrecondition without configuration", st, err)
	}
	p.kek.set(fmt.Errorf("%w: token file /etc/kms/token: permission denied", dek.ErrDenied), 0)
	p.monitor.Refresh(c)
	st, err = p.client.Status(c, &kmsapi.StatusRequest{})
	if err != nil || st.KeyId != good.KeyId || st.Healthz == "ok" || strings.Contains(st.Healthz, "/etc/kms") {
		t.Fatalf("Status while denied = %+v, %v; want the key id, unhealthy, no path", st, err)
	}
	p.kek.set(nil, 0)
	p.monitor.Refresh(c)
	if st, err = p.client.Status(c, &kmsapi.StatusRequest{}); err != nil || st.Healthz != "ok" {
		t.Fatalf("Status after the backend is back = %+v, %v", st, err)
	}
}

// Before any key id, Status and Encrypt fail with Unavailable and the kind of failure; the
// backend's error, with its local paths, goes to the log only.
func TestNoKeyIDYetTellsTheClientNoPath(t *testing.T) {
	kek := &countingKEK{checkErr: fmt.Errorf("%w: token login: token file: /etc/kms/vault-token has mode 0644", dek.ErrDenied)}
	p := plugintest.Serve(t, kek, plugintest.Options{})
	client := plugintest.Client(t, p.Socket)
	c := ctx(t)
	_, serr := client.Status(c, &kmsapi.StatusRequest{})
	_, eerr := client.Encrypt(c, &kmsapi.EncryptRequest{Plaintext: []byte("seed")})
	for name, err := range map[string]error{"Status": serr, "Encrypt": eerr} {
		if status.Code(err) != codes.Unavailable || strings.Contains(err.Error(), "/etc/kms") ||
			!strings.Contains(err.Error(), "no key id yet") || !strings.Contains(err.Error(), dek.ErrDenied.Error()) {
			t.Errorf("%s before any key id: %v; want Unavailable, no key id yet, the kind, no path", name, err)
		}
	}
}
