package localaes_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/backends/localaes"
	"github.com/kmsplugin/kms-plugin/internal/clock"
)

// The child processes of the concurrency tests are this test binary run again: the variables
// say what to do, and when to start, so that the children really run at once.
const (
	helperEnv = "LOCALAES_TEST_HELPER" // "addkey" or "create"
	pathEnv   = "LOCALAES_TEST_KEY_FILE"
	startEnv  = "LOCALAES_TEST_START" // unix nanoseconds
)

// TestHelperProcess is not a test: it is a child process of the tests below. It prints the id
// of the key it added, or for "create" the id of the write key of the file it loaded and, if
// it created the file, the id of the key it created.
func TestHelperProcess(t *testing.T) {
	what := os.Getenv(helperEnv)
	if what == "" {
		t.Skip("a child process of the concurrency tests")
	}
	start, _ := strconv.ParseInt(os.Getenv(startEnv), 10, 64)
	time.Sleep(time.Until(time.Unix(0, start)))
	path := os.Getenv(pathEnv)
	switch what {
	case "hold": // hold the key file's lock until stdin closes
		f, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
		if err == nil {
			err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		}
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("held")
		io.Copy(io.Discard, os.Stdin)
	case "addkey":
		id, err := localaes.AddKey(path, "", false)
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println(id)
	case "create":
		using, created, err := createAndOpen(path)
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println(using, created)
	}
	os.Exit(0)
}

// createAndOpen is what a plugin starting on the default path does: create the key file if it
// is missing, then load it. It returns the key the plugin would wrap with, and the id of the
// key it created ("" if it found the file).
func createAndOpen(path string) (using, created string, err error) {
	id, ok, err := localaes.CreateKeyFile(path)
	if err != nil {
		return "", "", err
	}
	b, err := localaes.Open(path)
	if err != nil {
		return "", "", err
	}
	if ok {
		created = id
	}
	return b.CurrentID(), created, nil
}

// runChildren runs n copies of the helper at once and returns each one's output lines.
func runChildren(t *testing.T, n int, what, path string) [][]string {
	t.Helper()
	start := time.Now().Add(time.Second).UnixNano()
	cmds := make([]*exec.Cmd, n)
	outs := make([]*strings.Builder, n)
	for i := range cmds {
		cmds[i] = exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
		cmds[i].Env = append(os.Environ(), helperEnv+"="+what, pathEnv+"="+path, startEnv+"="+strconv.FormatInt(start, 10))
		outs[i] = &strings.Builder{}
		cmds[i].Stdout, cmds[i].Stderr = outs[i], outs[i]
		if err := cmds[i].Start(); err != nil {
			t.Fatal(err)
		}
	}
	lines := make([][]string, n)
	for i, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Fatalf("child %d: %v\n%s", i, err, outs[i])
		}
		lines[i] = strings.Fields(outs[i].String())
	}
	return lines
}

func fileKeyIDs(t *testing.T, path string) []string {
	t.Helper()
	b, err := localaes.Open(path)
	if err != nil {
		t.Fatalf("the key file after the writers: %v", err)
	}
	return b.KeyIDs()
}

func wantAllPresent(t *testing.T, path string, ids []string) {
	t.Helper()
	inFile := fileKeyIDs(t, path)
	lost := 0
	for _, id := range ids {
		if !slices.Contains(inFile, id) {
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d keys reported as added are not in the file (it holds %d keys)", lost, len(ids), len(inFile))
	}
}

// Twenty keygen runs at once on one file: every key reported as added must be in the file.
func TestConcurrentAddKeyLosesNoKey(t *testing.T) {
	const n = 20
	t.Run("goroutines", func(t *testing.T) {
		path := newKeyFile(t)
		ids := make([]string, n)
		var wg sync.WaitGroup
		for i := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				id, err := localaes.AddKey(path, "", i%2 == 0)
				if err != nil {
					t.Error(err)
				}
				ids[i] = id
			}()
		}
		wg.Wait()
		wantAllPresent(t, path, ids)
		if got := len(fileKeyIDs(t, path)); got != n+1 {
			t.Fatalf("the file holds %d keys, want %d", got, n+1)
		}
	})
	t.Run("processes", func(t *testing.T) {
		path := newKeyFile(t)
		var ids []string
		for _, out := range runChildren(t, n, "addkey", path) {
			ids = append(ids, out...)
		}
		if len(ids) != n {
			t.Fatalf("children printed %d ids: %v", len(ids), ids)
		}
		wantAllPresent(t, path, ids)
	})
}

