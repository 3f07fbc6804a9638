package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/backends/vault/policy"
	"github.com/kmsplugin/kms-plugin/integration/harness"
	"github.com/kmsplugin/kms-plugin/internal/testing/plugintest"
)

// The stress proof of what the Vault backend promises about key ids. Three plugin processes
// share one transit key: one talks to Vault directly, two through a load balancer that
// models a replica lagging behind the active node (for a while after each rotation, every
// other read of the key returns it as it was before). Under concurrent Status and Encrypt
// load, the key is rotated four times and Vault is stopped, restarted sealed and unsealed:
//   - each plugin's Status key ids only ever move to a higher version (no flip-flop, even while
//     the balancer serves old and new versions in turn);
//   - every Encrypt response's key id equals the Status key id seen just before or just after;
//   - during the outage the key id stays what it was, Status keeps answering, and afterwards
//     it is unchanged and healthy again;
//   - data encrypted under every version still decrypts through every plugin.
//
// (A real Vault cluster is not used: Vault OSS standbys forward every request to the active
// node, so they never disagree; the lagging balancer stands in for the replicas that do.)
func TestKeyIDStress(t *testing.T) {
	t.Parallel()
	v := harness.StartVaultFile(t) // restartable: the outage stops it
	v.EnableTransit(t, "transit")
	const key = "stress"
	v.Write(t, "transit/keys/"+key, nil)
	tokenFile := leastPrivilegeToken(t, v, "transit", key)
	lb := newLaggingBalancer(t, v.Addr, "/v1/transit/keys/"+key, 1500*time.Millisecond)

	var plugins []*harness.Plugin
	for _, addr := range []string{v.Addr, lb.URL, lb.URL} {
		plugins = append(plugins, harness.StartPlugin(t, "--backend=vault", "--vault-addr="+addr,
			"--vault-transit-key="+key, "--vault-auth=token", "--vault-token-file="+tokenFile,
			"--check-interval=100ms", "--proof-interval=1s", "--log-level=warn",
			// Status's healthz must show the outage and the seal here; serving through an
			// outage from memory is TestVaultOutage's subject.
			"--vault-memory-grace=0"))
	}
	load := startKeyIDLoad(t, plugins)

	waitVersion := func(version int) {
		t.Helper()
		for i, p := range plugins {
			harness.Eventually(t, 30*time.Second, fmt.Sprintf("plugin %d adopts v%d", i, version), func(ctx context.Context) error {
				st, err := p.Status(ctx)
				if err != nil {
					return err
				}
				if got := keyIDVersion(st.KeyId); got != version || st.Healthz != "ok" {
					return fmt.Errorf("key id %s, healthz %s", st.KeyId, st.Healthz)
				}
				return nil
			})
		}
	}
	waitVersion(1)
	for version := 2; version <= 4; version++ {
		v.RotateKey(t, "transit", key)
		waitVersion(version)
	}

	// Outage: stopped, then back sealed, then unsealed. The key id must not move.
	before := make([]string, len(plugins))
	for i, p := range plugins {
		before[i] = p.KeyID(t)
	}
	load.freeze(before)
	v.Stop(t)
	waitHealthz(t, plugins, func(h string) bool { return h != "ok" }, "unhealthy while Vault is down")
	v.Start(t)
	waitHealthz(t, plugins[:1], func(h string) bool { return strings.Contains(h, "sealed") }, "sealed")
	v.Unseal(t)
	waitHealthz(t, plugins, func(h string) bool { return h == "ok" }, "healthy after unseal")
	for i, p := range plugins {
		if id := p.KeyID(t); id != before[i] {
			t.Errorf("plugin %d: key id %s after the outage, %s before", i, id, before[i])
		}
	}
	load.thaw()

	// After the outage rotation still works.
	v.RotateKey(t, "transit", key)
	waitVersion(5)
	load.waitSeen(t, 5) // the pollers, not only waitVersion, have seen it (on a loaded machine they lag)
	load.stop(t)

	t.Logf("the balancer answered %d key reads with the lagging replica's view", lb.staleServed.Load())
	if lb.staleServed.Load() == 0 {
		t.Error("the balancer never served a lagging key read: the test did not exercise disagreement")
	}
	load.verify(t, plugins, 5)
}

