package harness

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kmsplugin/kms-plugin/integration/harness/run"
)

// APIServerOptions configure StartKubeAPIServer.
type APIServerOptions struct {
	// EtcdServers are the etcd client URLs (Etcd.Endpoints). Required.
	EtcdServers []string
	// EncryptionConfig is the EncryptionConfiguration YAML written to the file that
	// --encryption-provider-config names. Empty: the flag is not passed.
	EncryptionConfig string
	// AutomaticReload passes --encryption-provider-config-automatic-reload: the apiserver
	// re-reads the file every minute (see APIServer.WriteEncryptionConfig).
	AutomaticReload bool
	// ExtraArgs are appended to the flags.
	ExtraArgs []string
	// SameAuthAs, if set, makes this apiserver serve with that apiserver's self-signed
	// certificate (valid for 127.0.0.1 on any port) and accept its admin token, as the
	// apiservers of one cluster share a CA and credentials: one kubeconfig reaches both.
	SameAuthAs *APIServer
}

// APIServer is a kube-apiserver on loopback, with an admin client.
type APIServer struct {
	URL       string               // https://127.0.0.1:<port>
	Config    *rest.Config         // admin (system:masters) over verified TLS
	Clientset kubernetes.Interface // built from Config
	Process   *run.Process

	t       testing.TB
	bin     string
	dir     string
	args    []string
	token   string
	http    *http.Client
	restart int
}

// StartKubeAPIServer starts a kube-apiserver with the flags of a real control plane
// (service-account keys and a static admin token made for this test, RBAC, the encryption
// config of opts) and waits until /readyz answers 200 — which, with a KMS provider, needs
// the plugin to be up. It is stopped when the test ends.
func StartKubeAPIServer(t testing.TB, opts APIServerOptions) *APIServer {
	t.Helper()
	if len(opts.EtcdServers) == 0 {
		t.Fatal("StartKubeAPIServer: no EtcdServers")
	}
	bin := run.Binary(t, "kube-apiserver")
	dir := t.TempDir()
	token := writeAuthFiles(t, dir)
	a := &APIServer{t: t, dir: dir, bin: bin}
	if o := opts.SameAuthAs; o != nil {
		b, err := os.ReadFile(filepath.Join(o.dir, "tokens.csv"))
		run.Must(t, err, "token file")
		run.Must(t, os.WriteFile(filepath.Join(dir, "tokens.csv"), b, 0o600), "token file")
		token = o.token
		run.Must(t, os.MkdirAll(filepath.Join(dir, "certs"), 0o700), "cert dir")
		for _, f := range []string{"apiserver.crt", "apiserver.key"} {
			b, err := os.ReadFile(filepath.Join(o.dir, "certs", f))
			run.Must(t, err, "serving certificate")
			run.Must(t, os.WriteFile(filepath.Join(dir, "certs", f), b, 0o600), "serving certificate")
		}
	}
	if opts.EncryptionConfig != "" {
		a.WriteEncryptionConfig(opts.EncryptionConfig)
	}
	retryOnPortClash(t, "kube-apiserver", func(attempt int) (*run.Process, error) {
		port := FreePort(t)
		a.URL = fmt.Sprintf("https://127.0.0.1:%d", port)
		a.Config, a.http = nil, nil
		a.args = []string{
			"--etcd-servers=" + strings.Join(opts.EtcdServers, ","),
			fmt.Sprintf("--secure-port=%d", port),
			"--bind-address=127.0.0.1",
			"--cert-dir=" + filepath.Join(dir, "certs"),
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + filepath.Join(dir, "sa.key"),
			"--service-account-signing-key-file=" + filepath.Join(dir, "sa.key"),
			"--token-auth-file=" + filepath.Join(dir, "tokens.csv"),
			"--authorization-mode=RBAC",
			"--service-cluster-ip-range=10.0.0.0/24",
		}
		if opts.EncryptionConfig != "" {
			a.args = append(a.args, "--encryption-provider-config="+a.EncryptionConfigPath())
		}
		if opts.AutomaticReload {
			a.args = append(a.args, "--encryption-provider-config-automatic-reload")
		}
		a.args = append(a.args, opts.ExtraArgs...)
		a.Process = run.Start(t, fmt.Sprintf("kube-apiserver-%d", attempt), a.bin, a.args)
		return a.Process, a.waitReadyz(token)
	})
	cs, err := kubernetes.NewForConfig(a.Config)
	run.Must(t, err, "clientset")
	a.Clientset = cs
	return a
}

