package integration

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kmsplugin/kms-plugin/integration/harness"
)

// vaultTokenFile writes a renewable token of a transit policy for key to a file, as an
// operator provisions one.
func vaultTokenFile(t *testing.T, v *harness.Vault, key string) string {
	t.Helper()
	v.WritePolicy(t, key, harness.TransitPolicy("transit", key))
	path := filepath.Join(t.TempDir(), "vault-token")
	token := v.CreateToken(t, harness.TokenOptions{Policies: []string{key}, TTL: "2h", Renewable: true})
	if err := os.WriteFile(path, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestVaultReturnEndsTheOutageWithinSeconds: a plugin that cannot serve (here restarted during
// the outage with nothing kept: no key id) looks at Vault again within seconds, not at its next check, so the first
// write through a restarted apiserver succeeds soon after Vault answers. The check interval
// is set to 5 minutes so that a plugin waiting for its next check fails the test.
func TestVaultReturnEndsTheOutageWithinSeconds(t *testing.T) {
	t.Parallel()
	v := harness.StartVaultFile(t)
	v.EnableTransit(t, "transit")
	v.CreateKey(t, "transit", "back")
	p := harness.StartPlugin(t, "--backend=vault", "--vault-addr="+v.Addr, "--vault-transit-key=back",
		"--vault-token-file="+vaultTokenFile(t, v, "back"), "--check-interval=5m")
	e := harness.StartEtcd(t)
	a := harness.StartKubeAPIServer(t, harness.APIServerOptions{
		EtcdServers:      e.Endpoints,
		EncryptionConfig: harness.EncryptionConfig(encrypted, harness.KMSv2(provider, p.Endpoint), harness.Identity()),
	})
	createNamespace(t, a.Clientset, "back")
	before := createMany(t, a.Clientset, "back", "before", 3)

	v.Stop(t)
	p.Process.Kill() // restarted during the outage, with nothing kept: no key id
	p.ResumeUnready(t)
	a.RestartUnready(t) // restarted during the outage: no transformer until the plugin serves again
	harness.Eventually(t, 2*time.Minute, "the restarted apiserver serving (writes fail meanwhile)", func(ctx context.Context) error {
		_, err := a.Clientset.CoreV1().Namespaces().Get(ctx, "back", metav1.GetOptions{})
		return err
	})
	if _, err := a.Clientset.CoreV1().Secrets("back").Create(t.Context(), secret("during"), metav1.CreateOptions{}); err == nil {
		t.Fatal("a write succeeded while Vault was down and the plugin had nothing to serve it with")
	}

	v.Start(t)
	v.Unseal(t)
	answered := time.Now()
	var wrote time.Duration
	harness.Eventually(t, time.Minute, "the first write after Vault's return", func(ctx context.Context) error {
		_, err := a.Clientset.CoreV1().Secrets("back").Create(ctx, secret("after"), metav1.CreateOptions{})
		if err == nil {
			wrote = time.Since(answered)
		}
		return err
	})
	t.Logf("FIGURE vault answered -> first write through the apiserver: %.1f s (target: within 15 s)", wrote.Seconds())
	if !p.LogContains("backend healthy") {
		t.Error("the plugin did not log that the backend is healthy again")
	}
	checkReads(t, a.Clientset, before...)
}

func secret(name string) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string][]byte{"value": []byte("v-" + name)}}
}

// load creates Secrets and reads back acknowledged ones through one apiserver without pause,
// counting per phase the requests the apiserver answered with an error (an API status) apart
// from those that did not reach it (its own restart).
type load struct {
	cs        func() kubernetes.Interface
	namespace string

	phase atomic.Pointer[string]
	mu    sync.Mutex
	acked map[string]string // name -> value, every Secret the apiserver acknowledged
	stats map[string]*phaseStats
	order []string
}

type phaseStats struct {
	writes, reads, answeredErrors, unreachable int
	firstError                                 string
}

func (l *load) begin(name string) {
	l.mu.Lock()
	l.stats[name] = &phaseStats{}
	l.order = append(l.order, name)
	l.mu.Unlock()
	l.phase.Store(&name)
}

func (l *load) run(ctx context.Context) {
	for i := 0; ctx.Err() == nil; i++ {
		name := fmt.Sprintf("s-%d", i)
		value := fmt.Sprintf("value-%d-%d", i, rand.Int64())
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := l.cs().CoreV1().Secrets(l.namespace).Create(cctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string][]byte{"value": []byte(value)},
		}, metav1.CreateOptions{})
		cancel()
		if err == nil {
			l.mu.Lock()
			l.acked[name] = value
			l.mu.Unlock()
		}
		l.count(ctx, err, true)
		if read, want, ok := l.someAcked(); ok {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			s, err := l.cs().CoreV1().Secrets(l.namespace).Get(cctx, read, metav1.GetOptions{})
			cancel()
			if err == nil && string(s.Data["value"]) != want {
				err = apierrors.NewInternalError(fmt.Errorf("%s read %q, want %q", read, s.Data["value"], want))
			}
			l.count(ctx, err, false)
		}
	}
}

func (l *load) someAcked() (name, value string, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for name, value := range l.acked { // map order: a random acknowledged Secret
		return name, value, true
	}
	return "", "", false
}

