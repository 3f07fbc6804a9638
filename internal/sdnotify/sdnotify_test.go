package sdnotify

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

func listen(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func receive(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}

func TestNotify(t *testing.T) {
	dir, err := os.MkdirTemp("", "sdn")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "notify")
	conn := listen(t, path)
	if err := Notify(path, Ready, Status("serving\non /run/x.sock")); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, conn); got != "READY=1\nSTATUS=serving on /run/x.sock" {
		t.Fatalf("datagram %q", got)
	}

	abstract := listen(t, "\x00kms-plugin-sdnotify-test")
	if err := Notify("@kms-plugin-sdnotify-test", Stopping); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, abstract); got != "STOPPING=1" {
		t.Fatalf("abstract datagram %q", got)
	}

	if err := Notify("", Ready); err != nil {
		t.Fatalf("no socket: %v", err)
	}
	for _, bad := range []string{"relative", filepath.Join(dir, "absent")} {
		if err := Notify(bad, Ready); err == nil {
			t.Errorf("Notify(%q) succeeded", bad)
		}
	}
}