// Plugins starting at once on a missing default file: one file, holding every key a plugin
// created and every key a plugin wraps with.
func TestConcurrentFirstStartMakesOneFile(t *testing.T) {
	const n = 20
	check := func(t *testing.T, path string, using, created []string) {
		t.Helper()
		if len(created) != 1 {
			t.Errorf("%d plugins created a key, want exactly one: %v", len(created), created)
		}
		wantAllPresent(t, path, append(using, created...))
		if got := fileKeyIDs(t, path); len(got) != 1 {
			t.Errorf("the file holds %d keys, want 1", len(got))
		}
	}
	t.Run("goroutines", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "keys.yaml")
		var mu sync.Mutex
		var using, created []string
		var wg sync.WaitGroup
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				u, c, err := createAndOpen(path)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				defer mu.Unlock()
				using = append(using, u)
				if c != "" {
					created = append(created, c)
				}
			}()
		}
		wg.Wait()
		check(t, path, using, created)
	})
	t.Run("processes", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "keys.yaml")
		var using, created []string
		for _, out := range runChildren(t, n, "create", path) {
			if len(out) < 1 {
				t.Fatalf("a child printed %v", out)
			}
			using = append(using, out[0])
			created = append(created, out[1:]...)
		}
		check(t, path, using, created)
	})
}

// A creation that finds the file already there adds nothing.
func TestCreateKeyFileLeavesAnExistingFile(t *testing.T) {
	path := newKeyFile(t)
	before, _ := os.ReadFile(path)
	if _, created, err := localaes.CreateKeyFile(path); err != nil || created {
		t.Fatalf("CreateKeyFile on an existing file: created %v, %v", created, err)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Fatal("CreateKeyFile changed an existing file")
	}
}

// A key file owned by another user is refused: that user can read every key, or replace them.
func TestKeyFileOwnedByAnotherUserIsRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("changing a file's owner needs root")
	}
	path := newKeyFile(t)
	if err := os.Chown(path, 4321, 4321); err != nil {
		t.Fatal(err)
	}
	_, err := localaes.Open(path)
	if err == nil || !strings.Contains(err.Error(), "owned by uid 4321") || !strings.Contains(err.Error(), "chown root "+path) {
		t.Fatalf("Open of a file owned by uid 4321: %v; want a refusal naming the owner and the fix", err)
	}
	if _, err := localaes.AddKey(path, "", false); err == nil {
		t.Fatal("AddKey extended a file owned by another user")
	}
}

// Kubernetes Secret and ConfigMap volumes mount files as symlinks into ..data/.
func TestSymlinkedKeyFileIsAccepted(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "..2024_01_01_00_00_00.000000001")
	target := filepath.Join(data, "keys.yaml")
	if _, err := localaes.AddKey(target, "first", true); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Base(data), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "keys.yaml")
	if err := os.Symlink("..data/keys.yaml", link); err != nil {
		t.Fatal(err)
	}
	b, err := localaes.Open(link)
	if err != nil {
		t.Fatalf("Open of a symlinked key file: %v", err)
	}
	if err := b.Reload(); err != nil {
		t.Fatalf("Reload of a symlinked key file: %v", err)
	}
	// keygen through the link edits the file it points to and keeps the link.
	id, err := localaes.AddKey(link, "second", true)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := os.Lstat(link); err != nil || info.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("AddKey replaced the symlink: %v, %v", info, err)
	}
	if ids := fileKeyIDs(t, target); ids[0] != id {
		t.Fatalf("the file the link points to has write key %s, want %s", ids[0], id)
	}
	// The file the link resolves to is judged, not the link (whose mode is 0777).
	os.Chmod(target, 0o644)
	if _, err := localaes.Open(link); err == nil || !strings.Contains(err.Error(), "mode 0644") {
		t.Fatalf("a symlink to a 0644 key file: %v", err)
	}
}

// The lock file is private too, and beside the key file.
func TestLockFileIsPrivate(t *testing.T) {
	path := newKeyFile(t)
	info, err := os.Stat(path + ".lock")
	if err != nil {
		t.Fatalf("no lock file beside the key file: %v", err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Fatalf("lock file mode %04o, want 0600", perm)
	}
}

// RemoveKey removes a decrypt-only key once inUse allows it, never the write key, and keeps
// the file as it was when inUse refuses.
func TestRemoveKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.yaml")
	first, err := localaes.AddKey(path, "first", true)
	if err != nil {
		t.Fatal(err)
	}
	old, err := localaes.AddKey(path, "old", false)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	if _, err := localaes.RemoveKey(path, "first", func(string) error { return nil }); err == nil || !strings.Contains(err.Error(), "write key") {
		t.Fatalf("removing the write key: %v", err)
	}
	var asked string
	if _, err := localaes.RemoveKey(path, "old", func(id string) error { asked = id; return errors.New("3 objects under it") }); err == nil || asked != old {
		t.Fatalf("inUse refused: %v (asked about %q, want %q)", err, asked, old)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Fatal("a refused removal changed the file")
	}
	if _, err := localaes.RemoveKey(path, "missing", func(string) error { return nil }); err == nil {
		t.Fatal("removing a key that is not there succeeded")
	}
	id, err := localaes.RemoveKey(path, "old", func(string) error { return nil })
	if err != nil || id != old {
		t.Fatalf("RemoveKey = %q, %v", id, err)
	}
	k, err := localaes.Open(path)
	if err != nil || strings.Join(k.KeyIDs(), ",") != first {
		t.Fatalf("after removal: %v, %v", k, err)
	}
}

