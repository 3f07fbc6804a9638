package doctor

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/backends/vault"
	"github.com/kmsplugin/kms-plugin/integration/harness/run"
	"github.com/kmsplugin/kms-plugin/internal/testing/plugintest"
	"github.com/kmsplugin/kms-plugin/plugin"
	"github.com/kmsplugin/kms-plugin/plugin/endpoints"
)

// TestDoctorAgreesWithServe runs each doctor check and the function serve runs on the same
// input, and requires one verdict (issue 18): doctor FAILs exactly what serve refuses; ok and
// warn are what serve accepts. Serve's side is what serve calls: plugin.Listen for --listen,
// endpoints.Listen for --health-addr, and for the Vault backend's files vault.Open (its
// settings and TLS files) and a login (each auth method's credential files) against a stand-in
// Vault that gives every login a token.
func TestDoctorAgreesWithServe(t *testing.T) {
	t.Run("socket", func(t *testing.T) {
		base := plugintest.ShortTempDir(t)
		dir := func(name string, mode os.FileMode, uid int) string {
			d := filepath.Join(base, name)
			if err := os.Mkdir(d, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(d, mode); err != nil {
				t.Fatal(err)
			}
			if uid >= 0 {
				if err := os.Chown(d, uid, uid); err != nil {
					t.Fatal(err)
				}
			}
			return d
		}
		stale := filepath.Join(dir("stale", 0o700, -1), "kms.sock")
		l, err := net.Listen("unix", stale)
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
		live := filepath.Join(dir("live", 0o700, -1), "kms.sock")
		served, err := net.Listen("unix", live)
		if err != nil {
			t.Fatal(err)
		}
		defer served.Close()
		go acceptAndClose(served)
		file := filepath.Join(base, "file")
		if err := os.WriteFile(file, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		cases := []struct {
			name, path string
			accept     bool
		}{
			{"directory 0777", filepath.Join(dir("open", 0o777, -1), "kms.sock"), false},
			{"sticky directory 1777, like /tmp", filepath.Join(dir("sticky", 0o1777, -1), "kms.sock"), false},
			{"directory 0770", filepath.Join(dir("group", 0o770, -1), "kms.sock"), false},
			{"directory 0755 of our own", filepath.Join(dir("own", 0o755, -1), "kms.sock"), true},
			{"missing directories that can be created", filepath.Join(base, "new", "sub", "kms.sock"), true},
			{"missing directory under a file", filepath.Join(file, "sub", "kms.sock"), false},
			{"directory is a file", filepath.Join(file, "kms.sock"), false},
			{"path too long", filepath.Join(base, strings.Repeat("a", plugin.MaxSocketPath)+".sock"), false},
			{"stale socket", stale, true},
			{"live socket", live, false},
			{"a regular file in the way", file, false},
		}
		if os.Geteuid() == 0 {
			cases = append(cases, struct {
				name, path string
				accept     bool
			}{"directory 0755 of another user", filepath.Join(dir("theirs", 0o755, 4321), "kms.sock"), false})
		}
		if info, err := os.Stat("/tmp"); err == nil && info.Mode().Perm()&0o022 != 0 {
			cases = append(cases, struct {
				name, path string
				accept     bool
			}{"/tmp itself", fmt.Sprintf("/tmp/kms-doctor-%d.sock", os.Getpid()), false})
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				r := only(t, Socket(context.Background(), c.path, false)) // first: serve's Listen changes the path
				lis, serveErr := plugin.Listen(c.path, plugin.SocketOptions{GID: -1})
				if serveErr == nil {
					lis.Close()
				}
				agree(t, "socket "+c.path, r, serveErr, c.accept)
			})
		}
	})

	t.Run("health address", func(t *testing.T) {
		taken, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer taken.Close()
		for _, c := range []struct {
			name, addr string
			accept     bool
			status     Status // doctor's, when serve accepts
		}{
			{"free", "127.0.0.1:0", true, OK},
			{"taken by another listener", taken.Addr().String(), false, Fail},
			{"non-loopback", "0.0.0.0:0", true, Warn},
			{"not host:port", "8095", false, Fail},
		} {
			t.Run(c.name, func(t *testing.T) {
				r := HealthAddr(context.Background(), c.addr, false)
				srv, serveErr := endpoints.Listen(c.addr, endpoints.Config{Metrics: http.NotFoundHandler()})
				if serveErr == nil {
					go srv.Serve()
					srv.Shutdown(context.Background())
				}
				agree(t, "health address "+c.addr, r, serveErr, c.accept)
				if r.Status != c.status {
					t.Errorf("doctor: %s; want %s", r, c.status)
				}
			})
		}
	})

	t.Run("vault files", func(t *testing.T) {
		dir, write := fileWriter(t)
		pki := run.NewTestPKI(t, t.TempDir())
		stand := standInVault(t, pki)
		certPEM, keyPEM := readFile(t, pki.ClientCert), readFile(t, pki.ClientKey)
		link := func(name, target string) string {
			p := filepath.Join(dir, name)
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
			return p
		}
		ca := write("ca.pem", stand.caPEM, 0o644)
		token := write("token", "hvs.x", 0o600)
		base := func(auth vault.Auth) vault.Config {
			return vault.Config{Address: stand.addr, CAFile: ca, Key: "k", Auth: auth}
		}
		tokenAuth := &vault.TokenFile{Path: token}
		withTLS := func(caFile, cert, key string) vault.Config {
			cfg := base(tokenAuth)
			cfg.CAFile, cfg.ClientCert, cfg.ClientKey = caFile, cert, key
			return cfg
		}
		goodCert := write("client.crt", certPEM, 0o644)
		goodKey := write("client.key", keyPEM, 0o600)
		openKey := write("open.key", keyPEM, 0o644)
		missing := filepath.Join(dir, "missing")
		roleID := write("role-id", "role", 0o600)
		secretID := write("secret-id", "sid", 0o600)
		cases := []struct {
			name   string
			cfg    vault.Config
			accept bool
		}{
			// TLS files (internal/tlsfiles)
			{"good CA and client certificate", withTLS(ca, goodCert, goodKey), true},
			{"client key 0644", withTLS(ca, goodCert, openKey), false},
			{"CA 0666", withTLS(write("open-ca.pem", stand.caPEM, 0o666), "", ""), false},
			{"CA missing", withTLS(missing, "", ""), false},
			{"CA through a symlink", withTLS(link("ca-link.pem", ca), "", ""), true},
			{"client key through a symlink to a 0644 file", withTLS(ca, goodCert, link("key-link", openKey)), false},
			{"client certificate 0666", withTLS(ca, write("open.crt", certPEM, 0o666), goodKey), false},
			{"client certificate holding its key, 0644", withTLS(ca, write("both-open.pem", certPEM+keyPEM, 0o644), goodKey), false},
			// token
			{"token file", base(tokenAuth), true},
			{"token file 0644", base(&vault.TokenFile{Path: write("token-open", "hvs.x", 0o644)}), false},
			{"token file missing", base(&vault.TokenFile{Path: missing}), false},
			{"token file empty", base(&vault.TokenFile{Path: write("token-empty", "\n", 0o600)}), false},
			{"token file through a symlink", base(&vault.TokenFile{Path: link("token-link", token)}), true},
			{"token file through a symlink to a 0644 file", base(&vault.TokenFile{Path: link("token-open-link", filepath.Join(dir, "token-open"))}), false},
			{"token from the environment", base(vault.StaticToken{Token: "hvs.x"}), true},
			// approle
			{"approle files", base(vault.AppRole{RoleIDFile: roleID, SecretIDFile: secretID}), true},
			{"approle inline role id", base(vault.AppRole{RoleID: "role", SecretIDFile: secretID}), true},
			{"approle role id file 0644", base(vault.AppRole{RoleIDFile: write("role-open", "role", 0o644), SecretIDFile: secretID}), false},
			{"approle secret id file 0644", base(vault.AppRole{RoleIDFile: roleID, SecretIDFile: write("sid-open", "sid", 0o644)}), false},
			{"approle secret id file missing", base(vault.AppRole{RoleIDFile: roleID, SecretIDFile: missing}), false},
			// kubernetes: kubelet's mode is taken (doctor warns)
			{"kubernetes token", base(vault.Kubernetes{Role: "kms", JWTFile: write("sa", "eyJ.sa", 0o600)}), true},
			{"kubernetes token 0644", base(vault.Kubernetes{Role: "kms", JWTFile: write("sa-open", "eyJ.sa", 0o644)}), true},
			{"kubernetes token missing", base(vault.Kubernetes{Role: "kms", JWTFile: missing}), false},
			// jwt
			{"jwt file", base(&vault.JWT{TokenFile: write("jwt", "eyJ.x", 0o600)}), true},
			{"jwt file 0644", base(&vault.JWT{TokenFile: write("jwt-open", "eyJ.x", 0o644)}), false},
			// cert
			{"cert auth certificate and key", base(&vault.Cert{CertFile: goodCert, KeyFile: goodKey}), true},
			{"cert auth key 0644", base(&vault.Cert{CertFile: goodCert, KeyFile: openKey}), false},
			{"cert auth certificate 0666", base(&vault.Cert{CertFile: filepath.Join(dir, "open.crt"), KeyFile: goodKey}), false},
			{"cert auth combined file", base(&vault.Cert{PEMFile: write("both.pem", certPEM+keyPEM, 0o600)}), true},
			{"cert auth combined file 0644", base(&vault.Cert{PEMFile: filepath.Join(dir, "both-open.pem")}), false},
		}
		if _, err := os.Stat(vault.DefaultServiceAccountTokenFile); os.IsNotExist(err) {
			cases = append(cases, struct {
				name   string
				cfg    vault.Config
				accept bool
			}{"kubernetes token at its default path, missing", base(vault.Kubernetes{Role: "kms"}), false})
		}
		if os.Geteuid() == 0 {
			theirs := write("theirs", "sid", 0o600)
			if err := os.Chown(theirs, 4321, 4321); err != nil {
				t.Fatal(err)
			}
			cases = append(cases, struct {
				name   string
				cfg    vault.Config
				accept bool
			}{"secret id file of another user", base(vault.AppRole{RoleIDFile: roleID, SecretIDFile: theirs}), false})
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				rs := Files(VaultFiles(c.cfg))
				serveErr := serveVault(c.cfg)
				if len(rs) == 0 {
					if _, env := c.cfg.Auth.(vault.StaticToken); !env || c.cfg.CAFile != "" {
						t.Fatal("doctor checked no file")
					}
					rs = []Result{ok("file permissions", "no file")}
				}
				worst := rs[0]
				for _, r := range rs {
					if r.Status > worst.Status {
						worst = r
					}
				}
				agree(t, c.name, worst, serveErr, c.accept)
				if serveErr != nil && worst.Status == Fail {
					// The same file: serve's refusal names the path doctor failed.
					if path := failedPath(rs); !strings.Contains(serveErr.Error(), path) {
						t.Errorf("serve refused %v, doctor failed %s", serveErr, path)
					}
				}
			})
		}
	})
}

