package harness

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/kmsplugin/kms-plugin/integration/harness/run"
)

// Etcd is a single-member etcd on loopback, with a client for reading raw values.
type Etcd struct {
	Endpoints []string // client URLs, for --etcd-servers
	Client    *clientv3.Client
	Process   *run.Process
	CAFile    string // the CA that verifies etcd's certificate, when it serves TLS
	// ClientCert and ClientKey: a client certificate etcd requires (StartEtcdMTLS).
	ClientCert, ClientKey string
}

// StartEtcd starts a fresh etcd (data in a test temp dir) and waits until it serves. It is
// stopped when the test ends.
func StartEtcd(t testing.TB) *Etcd {
	t.Helper()
	return startEtcd(t, nil, false)
}

// StartEtcdMTLS is StartEtcd serving clients over HTTPS and requiring a client certificate, as
// kubeadm's etcd does: CAFile verifies etcd, ClientCert and ClientKey are a certificate it
// accepts, and Client uses them.
func StartEtcdMTLS(t testing.TB) *Etcd {
	t.Helper()
	return startEtcd(t, nil, true)
}

// StartEtcdFromSnapshot restores a snapshot (Etcd.Snapshot) into a new data dir, as an
// operator restores a backup with etcdutl, and starts a new etcd on it.
func StartEtcdFromSnapshot(t testing.TB, snapshot string) *Etcd {
	t.Helper()
	bin := run.Binary(t, "etcd")
	return startEtcd(t, func(dataDir, peerURL string) error {
		out, err := exec.Command(bin, "snapshot", "restore", snapshot, "--data-dir="+dataDir, "--name=default",
			"--initial-cluster=default="+peerURL, "--initial-advertise-peer-urls="+peerURL).CombinedOutput()
		if err != nil {
			return fmt.Errorf("etcd snapshot restore: %v\n%s", err, out)
		}
		return nil
	}, false)
}

// Snapshot saves a snapshot of the whole keyspace to path, as `etcdctl snapshot save` does.
func (e *Etcd) Snapshot(t testing.TB, path string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rc, err := e.Client.Snapshot(ctx)
	run.Must(t, err, "etcd snapshot")
	defer rc.Close()
	f, err := os.Create(path)
	run.Must(t, err, "snapshot file")
	defer f.Close()
	_, err = io.Copy(f, rc)
	run.Must(t, err, "etcd snapshot")
	run.Must(t, f.Sync(), "snapshot file")
}

// startEtcd starts etcd; prepare, if set, fills its data dir first; mtls serves clients over
// TLS with client certificates.
func startEtcd(t testing.TB, prepare func(dataDir, peerURL string) error, mtls bool) *Etcd {
	t.Helper()
	bin := run.Binary(t, "etcd")
	dataDir := t.TempDir()
	e := &Etcd{}
	scheme, tlsArgs := "http", []string(nil)
	var tlsConfig *tls.Config
	if mtls {
		pki := run.NewTestPKI(t, t.TempDir())
		e.CAFile, e.ClientCert, e.ClientKey = pki.CAFile, pki.ClientCert, pki.ClientKey
		tlsConfig = pki.ClientTLS(t)
		scheme = "https"
		tlsArgs = []string{"--cert-file=" + pki.ServerCert, "--key-file=" + pki.ServerKey,
			"--trusted-ca-file=" + pki.CAFile, "--client-cert-auth"}
	}
	// A port that FreePort returned can be taken by another test's server before etcd binds
	// it: then etcd exits at once, and a second pair of ports is tried.
	retryOnPortClash(t, "etcd", func(attempt int) (*run.Process, error) {
		client, peer := FreePort(t), FreePort(t)
		clientURL := fmt.Sprintf("%s://127.0.0.1:%d", scheme, client)
		peerURL := fmt.Sprintf("http://127.0.0.1:%d", peer)
		dir := filepath.Join(dataDir, fmt.Sprint(attempt))
		if prepare != nil {
			if err := prepare(dir, peerURL); err != nil {
				t.Fatal(err)
			}
		}
		p := run.Start(t, fmt.Sprintf("etcd-%d", attempt), bin, append([]string{
			"--name=default",
			"--data-dir=" + dir,
			"--listen-client-urls=" + clientURL, "--advertise-client-urls=" + clientURL,
			"--listen-peer-urls=" + peerURL, "--initial-advertise-peer-urls=" + peerURL,
			"--initial-cluster=default=" + peerURL,
			"--log-level=warn",
			// Test data is thrown away: fsync only costs time on a shared 2-core machine.
			"--unsafe-no-fsync",
		}, tlsArgs...))
		e.Endpoints, e.Process = []string{clientURL}, p
		return p, waitHTTP(p, 60*time.Second, clientURL+"/health", tlsConfig)
	})
	client, err := clientv3.New(clientv3.Config{
		Endpoints: e.Endpoints, TLS: tlsConfig, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
	})
	run.Must(t, err, "etcd client")
	t.Cleanup(func() { client.Close() })
	e.Client = client
	return e
}

// Get returns the raw value stored at key, or nil if there is none.
func (e *Etcd) Get(t testing.TB, key string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := e.Client.Get(ctx, key)
	run.Must(t, err, "etcd get %s", key)
	if len(resp.Kvs) == 0 {
		return nil
	}
	return resp.Kvs[0].Value
}

// List returns every raw value whose key starts with prefix, keyed by etcd key.
func (e *Etcd) List(t testing.TB, prefix string) map[string][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := e.Client.Get(ctx, prefix, clientv3.WithPrefix())
	run.Must(t, err, "etcd list %s", prefix)
	out := make(map[string][]byte, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = kv.Value
	}
	return out
}

// Key returns the etcd key where kube-apiserver (default --etcd-prefix) stores a namespaced
// object of a core resource: Key("secrets", "ns", "name") is /registry/secrets/ns/name.
func Key(resource, namespace, name string) string {
	return "/registry/" + resource + "/" + namespace + "/" + name
}

// waitHTTP waits until url answers 200, failing early if p exits; tlsConfig, if set, is the
// client's for an https url.
func waitHTTP(p *run.Process, timeout time.Duration, url string, tlsConfig *tls.Config) error {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConfig}}
	var last error
	for time.Now().Before(deadline) {
		if p.Exited() {
			return errExited
		}
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s: %s", url, resp.Status)
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("not ready within %s: %v", timeout, last)
}

var errExited = fmt.Errorf("exited during start-up")

// retryOnPortClash runs start up to three times while the process it starts exits during
// start-up with a log that says its address was in use; any other failure ends the test.
func retryOnPortClash(t testing.TB, what string, start func(attempt int) (*run.Process, error)) {
	t.Helper()
	for attempt := 1; ; attempt++ {
		p, err := start(attempt)
		if err == nil {
			return
		}
		p.Kill()
		if err == errExited && attempt < 3 && strings.Contains(p.Log(), "address already in use") {
			t.Logf("%s: port taken, retrying", what)
			continue
		}
		p.DumpLog(t)
		t.Fatalf("%s did not start: %v", what, err)
	}
}