// holdLock takes the key file's lock on a descriptor of its own, as another writer would, and
// returns its release.
func holdLock(t *testing.T, path string) (release func()) {
	t.Helper()
	f, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return func() { f.Close() }
}

// waitingEditor is an Editor on a fake clock that reports on waiting when it starts to wait.
func waitingEditor(wait time.Duration) (localaes.Editor, *clock.Fake, chan string) {
	fake := clock.NewFake(time.Unix(1e9, 0))
	waiting := make(chan string, 1)
	return localaes.Editor{Wait: wait, Clock: fake, Waiting: func(msg string) { waiting <- msg }}, fake, waiting
}

// untilTimer returns once the editor waits on the fake clock.
func untilTimer(fake *clock.Fake) {
	for fake.Waiters() == 0 {
		time.Sleep(time.Millisecond)
	}
}

// A writer that finds the lock held says what it waits for, and gives up with an error naming
// the lock and its holder once the bound has passed; the file is left as it was.
func TestLockHeldPastTheBoundFails(t *testing.T) {
	path := newKeyFile(t)
	before, _ := os.ReadFile(path)
	holdLock(t, path)
	e, fake, waiting := waitingEditor(time.Minute)
	done := make(chan error, 1)
	go func() {
		_, err := e.AddKey(path, "", false)
		done <- err
	}()
	msg := <-waiting
	holder := fmt.Sprintf("held by pid %d", os.Getpid())
	for _, want := range []string{"waiting for the lock on " + path + ".lock", holder, "giving up after 1m0s"} {
		if !strings.Contains(msg, want) {
			t.Errorf("waiting message %q does not say %q", msg, want)
		}
	}
	untilTimer(fake)
	fake.Advance(time.Minute)
	err := <-done
	if err == nil || !strings.Contains(err.Error(), path+".lock") || !strings.Contains(err.Error(), "still held") || !strings.Contains(err.Error(), holder) {
		t.Fatalf("AddKey past the bound: %v; want an error naming the lock and its holder", err)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Fatal("a writer that gave up changed the file")
	}
}

// A lock released within the bound is taken, and the change made.
func TestLockReleasedWithinTheBoundIsTaken(t *testing.T) {
	path := newKeyFile(t)
	release := holdLock(t, path)
	e, _, waiting := waitingEditor(time.Minute)
	done := make(chan error, 1)
	go func() {
		_, err := e.AddKey(path, "later", false)
		done <- err
	}()
	<-waiting
	release()
	if err := <-done; err != nil {
		t.Fatalf("AddKey after the lock was released: %v", err)
	}
	if got := fileKeyIDs(t, path); len(got) != 2 {
		t.Fatalf("the file holds %d keys, want 2", len(got))
	}
}

// Another process holding the lock: the error names it, within a short bound on the real clock.
func TestLockHeldByAnotherProcess(t *testing.T) {
	path := newKeyFile(t)
	child := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	child.Env = append(os.Environ(), helperEnv+"=hold", pathEnv+"="+path)
	stdin, err := child.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Wait()
	defer stdin.Close()
	if line, _ := bufio.NewReader(stdout).ReadString('\n'); line != "held\n" {
		t.Fatalf("the child printed %q", line)
	}
	_, err = localaes.Editor{Wait: 50 * time.Millisecond}.AddKey(path, "", false)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("still held by pid %d", child.Process.Pid)) {
		t.Fatalf("AddKey while another process holds the lock: %v; want an error naming pid %d", err, child.Process.Pid)
	}
}

// The lock file is judged like the key file: a lock file that others may write, that another
// user owns, or that is a symlink is refused, and the key file is left alone.
func TestBadLockFileIsRefused(t *testing.T) {
	for _, c := range []struct {
		name string
		bad  func(t *testing.T, lock string)
		says string // after the key file's path
	}{
		{"mode", func(t *testing.T, lock string) { os.Chmod(lock, 0o666) }, ".lock has mode 0666"},
		{"owner", func(t *testing.T, lock string) {
			if os.Geteuid() != 0 {
				t.Skip("changing a file's owner needs root")
			}
			os.Chown(lock, 4321, 4321)
		}, ".lock is owned by uid 4321"},
		{"symlink", func(t *testing.T, lock string) {
			os.Remove(lock)
			os.Symlink(filepath.Join(t.TempDir(), "elsewhere"), lock)
		}, ".lock is a symlink"},
		{"directory", func(t *testing.T, lock string) {
			os.Remove(lock)
			os.Mkdir(lock, 0o700)
		}, ".lock: is a directory"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := newKeyFile(t)
			before, _ := os.ReadFile(path)
			c.bad(t, path+".lock")
			_, err := localaes.AddKey(path, "", false)
			if err == nil || !strings.Contains(err.Error(), path+c.says) {
				t.Fatalf("AddKey with a bad lock file: %v; want it refused: %q", err, c.says)
			}
			if after, _ := os.ReadFile(path); string(after) != string(before) {
				t.Fatal("the key file changed")
			}
		})
	}
}