// EncryptionConfigPath is the file --encryption-provider-config names.
func (a *APIServer) EncryptionConfigPath() string { return filepath.Join(a.dir, "encryption.yaml") }

// WriteEncryptionConfig replaces the encryption config file in one rename, so that an
// apiserver reloading it never reads half a file. With AutomaticReload the apiserver notices
// within a minute; otherwise Restart applies it.
func (a *APIServer) WriteEncryptionConfig(yaml string) {
	a.t.Helper()
	tmp := a.EncryptionConfigPath() + ".tmp"
	run.Must(a.t, os.WriteFile(tmp, []byte(yaml), 0o600), "writing encryption config")
	run.Must(a.t, os.Rename(tmp, a.EncryptionConfigPath()), "writing encryption config")
}

// Stop ends the apiserver (SIGTERM, then SIGKILL after 30 s).
func (a *APIServer) Stop() { a.Process.Stop(30 * time.Second) }

// Restart stops the apiserver and starts it again with the same flags and port (and the
// encryption config file as it is now), then waits until /readyz answers 200.
func (a *APIServer) Restart(t testing.TB) {
	t.Helper()
	a.Stop()
	a.restart++
	a.Process = run.Start(t, fmt.Sprintf("kube-apiserver-restart-%d", a.restart), a.bin, a.args)
	if err := a.waitReadyz(a.token); err != nil {
		a.Process.DumpLog(t)
		t.Fatalf("kube-apiserver after restart: %v", err)
	}
}

// RestartUnready stops the apiserver and starts it again like Restart, but waits only until
// /livez answers 200: for a restart while its KMS plugin cannot serve, when /readyz stays red.
func (a *APIServer) RestartUnready(t testing.TB) {
	t.Helper()
	a.Stop()
	a.restart++
	a.Process = run.Start(t, fmt.Sprintf("kube-apiserver-restart-%d", a.restart), a.bin, a.args)
	run.Eventually(t, 3*time.Minute, "kube-apiserver /livez after restart", func(ctx context.Context) error {
		if a.Process.Exited() {
			return errExited
		}
		ok, body, err := a.Health(ctx, "/livez")
		if err == nil && !ok {
			err = errors.New(body)
		}
		return err
	})
}

// Health asks one health endpoint (for example "/readyz/kms-providers" or "/livez") with
// ?verbose, and returns whether it answered 200 and what it said.
func (a *APIServer) Health(ctx context.Context, path string) (ok bool, body string, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.URL+path+"?verbose", nil)
	if err != nil {
		return false, "", err
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return false, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode == http.StatusOK, string(b), nil
}

// KMSHealth asks /readyz/kms-providers, the check that aggregates every KMS v2 provider (and
// every provider at all once the config is reloaded automatically). Each request after the
// apiserver's cache of the last answer expires (20 s after a success, 3 s after a failure)
// calls the plugins' Status, and on a new key id makes the apiserver rotate its DEK seed.
// Which provider failed is in the body ("kms-provider-<i>: ..."); separate
// /readyz/kms-provider-<i> endpoints exist only for KMS v1 configs without automatic reload
// (ask them with Health).
func (a *APIServer) KMSHealth(ctx context.Context) (ok bool, body string, err error) {
	return a.Health(ctx, "/readyz/kms-providers")
}

// WaitReady waits (up to 3 minutes) until path answers 200.
func (a *APIServer) WaitReady(t testing.TB, path string) {
	t.Helper()
	run.Eventually(t, 3*time.Minute, "kube-apiserver "+path, func(ctx context.Context) error {
		ok, body, err := a.Health(ctx, path)
		if err != nil {
			return err
		}
		if !ok {
			return errors.New(body)
		}
		return nil
	})
}