func (l *load) count(ctx context.Context, err error, write bool) {
	if ctx.Err() != nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.stats[*l.phase.Load()]
	if write {
		st.writes++
	} else {
		st.reads++
	}
	var status apierrors.APIStatus
	switch {
	case err == nil:
	case errors.As(err, &status):
		st.answeredErrors++
		if st.firstError == "" {
			st.firstError = err.Error()
		}
	default:
		st.unreachable++
	}
}

func (l *load) report(t *testing.T) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, name := range l.order {
		st := l.stats[name]
		t.Logf("FIGURE phase %-58s writes %5d reads %5d answered-with-error %4d unreachable %4d %s",
			name, st.writes, st.reads, st.answeredErrors, st.unreachable, st.firstError)
	}
}

// TestFaultSequenceUnderLoad is issue 19's fault sequence with the settings the docs recommend
// for a restart during an outage (--vault-keep-memory), under continuous creates and reads of Secrets
// through kube-apiserver: Vault stops; the plugin is SIGKILLed and restarted while Vault is
// down; the apiserver keeps running past its 3-minute write-DEK expiry, then restarts; Vault
// returns; the transit key rotates; the plugin is killed again. The apiserver answers no
// request with an error in any phase (its own restart aside), and every acknowledged Secret
// reads back at the end, stored by the plugin.
func TestFaultSequenceUnderLoad(t *testing.T) {
	t.Parallel()
	v := harness.StartVaultFile(t)
	v.EnableTransit(t, "transit")
	v.CreateKey(t, "transit", "sequence")
	p := harness.StartPlugin(t, append([]string{"--backend=vault", "--vault-addr=" + v.Addr, "--vault-transit-key=sequence",
		"--vault-token-file=" + vaultTokenFile(t, v, "sequence"), "--check-interval=2s"}, keepMemoryArgs(t)...)...)
	e := harness.StartEtcd(t)
	a := harness.StartKubeAPIServer(t, harness.APIServerOptions{
		EtcdServers:      e.Endpoints,
		EncryptionConfig: harness.EncryptionConfig(encrypted, harness.KMSv2(provider, p.Endpoint), harness.Identity()),
	})
	createNamespace(t, a.Clientset, "sequence")

	var csMu sync.Mutex
	cs := a.Clientset
	l := &load{namespace: "sequence", acked: map[string]string{}, stats: map[string]*phaseStats{},
		cs: func() kubernetes.Interface { csMu.Lock(); defer csMu.Unlock(); return cs }}
	l.begin("1 steady")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { l.run(ctx); close(done) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	defer stop()

	hold := func(d time.Duration) { time.Sleep(d) }
	hold(10 * time.Second)

	l.begin("2 vault stopped")
	v.Stop(t)
	harness.Eventually(t, 30*time.Second, "the plugin serving from memory", func(context.Context) error {
		if !p.LogContains("SERVING FROM MEMORY") {
			return errors.New("not yet")
		}
		return nil
	})
	hold(10 * time.Second)

	l.begin("3 plugin SIGKILLed and restarted, vault down (past the 3 min DEK expiry)")
	p.Process.Kill()
	p.Resume(t)
	hold(200 * time.Second) // the apiserver's write DEK would expire 3 minutes after Status failed

	l.begin("4 apiserver restarting")
	a.Restart(t)
	csMu.Lock()
	cs = a.Clientset
	csMu.Unlock()
	l.begin("5 apiserver restarted, vault down")
	if ok, body, err := a.Health(t.Context(), "/readyz"); err != nil || !ok {
		t.Errorf("/readyz after the restart during the outage: %v %s", err, body)
	}
	hold(15 * time.Second)

	l.begin("6 vault back")
	v.Start(t)
	v.Unseal(t)
	hold(15 * time.Second)

	l.begin("7 transit key rotated")
	v.RotateKey(t, "transit", "sequence")
	hold(20 * time.Second)

	l.begin("8 plugin SIGKILLed again, vault up")
	p.Process.Kill()
	p.Resume(t)
	hold(15 * time.Second)
	stop()
	l.report(t)

	for _, name := range l.order {
		if st := l.stats[name]; !strings.Contains(name, "restarting") && st.answeredErrors > 0 {
			t.Errorf("phase %q: the apiserver answered %d requests with an error, the first: %s", name, st.answeredErrors, st.firstError)
		}
	}
	if st := l.stats["3 plugin SIGKILLed and restarted, vault down (past the 3 min DEK expiry)"]; st.writes == 0 {
		t.Error("no write was tried while the plugin served from its kept memory")
	}
	// Every acknowledged Secret reads back and is stored by the plugin.
	names := make([]string, 0, len(l.acked))
	for name := range l.acked {
		names = append(names, name)
	}
	sort.Strings(names)
	var objs []*object
	for _, name := range names {
		objs = append(objs, &object{resource: "secrets", namespace: "sequence", name: name, value: l.acked[name]})
	}
	checkReads(t, a.Clientset, objs...)
	for _, o := range objs {
		raw := e.Get(t, o.key())
		if !strings.HasPrefix(string(raw), "k8s:enc:kms:v2:"+provider+":") {
			t.Errorf("%s stored as %q", o, prefixOf(raw))
		}
	}
	t.Logf("FIGURE %d Secrets acknowledged and read back", len(objs))
}

// keepMemoryArgs are the serve flags that keep the plugin's memory across a restart on a
// tmpfs directory (/dev/shm: this machine's /run is not tmpfs).
func keepMemoryArgs(t *testing.T) []string {
	return []string{"--vault-keep-memory=tmpfs", "--vault-keep-memory-dir=" + tmpfsDir(t)}
}