// TestKeyIDAfterRestart: a plugin restarted while the replica behind its load balancer lags
// behind a rotation must not move its key id back. Before the restart Status says v4; the
// first key read after the restart is answered by the replica that still has v3. The plugin
// adopts a key id only once two consecutive reads agree, at start as later: until then Status
// is Unavailable ("no key id yet"), as for any fresh start, and from then on it says v4. It
// never says v3, and nothing is wrapped under v3.
func TestKeyIDAfterRestart(t *testing.T) {
	t.Parallel()
	v := harness.StartVaultDev(t)
	v.EnableTransit(t, "transit")
	const key = "restart"
	v.Write(t, "transit/keys/"+key, nil)
	v.RotateKey(t, "transit", key)
	v.RotateKey(t, "transit", key)
	lb := newLaggingBalancer(t, v.Addr, "/v1/transit/keys/"+key, 0) // no lag but what staleNext asks
	p := harness.StartPlugin(t, "--backend=vault", "--vault-addr="+lb.URL, "--vault-transit-key="+key,
		"--vault-auth=token", "--vault-token-file="+leastPrivilegeToken(t, v, "transit", key),
		"--check-interval=1s", "--proof-interval=5s", "--log-level=info")
	if got := keyIDVersion(p.KeyID(t)); got != 3 {
		t.Fatalf("before the rotation: v%d, want v3", got)
	}
	v.RotateKey(t, "transit", key)
	waitKeyVersion(t, p, "plugin", 4)
	v4 := p.KeyID(t)

	// Status is polled without pause across the restart: every answer must be v4 or, before
	// the first key id is adopted, Unavailable.
	ctx, cancel := context.WithCancel(context.Background())
	var seen []string
	var unavailable atomic.Int64
	polled := make(chan struct{})
	// Reconnect at once after the restart (gRPC's default backoff waits a second or more, in
	// which a wrong key id could come and go unseen).
	conn, err := grpc.NewClient(p.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority("localhost"),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1, MaxDelay: 20 * time.Millisecond}, MinConnectTimeout: time.Second}))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := kmsapi.NewKeyManagementServiceClient(conn)
	go func() {
		defer close(polled)
		for ctx.Err() == nil {
			rctx, rcancel := context.WithTimeout(ctx, time.Second)
			st, err := client.Status(rctx, &kmsapi.StatusRequest{})
			rcancel()
			switch {
			case err == nil:
				if len(seen) == 0 || seen[len(seen)-1] != st.KeyId {
					seen = append(seen, st.KeyId)
				}
			case strings.Contains(err.Error(), "no key id yet"):
				unavailable.Add(1)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	p.Stop()
	before := lb.staleServed.Load()
	lb.staleNext(1)
	p.Resume(t)
	if got := p.KeyID(t); got != v4 {
		t.Errorf("after the restart: key id %s, want %s", got, v4)
	}
	sample := writeEnvelopes(t, p, 3)
	time.Sleep(time.Second) // a few more checks and polls
	cancel()
	<-polled

	if lb.staleServed.Load() == before {
		t.Fatal("the balancer served no lagging read after the restart: the test did not exercise it")
	}
	if unavailable.Load() == 0 {
		t.Error("Status never answered Unavailable (no key id yet) after the restart, while the first two reads disagreed")
	}
	for _, id := range seen {
		if id != v4 {
			t.Errorf("Status said %s across the restart (sequence %v); want only %s", id, seen, v4)
		}
	}
	for _, e := range sample {
		if e.keyID != v4 {
			t.Errorf("Encrypt after the restart under %s, want %s", e.keyID, v4)
		}
	}
	t.Logf("Status across the restart: %v; %d polls answered Unavailable (no key id yet)", seen, unavailable.Load())
}

// leastPrivilegeToken writes the least-privilege policy for mount/key into v and returns a
// file holding a token with only that policy.
func leastPrivilegeToken(t *testing.T, v *harness.Vault, mount, key string) string {
	t.Helper()
	hcl, err := policy.HCL(policy.Options{Mount: mount, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	return v.PolicyTokenFile(t, mount+"-"+key, hcl)
}

func waitHealthz(t *testing.T, plugins []*harness.Plugin, ok func(string) bool, what string) {
	t.Helper()
	for i, p := range plugins {
		harness.Eventually(t, 60*time.Second, fmt.Sprintf("plugin %d %s", i, what), func(ctx context.Context) error {
			st, err := p.Status(ctx)
			if err != nil {
				return err
			}
			if !ok(st.Healthz) {
				return fmt.Errorf("healthz %q", st.Healthz)
			}
			return nil
		})
	}
}

var vaultKeyIDRE = regexp.MustCompile(`^vault:[0-9a-f]{16}:v([1-9][0-9]*)$`)

// keyIDVersion is the version a vault key id names, 0 if it is not one.
func keyIDVersion(id string) int {
	m := vaultKeyIDRE.FindStringSubmatch(id)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// waitKeyVersion waits until p's Status reports a key id of the Vault key's version.
func waitKeyVersion(t *testing.T, p *harness.Plugin, what string, version int) {
	t.Helper()
	harness.Eventually(t, 30*time.Second, fmt.Sprintf("%s adopts v%d", what, version), func(ctx context.Context) error {
		st, err := p.Status(ctx)
		if err != nil {
			return err
		}
		if keyIDVersion(st.KeyId) != version {
			return fmt.Errorf("key id %s", st.KeyId)
		}
		return nil
	})
}

// keyIDLoad drives Status and Encrypt on every plugin and records what breaks a promise.
type keyIDLoad struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu         sync.Mutex
	violations []string
	sequences  [][]string        // per plugin: distinct key ids in the order a poller saw them
	samples    map[string][]byte // key id -> a ciphertext Encrypt returned under it
	plaintexts map[string][]byte
	encrypts   atomic.Int64
	failures   atomic.Int64 // failed Encrypts (expected only during the outage)
	frozen     []string     // while set: the key id each plugin must keep
}

const encryptWorkers = 3

func startKeyIDLoad(t *testing.T, plugins []*harness.Plugin) *keyIDLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &keyIDLoad{cancel: cancel, sequences: make([][]string, len(plugins)), samples: map[string][]byte{}, plaintexts: map[string][]byte{}}
	t.Cleanup(cancel)
	for i, p := range plugins {
		client := plugintest.Client(t, p.Socket)
		l.wg.Add(1 + encryptWorkers)
		go l.poll(ctx, i, client)
		for range encryptWorkers {
			go l.encrypt(ctx, i, client)
		}
	}
	return l
}

func (l *keyIDLoad) violate(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.violations) < 20 {
		l.violations = append(l.violations, fmt.Sprintf(format, args...))
	}
}

// poll records plugin i's Status key ids: each must be a vault key id of a higher version
// than the one before, and while frozen, the frozen one.
func (l *keyIDLoad) poll(ctx context.Context, i int, c kmsapi.KeyManagementServiceClient) {
	defer l.wg.Done()
	for ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		st, err := c.Status(rctx, &kmsapi.StatusRequest{})
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			l.violate("plugin %d: Status failed: %v", i, err)
			continue
		}
		l.mu.Lock()
		seq := l.sequences[i]
		last := ""
		if len(seq) > 0 {
			last = seq[len(seq)-1]
		}
		frozen := l.frozen
		if st.KeyId != last {
			l.sequences[i] = append(seq, st.KeyId)
		}
		l.mu.Unlock()
		switch {
		case keyIDVersion(st.KeyId) == 0:
			l.violate("plugin %d: Status key id %q is not a vault key id", i, st.KeyId)
		case frozen != nil && st.KeyId != frozen[i]:
			l.violate("plugin %d: key id %s during the outage, %s before it", i, st.KeyId, frozen[i])
		case last != "" && st.KeyId != last && keyIDVersion(st.KeyId) <= keyIDVersion(last):
			l.violate("plugin %d: key id went from %s to %s (flip-flop)", i, last, st.KeyId)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// encrypt calls Status, Encrypt, Status in a loop: a successful Encrypt's key id must be one
// of the two Status key ids around it.
func (l *keyIDLoad) encrypt(ctx context.Context, i int, c kmsapi.KeyManagementServiceClient) {
	defer l.wg.Done()
	for n := 0; ctx.Err() == nil; n++ {
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		before, err1 := c.Status(rctx, &kmsapi.StatusRequest{})
		plain := make([]byte, 32)
		_, _ = rand.Read(plain)
		resp, err := c.Encrypt(rctx, &kmsapi.EncryptRequest{Plaintext: plain, Uid: fmt.Sprintf("stress-%d-%d", i, n)})
		after, err2 := c.Status(rctx, &kmsapi.StatusRequest{})
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err1 != nil || err2 != nil {
			l.violate("plugin %d: Status failed around an Encrypt: %v, %v", i, err1, err2)
			continue
		}
		if err != nil {
			l.failures.Add(1)
			time.Sleep(20 * time.Millisecond) // an outage: no need to spin
			continue
		}
		l.encrypts.Add(1)
		if resp.KeyId != before.KeyId && resp.KeyId != after.KeyId {
			l.violate("plugin %d: Encrypt returned key id %s; Status said %s before and %s after", i, resp.KeyId, before.KeyId, after.KeyId)
		}
		l.mu.Lock()
		if _, ok := l.samples[resp.KeyId]; !ok {
			l.samples[resp.KeyId], l.plaintexts[resp.KeyId] = resp.Ciphertext, plain
		}
		l.mu.Unlock()
	}
}

func (l *keyIDLoad) freeze(ids []string) { l.mu.Lock(); l.frozen = ids; l.mu.Unlock() }
func (l *keyIDLoad) thaw()               { l.mu.Lock(); l.frozen = nil; l.mu.Unlock() }

// waitSeen waits until every plugin's poller has recorded a key id of version.
func (l *keyIDLoad) waitSeen(t *testing.T, version int) {
	t.Helper()
	harness.Eventually(t, 30*time.Second, fmt.Sprintf("every poller sees v%d", version), func(context.Context) error {
		l.mu.Lock()
		defer l.mu.Unlock()
		for i, seq := range l.sequences {
			if len(seq) == 0 || keyIDVersion(seq[len(seq)-1]) != version {
				return fmt.Errorf("plugin %d's poller saw %v", i, seq)
			}
		}
		return nil
	})
}

func (l *keyIDLoad) stop(t *testing.T) {
	l.cancel()
	l.wg.Wait()
	t.Logf("%d Encrypts succeeded, %d failed (during the outage)", l.encrypts.Load(), l.failures.Load())
}

// verify checks the recorded promises, that every plugin went through versions 1..last in
// order, and that a ciphertext of every version decrypts through every plugin.
func (l *keyIDLoad) verify(t *testing.T, plugins []*harness.Plugin, last int) {
	t.Helper()
	for _, v := range l.violations {
		t.Error(v)
	}
	for i, seq := range l.sequences {
		var versions []int
		for _, id := range seq {
			versions = append(versions, keyIDVersion(id))
		}
		want := make([]int, last)
		for j := range want {
			want[j] = j + 1
		}
		if fmt.Sprint(versions) != fmt.Sprint(want) {
			t.Errorf("plugin %d: Status key id versions %v, want %v (%v)", i, versions, want, seq)
		}
		if i > 0 && fmt.Sprint(seq) != fmt.Sprint(l.sequences[0]) {
			t.Errorf("plugin %d saw key ids %v, plugin 0 %v", i, seq, l.sequences[0])
		}
	}
	if len(l.samples) != last {
		t.Errorf("Encrypt responses carried %d key ids, want %d", len(l.samples), last)
	}
	for i, p := range plugins {
		c := plugintest.Client(t, p.Socket)
		for id, ct := range l.samples {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			resp, err := c.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: ct, KeyId: id, Uid: "verify"})
			cancel()
			if err != nil || !bytes.Equal(resp.Plaintext, l.plaintexts[id]) {
				t.Errorf("plugin %d: decrypt of data under %s: %v", i, id, err)
			}
		}
	}
}

// laggingBalancer is an HTTP reverse proxy in front of Vault. For lag after the key at keyPath
// gets a new latest version, every other read of it answers with the key as it was before,
// like a load balancer over the active node and a replica that has not caught up.
type laggingBalancer struct {
	URL         string
	staleServed atomic.Int64

	keyPath string
	lag     time.Duration

	mu       sync.Mutex
	fresh    []byte // the newest body read from Vault
	stale    []byte // the body before the last change, served in turn until lag has passed
	previous []byte // the body before the last change, kept after lag for staleNext
	changed  time.Time
	reads    int
	forced   int // the next reads answered with previous whatever the lag (staleNext)
}

// staleNext makes the next n reads of the key answer with the key as it was before its last
// change, as a replica that has not caught up would, for as long as it takes to serve them.
func (lb *laggingBalancer) staleNext(n int) {
	lb.mu.Lock()
	lb.forced = n
	lb.mu.Unlock()
}

func newLaggingBalancer(t *testing.T, vaultAddr, keyPath string, lag time.Duration) *laggingBalancer {
	target, err := url.Parse(vaultAddr)
	if err != nil {
		t.Fatal(err)
	}
	lb := &laggingBalancer{keyPath: keyPath, lag: lag}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = lb.modify
	proxy.ErrorLog = log.New(io.Discard, "", 0) // Vault down: 502s, expected
	srv := httptest.NewServer(proxy)
	t.Cleanup(srv.Close)
	lb.URL = srv.URL
	return lb
}

func (lb *laggingBalancer) modify(resp *http.Response) error {
	if resp.Request.Method != http.MethodGet || resp.Request.URL.Path != lb.keyPath || resp.StatusCode != http.StatusOK {
		return nil
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	lb.mu.Lock()
	if lb.fresh != nil && latestVersion(lb.fresh) != latestVersion(body) {
		lb.stale, lb.previous, lb.changed = lb.fresh, lb.fresh, time.Now()
	}
	lb.fresh = body
	if lb.stale != nil && time.Since(lb.changed) > lb.lag {
		lb.stale = nil // the replica caught up
	}
	lb.reads++
	switch {
	case lb.forced > 0 && lb.previous != nil:
		lb.forced--
		body = lb.previous
		lb.staleServed.Add(1)
	case lb.stale != nil && lb.reads%2 == 0:
		body = lb.stale
		lb.staleServed.Add(1)
	}
	lb.mu.Unlock()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
	return nil
}

func latestVersion(body []byte) json.Number {
	var k struct {
		Data struct {
			LatestVersion json.Number `json:"latest_version"`
		} `json:"data"`
	}
	_ = json.Unmarshal(body, &k)
	return k.Data.LatestVersion
}

// rejectedRotation are what kube-apiserver (k8s.io/apiserver, encryptionconfig's kmsv2 probe)
// says when it refuses a key id from Status: an Encrypt whose key id differs from Status's
// ("failed to rotate DEK ... statusKeyIDHash ... encryptKeyIDHash"), or an invalid key id.
var rejectedRotation = []string{"failed to rotate DEK", "got invalid KMSv2 KeyID"}

// A real kube-apiserver, writing Secrets without pause, follows a rotation of the Vault key:
// new writes land under the new key id, no write fails, and the apiserver never rejects the
// DEK rotation (its log, at -v=2 where failed probes are logged, and its readyz answers say
// so).
func TestKeyIDRotationWithAPIServer(t *testing.T) {
	t.Parallel()
	v := harness.StartVaultDev(t)
	v.EnableTransit(t, "transit")
	const key, provider = "apiserver-rotation", "kms-plugin"
	v.Write(t, "transit/keys/"+key, nil)
	p := harness.StartPlugin(t, "--backend=vault", "--vault-addr="+v.Addr, "--vault-transit-key="+key,
		"--vault-auth=token", "--vault-token-file="+leastPrivilegeToken(t, v, "transit", key),
		"--check-interval=200ms", "--proof-interval=5s", "--log-level=warn")
	c := harness.StartCluster(t, harness.APIServerOptions{
		EncryptionConfig: harness.EncryptionConfig([]string{"secrets"}, harness.KMSv2(provider, p.Endpoint), harness.Identity()),
		ExtraArgs:        []string{"--v=2"},
	})
	secrets := c.APIServer.Clientset.CoreV1().Secrets("default")
	keyIDOf := func(name string) string {
		raw := c.Etcd.Get(t, harness.Key("secrets", "default", name))
		val, err := harness.ParseKMSv2(raw, provider)
		if err != nil {
			t.Fatalf("secret %s in etcd: %v", name, err)
		}
		return val.KeyID
	}
	create := func(ctx context.Context, name string) error {
		_, err := secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string][]byte{"k": []byte(name)}}, metav1.CreateOptions{})
		return err
	}
	if err := create(context.Background(), "first"); err != nil {
		t.Fatal(err)
	}
	oldID := keyIDOf("first")
	if oldID != p.KeyID(t) {
		t.Fatalf("first secret under %s, plugin reports %s", oldID, p.KeyID(t))
	}

	// Write load: four writers creating Secrets until the rotation has reached the apiserver.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	var written atomic.Int64
	var mu sync.Mutex
	var writeErrs []string
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ctx.Err() == nil; n++ {
				rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
				err := create(rctx, fmt.Sprintf("load-%d-%d", w, n))
				rcancel()
				switch {
				case ctx.Err() != nil:
					return
				case err != nil:
					mu.Lock()
					writeErrs = append(writeErrs, err.Error())
					mu.Unlock()
				default:
					written.Add(1)
				}
				time.Sleep(10 * time.Millisecond) // steady load, not a flood of the shared machine
			}
		}()
	}

	v.RotateKey(t, "transit", key)
	waitKeyVersion(t, p, "plugin", 2)
	newID := p.KeyID(t)
	// The apiserver reads Status every minute, and at each /readyz/kms-providers request once
	// its 20 s cache has expired: ask it until new writes land under the new key id.
	var readyz []string
	probe := 0
	harness.Eventually(t, 90*time.Second, "apiserver writes under "+newID, func(ctx context.Context) error {
		if _, body, err := c.APIServer.KMSHealth(ctx); err == nil {
			readyz = append(readyz, body)
		}
		probe++
		name := fmt.Sprintf("probe-%d", probe)
		if err := create(ctx, name); err != nil {
			return err
		}
		if id := keyIDOf(name); id != newID {
			time.Sleep(time.Second)
			return fmt.Errorf("new secret %s under %s", name, id)
		}
		return nil
	})
	cancel()
	wg.Wait()

	t.Logf("%d Secrets written under load during the rotation", written.Load())
	if written.Load() == 0 || len(writeErrs) > 0 {
		t.Errorf("writes under load: %d written, %d failed: %v", written.Load(), len(writeErrs), writeErrs[:min(len(writeErrs), 5)])
	}
	log := c.APIServer.Process.Log()
	for _, msg := range rejectedRotation {
		if strings.Contains(log, msg) {
			t.Errorf("kube-apiserver's log shows a rejected key id (%q); see %s", msg, c.APIServer.Process.LogPath)
		}
		for _, body := range readyz {
			if strings.Contains(body, msg) {
				t.Errorf("kube-apiserver's readyz shows a rejected key id: %s", body)
			}
		}
	}
	// Everything written, under either key id, reads back through the apiserver.
	list, err := secrets.List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// (Writes cut off by the end of the load may have landed too.)
	if want := int(written.Load()) + 1 + probe; len(list.Items) < want || len(list.Items) > want+4 {
		t.Errorf("listed %d Secrets, wrote %d", len(list.Items), want)
	}
	for _, s := range list.Items {
		if string(s.Data["k"]) != s.Name {
			t.Errorf("secret %s reads back %q", s.Name, s.Data["k"])
		}
	}
	for _, name := range []string{"first", fmt.Sprintf("probe-%d", probe)} {
		if id := keyIDOf(name); id != oldID && id != newID {
			t.Errorf("secret %s under unknown key id %s", name, id)
		}
	}
}
