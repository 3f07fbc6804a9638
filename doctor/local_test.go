package doctor

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsplugin/kms-plugin/backends/localaes"
	"github.com/kmsplugin/kms-plugin/internal/privatefile"
	"github.com/kmsplugin/kms-plugin/internal/testing/plugintest"
	"github.com/kmsplugin/kms-plugin/plugin/endpoints"
)

func only(t *testing.T, rs []Result) Result {
	t.Helper()
	if len(rs) != 1 {
		t.Fatalf("want one result, got %v", rs)
	}
	return rs[0]
}

func wantStatus(t *testing.T, r Result, want Status, substr string) {
	t.Helper()
	if r.Status != want || !strings.Contains(r.String(), substr) {
		t.Errorf("got %q, want status %s mentioning %q", r, want, substr)
	}
}

func TestSocket(t *testing.T) {
	ctx := context.Background()
	dir := plugintest.ShortTempDir(t)

	t.Run("free path in a directory to create", func(t *testing.T) {
		wantStatus(t, only(t, Socket(ctx, filepath.Join(dir, "new", "kms.sock"), false)), OK, "no socket yet")
	})
	t.Run("nothing there but --running", func(t *testing.T) {
		wantStatus(t, only(t, Socket(ctx, filepath.Join(dir, "none.sock"), true)), Fail, "--running")
	})
	t.Run("too long", func(t *testing.T) {
		wantStatus(t, only(t, Socket(ctx, "/"+strings.Repeat("a", 120), false)), Fail, "longer than a unix socket")
	})
	t.Run("parent is a file", func(t *testing.T) {
		f := filepath.Join(dir, "file")
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		wantStatus(t, only(t, Socket(ctx, filepath.Join(f, "kms.sock"), false)), Fail, "not a directory")
		wantStatus(t, only(t, Socket(ctx, f, false)), Fail, "not a socket")
	})
	t.Run("stale socket", func(t *testing.T) {
		path := filepath.Join(dir, "stale.sock")
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
		wantStatus(t, only(t, Socket(ctx, path, false)), OK, "stale socket")
		wantStatus(t, only(t, Socket(ctx, path, true)), Fail, "no process listens")
	})
	t.Run("live process that is not a plugin", func(t *testing.T) {
		path := filepath.Join(dir, "live.sock")
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		wantStatus(t, only(t, Socket(ctx, path, false)), Fail, "served by another live process")
		wantStatus(t, only(t, Socket(ctx, path, true)), Fail, "Status over")
	})
	t.Run("running plugin", func(t *testing.T) {
		path := filepath.Join(dir, "plugin.sock")
		plugintest.ServeLocalAES(t, plugintest.Options{Socket: path})
		wantStatus(t, only(t, Socket(ctx, path, true)), OK, "healthz ok, key_id localaes:")
		wantStatus(t, only(t, Socket(ctx, path, false)), Fail, "--running")
	})
}

// Beside a running plugin, the health address is expected to answer its /healthz.
func TestHealthAddrRunning(t *testing.T) {
	srv, err := endpoints.Listen("127.0.0.1:0", endpoints.Config{Ready: func() error { return nil }, Metrics: http.NotFoundHandler()})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	defer srv.Shutdown(context.Background())
	ctx := context.Background()
	wantStatus(t, HealthAddr(ctx, srv.Addr(), true), OK, "/healthz: ok")
	wantStatus(t, HealthAddr(ctx, srv.Addr(), false), Fail, "cannot be bound") // taken, by the plugin
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	free := l.Addr().String()
	l.Close()
	wantStatus(t, HealthAddr(ctx, free, true), Fail, "--health-addr")
	wantStatus(t, HealthAddr(ctx, "", true), OK, "endpoints off")
}

func TestFiles(t *testing.T) {
	dir, write := fileWriter(t)
	file := func(what, path string, rule privatefile.Rule) File {
		return File{What: what, Path: path, Rule: rule, Read: func() ([]byte, error) { return privatefile.ReadAs(path, rule) }}
	}
	for _, c := range []struct {
		name string
		file File
		want Status
		says string
	}{
		{"private token", file("token", write("t1", "s.x", 0o600), privatefile.Secret), OK, "mode 0600"},
		{"token readable by group", file("token", write("t2", "s.x", 0o640), privatefile.Secret), Fail, "chmod 600"},
		{"token readable by all", file("token", write("t3", "s.x", 0o644), privatefile.Secret), Fail, "group or others can read"},
		{"projected token readable by all", file("sa token", write("t4", "jwt", 0o644), privatefile.Any), Warn, "chmod 600"},
		{"CA readable by all", file("CA", write("ca1", cert, 0o644), privatefile.Public), OK, "mode 0644"},
		{"CA writable by group", file("CA", write("ca2", cert, 0o664), privatefile.Public), Fail, "can replace it"},
		{"certificate with its key", file("client certificate", write("c1", cert+key, 0o644), privatefile.Public), Fail, "chmod 600"},
		{"missing", file("token", filepath.Join(dir, "none"), privatefile.Secret), Fail, "does not exist"},
		{"directory", file("token", dir, privatefile.Secret), Fail, "not a regular file"},
	} {
		t.Run(c.name, func(t *testing.T) { wantStatus(t, only(t, Files([]File{c.file})), c.want, c.says) })
	}
}

func TestLocalAES(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "keys.yaml")
	if _, err := localaes.AddKey(keyFile, "", true); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, LocalAES(keyFile), OK, "1 keys")
	if err := os.Chmod(keyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, LocalAES(keyFile), Fail, "mode 0644")
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("keys: [{name: a, secret: short}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, LocalAES(bad), Fail, "bad.yaml")
}

func TestReport(t *testing.T) {
	rep := Report{ok("a", "fine"), warn("b", "narrow it", "broad"), fail("c", "fix it", "broken\nbadly")}
	var b strings.Builder
	if err := rep.Write(&b); err != nil {
		t.Fatal(err)
	}
	want := "ok    a                    fine\n" +
		"warn  b                    broad -- fix: narrow it\n" +
		"FAIL  c                    broken badly -- fix: fix it\n"
	if b.String() != want || rep.Failed() != 1 {
		t.Errorf("got\n%s(failed %d), want\n%s", b.String(), rep.Failed(), want)
	}
}

// Placeholder PEM blocks: the files' modes are judged, not their contents.
const (
	cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
	key  = "-----BEGIN EC PRIVATE KEY-----\nMHcC\n-----END EC PRIVATE KEY-----\n"
)

// fileWriter returns a temp dir and a function that writes a file in it with the given mode.
func fileWriter(t *testing.T) (dir string, write func(name, content string, mode os.FileMode) string) {
	dir = t.TempDir()
	return dir, func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
}