// waitReadyz waits (up to 3 minutes) until the apiserver answers /readyz with 200, failing
// early if it exits. Its self-signed serving certificate, the CA that Config trusts, is
// written at start-up, before it serves, and reused on restart.
func (a *APIServer) waitReadyz(token string) error {
	a.token = token
	deadline := time.Now().Add(3 * time.Minute)
	last := errors.New("no answer yet")
	for time.Now().Before(deadline) {
		if a.Process.Exited() {
			return errExited
		}
		if a.Config == nil {
			// The apiserver may be halfway through writing the file: take it only once it
			// holds a whole certificate.
			if ca, err := os.ReadFile(filepath.Join(a.dir, "certs", "apiserver.crt")); err == nil && wholeCertificate(ca) {
				a.Config = &rest.Config{
					Host:            a.URL,
					BearerToken:     token,
					TLSClientConfig: rest.TLSClientConfig{CAData: ca},
					QPS:             -1, // no client-side throttling: tests migrate many objects
					Timeout:         30 * time.Second,
				}
				if a.http, err = rest.HTTPClientFor(a.Config); err != nil {
					return err
				}
			}
		}
		if a.Config != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			ok, body, err := a.Health(ctx, "/readyz")
			cancel()
			if ok {
				return nil
			}
			if err == nil {
				err = errors.New(body)
			}
			var unknownCA x509.UnknownAuthorityError
			if errors.As(err, &unknownCA) {
				a.Config = nil // read the certificate again
			}
			last = err
		}
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("/readyz not 200 within 3m: %v", last)
}

// wholeCertificate reports whether b is a complete PEM certificate.
func wholeCertificate(b []byte) bool {
	block, _ := pem.Decode(b)
	if block == nil {
		return false
	}
	_, err := x509.ParseCertificate(block.Bytes)
	return err == nil
}

// writeAuthFiles writes the service-account signing key and a static token file with one
// admin (system:masters) token, and returns the token. Both files are 0600.
func writeAuthFiles(t testing.TB, dir string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	run.Must(t, err, "service-account key")
	der, err := x509.MarshalECPrivateKey(key)
	run.Must(t, err, "service-account key")
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	run.Must(t, os.WriteFile(filepath.Join(dir, "sa.key"), keyPEM, 0o600), "service-account key")

	raw := make([]byte, 32)
	_, err = rand.Read(raw)
	run.Must(t, err, "token")
	token := hex.EncodeToString(raw)
	line := token + ",admin,admin-uid,system:masters\n"
	run.Must(t, os.WriteFile(filepath.Join(dir, "tokens.csv"), []byte(line), 0o600), "token file")
	return token
}

// Kubeconfig writes a kubeconfig file for the admin user (or, with as set, for the admin
// impersonating the user as, whose RBAC rights then apply) and returns its path.
func (a *APIServer) Kubeconfig(t testing.TB, as string) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: a.URL, CertificateAuthorityData: a.Config.TLSClientConfig.CAData}
	cfg.AuthInfos["test"] = &clientcmdapi.AuthInfo{Token: a.Config.BearerToken, Impersonate: as}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	cfg.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	run.Must(t, clientcmd.WriteToFile(*cfg, path), "writing kubeconfig")
	return path
}

// StartKubeControllerManager runs the real kube-controller-manager (the kube-apiserver build's
// second command) against a, with the controllers named (for example the storage version
// migrator and the garbage collector it needs). It is stopped when the test ends.
func StartKubeControllerManager(t testing.TB, a *APIServer, controllers ...string) *run.Process {
	t.Helper()
	return run.Start(t, "kube-controller-manager", run.Binary(t, "kube-apiserver"), []string{
		"kube-controller-manager",
		"--kubeconfig=" + a.Kubeconfig(t, ""),
		"--controllers=" + strings.Join(controllers, ","),
		"--leader-elect=false",
		"--secure-port=0",
		"--v=2",
	})
}