// agree requires doctor's result r and serve's error to give one verdict, the expected one.
func agree(t *testing.T, input string, r Result, serveErr error, accept bool) {
	t.Helper()
	t.Logf("doctor: %s\nserve: %v", r, serveErr)
	if serveAccepts := serveErr == nil; serveAccepts != accept {
		t.Errorf("%s: serve accepts %v, want %v (%v)", input, serveAccepts, accept, serveErr)
	}
	if doctorAccepts := r.Status != Fail; doctorAccepts != (serveErr == nil) {
		t.Errorf("%s: doctor says %q, serve says %v", input, r, serveErr)
	}
}

// serveVault is what serve does with cfg's files: it opens the backend (settings and TLS files)
// and logs in (the auth method's files), as the backend's first check does.
func serveVault(cfg vault.Config) error {
	if _, err := vault.Open(cfg); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := vault.Login(ctx, cfg)
	return err
}

func failedPath(rs []Result) string {
	for _, r := range rs {
		if r.Status == Fail {
			for _, w := range strings.Fields(r.Detail) {
				if strings.HasPrefix(w, "/") {
					return strings.TrimSuffix(w, ":")
				}
			}
		}
	}
	return ""
}

func acceptAndClose(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}

type standIn struct{ addr, caPEM string }

// standInVault is an https server, with pki's server certificate, that gives every login a
// token: a login fails only on our side of the wire, over the files.
func standInVault(t *testing.T, pki run.TestPKI) standIn {
	cert, err := tls.LoadX509KeyPair(pki.ServerCert, pki.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"auth":{"client_token":"hvs.stand-in","lease_duration":3600,"renewable":true}}`)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return standIn{addr: srv.URL, caPEM: readFile(t, pki.CAFile)}
}

func readFile(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
