package plugin_test

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsplugin/kms-plugin/internal/testing/plugintest"
	"github.com/kmsplugin/kms-plugin/plugin"
)

func TestListenCreatesPrivateSocketAndDirectory(t *testing.T) {
	path := filepath.Join(shortTempDir(t), "new", "kms.sock")
	lis, err := plugin.Listen(path, plugin.SocketOptions{GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	info, _ := os.Stat(path)
	if info.Mode().Type() != os.ModeSocket || info.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v", info.Mode())
	}
	dir, _ := os.Stat(filepath.Dir(path))
	if dir.Mode().Perm() != 0o700 {
		t.Fatalf("directory mode %v", dir.Mode())
	}
	lis.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatal("socket file left behind after close")
	}
}

func TestListenSocketModeAndGroup(t *testing.T) {
	path := filepath.Join(shortTempDir(t), "kms.sock")
	lis, err := plugin.Listen(path, plugin.SocketOptions{Mode: 0o660, GID: os.Getgid()})
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	if info, _ := os.Stat(path); info.Mode().Perm() != 0o660 {
		t.Fatalf("mode %v", info.Mode())
	}
}

func TestListenRemovesStaleSocket(t *testing.T) {
	path := filepath.Join(shortTempDir(t), "kms.sock")
	// A socket file whose process is gone: bind, then leave the file behind.
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	lis, err := plugin.Listen(path, plugin.SocketOptions{GID: -1})
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	lis.Close()
}

func TestListenRefusesALiveSocket(t *testing.T) {
	path := filepath.Join(shortTempDir(t), "kms.sock")
	first, err := plugin.Listen(path, plugin.SocketOptions{GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	go func() {
		for {
			c, err := first.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if _, err := plugin.Listen(path, plugin.SocketOptions{GID: -1}); err == nil || !strings.Contains(err.Error(), "another live process") {
		t.Fatalf("second Listen: %v", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatal("the live socket was removed")
	}
}

func TestListenRefusesToRemoveARegularFile(t *testing.T) {
	path := filepath.Join(shortTempDir(t), "kms.sock")
	os.WriteFile(path, []byte("precious"), 0o600)
	if _, err := plugin.Listen(path, plugin.SocketOptions{GID: -1}); err == nil {
		t.Fatal("Listen replaced a regular file")
	}
	if b, _ := os.ReadFile(path); string(b) != "precious" {
		t.Fatal("regular file changed")
	}
}

// A socket directory that group or others may write is refused: they could swap the socket's
// path for a link to another file between our checks and our use of it.
func TestListenRefusesAWritableDirectory(t *testing.T) {
	for _, mode := range []os.FileMode{0o777, 0o770, 0o1777, 0o702} {
		dir := filepath.Join(plugintest.ShortTempDir(t), "sock")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, mode); err != nil {
			t.Fatal(err)
		}
		lis, err := plugin.Listen(filepath.Join(dir, "kms.sock"), plugin.SocketOptions{GID: -1})
		if err == nil {
			lis.Close()
			t.Errorf("directory mode %04o: Listen succeeded", mode)
		} else if !strings.Contains(err.Error(), "may write") {
			t.Errorf("directory mode %04o: %v", mode, err)
		}
	}
}
