package harness

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/integration/harness/run"
)

// Node is a control-plane node made of a real kubelet over containerd 2.x and Debian's runc,
// the way kubeadm runs one: static pods from /etc/kubernetes/manifests. It runs in a mount
// namespace of its own, where /etc, /var and /opt are overlays whose writes land in the temp
// root and /run is a fresh tmpfs: the manifests' fixed host paths (/etc/kubernetes/...,
// /var/run/kmsplugin) and what kubelet and containerd write to fixed paths
// (/var/lib/kubelet/device-plugins, /var/log/containers, /opt/containerd) exist only there;
// the state directories (containerd's, runc's, kubelet's, the pod logs, the volume plugins)
// are under the temp root; and the pods' cgroups are under a cgroup root of the test's own. Everything is undone when the test ends: processes killed, cgroups removed, and with
// the namespace's last process the mounts in it are gone; a mount left on the machine fails
// the test.
type Node struct {
	Name       string // the node's name: its mirror pods are <pod>-<Name>
	Root       string // the temp root
	Containerd *run.Process
	Kubelet    *run.Process

	t          testing.TB
	holder     *run.Process // keeps the mount namespace; every process enters it
	holderPID  int
	socket     string // containerd's CRI and API socket
	cgroupRoot string
}

// NodeOptions configure StartNode.
type NodeOptions struct {
	// Images are OCI archives (ImageStore.SaveOCIArchive) imported into containerd's k8s.io
	// namespace before kubelet starts: nothing is ever pulled.
	Images []string
	// SandboxImage is the pause image's name in one of Images, pinned as containerd's sandbox.
	SandboxImage string
}

// nodeMissing fails the test naming what this machine lacks for a kubelet node.
func nodeMissing(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("a kubelet node needs root (mount namespaces, cgroups, containers)")
	}
	for _, tool := range []string{"runc", "unshare", "nsenter", "mount", "gcc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("a kubelet node needs %s (%v): install Debian's runc, util-linux, mount and gcc", tool, err)
		}
	}
	for _, fs := range []string{"overlay", "tmpfs"} {
		raw, _ := os.ReadFile("/proc/filesystems")
		if !regexp.MustCompile(`\s` + fs + `\n`).Match(raw) {
			t.Fatalf("a kubelet node needs the kernel's %s filesystem", fs)
		}
	}
	for _, c := range []string{"cpu", "cpuacct", "cpuset", "memory", "pids"} {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", c)); err != nil {
			t.Fatalf("a kubelet node needs the cgroup v1 %s hierarchy at /sys/fs/cgroup/%s (this harness drives kubelet's cgroupfs driver on v1 or hybrid cgroups): %v", c, c, err)
		}
	}
}

// cgroupControllers are the v1 hierarchies kubelet and runc use; the cgroup root is made in
// each and removed at the end.
var cgroupControllers = []string{"cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer", "blkio", "systemd", "unified"}

// StartNode starts containerd in a new mount namespace, imports the images, and returns the
// node; StartKubelet then starts kubelet. The test writes the node's files (manifests, keys,
// PKI) with WriteFile, which writes inside the namespace.
func StartNode(t testing.TB, opts NodeOptions) *Node {
	t.Helper()
	nodeMissing(t)
	containerd := run.Binary(t, "containerd")
	run.Binary(t, "containerd-shim-runc-v2")
	runc, _ := exec.LookPath("runc")

	// The temp root: short, since containerd's socket path must fit in 108 bytes.
	root, err := os.MkdirTemp("", "kmsnode-")
	run.Must(t, err, "node root")
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	n := &Node{
		Name: "kms-plugin-node", Root: root, t: t,
		socket:     filepath.Join(root, "containerd.sock"),
		cgroupRoot: "/kms-plugin-test-" + hex.EncodeToString(suffix),
	}
	// Cleanups run last-in first-out: this one, registered first, checks after all the rest.
	var absent []string
	for _, p := range hostPathsKubeletWrites {
		if _, err := os.Lstat(p); os.IsNotExist(err) {
			absent = append(absent, p)
		}
	}
	t.Cleanup(func() { n.checkUndone(t, absent) })
	t.Cleanup(n.teardown)
	for _, c := range cgroupControllers {
		run.Must(t, os.MkdirAll(filepath.Join("/sys/fs/cgroup", c, n.cgroupRoot), 0o755), "cgroup root")
	}
	for _, d := range []string{"containerd/root", "containerd/state", "runc", "kubelet", "pod-logs"} {
		run.Must(t, os.MkdirAll(filepath.Join(root, d), 0o700), "node dir")
	}

	script := fmt.Sprintf(`set -e
for d in etc var opt; do
  mkdir -p %[1]s/$d-upper %[1]s/$d-work
  mount -t overlay overlay -o lowerdir=/$d,upperdir=%[1]s/$d-upper,workdir=%[1]s/$d-work /$d
done
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /etc/kubernetes/manifests
echo namespace ready
exec sleep 2147483647`, root)
	n.holder = run.Start(t, "node-namespace", "unshare", []string{"--mount", "--propagation", "private", "--", "/bin/sh", "-c", script})
	run.Eventually(t, 30*time.Second, "the node's mount namespace", func(context.Context) error {
		if n.holder.Exited() {
			t.Fatalf("the node's mount namespace: %s", n.holder.Log())
		}
		if !strings.Contains(n.holder.Log(), "namespace ready") {
			return errors.New("not yet")
		}
		return nil
	})
	n.holderPID = n.holder.Pid()

	// containerd 2.x, configuration version 3. Debian's runc with its state under the root;
	// the sandbox image pinned to the local pause image (never pulled, never collected).
	config := fmt.Sprintf(`version = 3
root = %q
state = %q
[grpc]
  address = %q
[ttrpc]
  address = %q
[plugins.'io.containerd.cri.v1.images']
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %q
[plugins.'io.containerd.cri.v1.runtime']
  # Without CAP_SYS_RESOURCE no process may lower its oom_score_adj below containerd's, and
  # kubelet asks -998 for critical pods: runc would fail to start them.
  restrict_oom_score_adj = true
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = 'io.containerd.runc.v2'
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
    BinaryName = %q
    Root = %q
    SystemdCgroup = false
[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
`, filepath.Join(root, "containerd/root"), filepath.Join(root, "containerd/state"), n.socket, n.socket+".ttrpc",
		opts.SandboxImage, runc, filepath.Join(root, "runc"))
	configPath := filepath.Join(root, "containerd.toml")
	run.Must(t, os.WriteFile(configPath, []byte(config), 0o600), "containerd config")
	// The shim is found beside containerd (build.sh links both into the servers directory).
	n.Containerd = n.start(t, "containerd", containerd, []string{"--config", configPath, "--log-level", "info"},
		"PATH="+run.ServersDir()+":"+os.Getenv("PATH"))
	run.Eventually(t, time.Minute, "containerd's socket", func(ctx context.Context) error {
		if n.Containerd.Exited() {
			t.Fatalf("containerd exited:\n%s", n.Containerd.Log())
		}
		_, err := n.Ctr(ctx, "version")
		return err
	})
	for _, archive := range opts.Images {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		out, err := n.Ctr(ctx, "images", "import", archive)
		cancel()
		run.Must(t, err, "ctr images import %s: %s", archive, out)
	}
	return n
}

// start runs bin inside the node's mount namespace.
func (n *Node) start(t testing.TB, name, bin string, args []string, env ...string) *run.Process {
	t.Helper()
	all := append([]string{"--target", strconv.Itoa(n.holderPID), "--mount", "--", bin}, args...)
	return run.Start(t, name, "nsenter", all, env...)
}

// Ctr runs containerd's ctr (containerd's second command) in the k8s.io namespace.
func (n *Node) Ctr(ctx context.Context, args ...string) (string, error) {
	all := append([]string{"--target", strconv.Itoa(n.holderPID), "--mount", "--",
		filepath.Join(run.ServersDir(), "containerd"), "ctr", "--address", n.socket, "--namespace", "k8s.io"}, args...)
	out, err := exec.CommandContext(ctx, "nsenter", all...).CombinedOutput()
	return string(out), err
}

// Path is where a path inside the node's mount namespace is seen from the test: under
// /proc/<pid>/root, with symbolic links resolved inside the node (/var/run is a link to /run,
// and an absolute link followed through /proc/<pid>/root would lead back to the machine's).
func (n *Node) Path(path string) string {
	root := fmt.Sprintf("/proc/%d/root", n.holderPID)
	rest := strings.Split(strings.Trim(filepath.Clean(path), "/"), "/")
	resolved := "/"
	for hops := 0; len(rest) > 0 && hops < 40; {
		next := filepath.Join(resolved, rest[0])
		rest = rest[1:]
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil { // not a link, or not there (yet): take it as it is
			resolved = next
			continue
		}
		hops++
		if !filepath.IsAbs(target) {
			target = filepath.Join(resolved, target)
		}
		rest = append(strings.Split(strings.Trim(filepath.Clean(target), "/"), "/"), rest...)
		resolved = "/"
	}
	return filepath.Join(root, resolved)
}

// WriteFile writes a file inside the node's namespace (for example a manifest under
// /etc/kubernetes/manifests), creating its directory, and replaces it in one rename so that
// kubelet never reads half a file.
func (n *Node) WriteFile(t testing.TB, path string, data []byte, perm os.FileMode) {
	t.Helper()
	p := n.Path(path)
	run.Must(t, os.MkdirAll(filepath.Dir(p), 0o755), "mkdir %s", filepath.Dir(path))
	tmp := filepath.Join(filepath.Dir(p), "."+filepath.Base(p)+".tmp")
	run.Must(t, os.WriteFile(tmp, data, perm), "write %s", path)
	run.Must(t, os.Rename(tmp, p), "rename %s", path)
}

// KubeletOptions configure StartKubelet.
type KubeletOptions struct {
	// Kubeconfig is the kubeconfig's content (written inside the namespace as
	// /etc/kubernetes/kubelet.conf, as kubeadm does): the apiserver that gets the mirror pods.
	Kubeconfig []byte
}

// StartKubelet starts kubelet on the node: static pods from /etc/kubernetes/manifests,
// containerd's CRI, the cgroupfs driver under the test's cgroup root, bound to 127.0.0.1.
func (n *Node) StartKubelet(t testing.TB, opts KubeletOptions) {
	t.Helper()
	bin := run.Binary(t, "kubelet")
	n.WriteFile(t, "/etc/kubernetes/kubelet.conf", opts.Kubeconfig, 0o600)
	// The hard limits of this machine cap what a container may ask for; kubelet's own
	// settings below are the ones that matter here (see docs/guide.md for a real node).
	config := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: %d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %d
staticPodPath: /etc/kubernetes/manifests
fileCheckFrequency: 2s
syncFrequency: 10s
containerRuntimeEndpoint: unix://%s
cgroupDriver: cgroupfs
cgroupRoot: %s
failCgroupV1: false
failSwapOn: false
podLogsDir: %s
volumePluginDir: %s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {}
enableServer: true
registerNode: true
`, run.FreePort(t), run.FreePort(t), n.socket, n.cgroupRoot, filepath.Join(n.Root, "pod-logs"), filepath.Join(n.Root, "volume-plugins"))
	configPath := filepath.Join(n.Root, "kubelet.yaml")
	run.Must(t, os.WriteFile(configPath, []byte(config), 0o600), "kubelet config")
	n.Kubelet = n.start(t, "kubelet", bin, []string{
		"--config=" + configPath,
		"--kubeconfig=/etc/kubernetes/kubelet.conf",
		"--root-dir=" + filepath.Join(n.Root, "kubelet"),
		"--cert-dir=" + filepath.Join(n.Root, "kubelet", "pki"),
		"--hostname-override=" + n.Name,
		"--v=2",
	})
}

// ContainerPID is the host PID of a running container's first process (a CRI container ID,
// without the "containerd://" of pod status).
func (n *Node) ContainerPID(ctx context.Context, id string) (int, error) {
	out, err := n.Ctr(ctx, "tasks", "list")
	if err != nil {
		return 0, fmt.Errorf("ctr tasks list: %v: %s", err, out)
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 3 && f[0] == id && f[2] == "RUNNING" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("container %s has no running task:\n%s", id, out)
}

// ContainerLog is what a container of a static pod (its name with the node's, as its
// mirror pod has it) wrote in its run number restart: kubelet's log file under podLogsDir,
// <namespace>_<pod>_<uid>/<container>/<restart>.log.
func (n *Node) ContainerLog(t testing.TB, pod, container string, restart int32) string {
	t.Helper()
	pattern := filepath.Join(n.Root, "pod-logs", "kube-system_"+pod+"_*", container, fmt.Sprintf("%d.log", restart))
	matches, err := filepath.Glob(pattern)
	if err != nil || len(matches) != 1 {
		t.Fatalf("the log of %s/%s run %d: %v, %v", pod, container, restart, matches, err)
	}
	raw, err := os.ReadFile(matches[0])
	run.Must(t, err, "container log")
	return string(raw)
}

// teardown stops kubelet, every container and containerd, then the namespace.
func (n *Node) teardown() {
	if n.Kubelet != nil {
		n.Kubelet.Kill()
	}
	// Every process of the pods, wherever runc put it, is in a cgroup under the root.
	n.killCgroup()
	if n.Containerd != nil {
		n.Containerd.Kill()
	}
	// The shims outlive containerd on purpose: end every process left in the namespace, and
	// any whose command line names the node's root (a shim's -address), should the namespace
	// be gone already.
	ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", n.holderPID))
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == n.holderPID || pid == os.Getpid() {
			continue
		}
		other, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if (ns != "" && other == ns) || bytes.Contains(cmdline, []byte(n.Root+"/")) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if n.holder != nil {
		n.holder.Kill()
	}
	for _, c := range cgroupControllers {
		removeCgroupTree(filepath.Join("/sys/fs/cgroup", c, n.cgroupRoot))
	}
	// containerd's snapshots were mounted only inside the namespace, now gone.
	_ = exec.Command("chmod", "-R", "u+w", n.Root).Run()
	if err := os.RemoveAll(n.Root); err != nil {
		n.t.Errorf("removing the node's root: %v", err)
	}
}

// killCgroup kills every process in the pods' cgroups and waits until they are gone.
func (n *Node) killCgroup() {
	dir := filepath.Join("/sys/fs/cgroup/pids", n.cgroupRoot)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var pids []int
		_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.Name() == "cgroup.procs" {
				raw, _ := os.ReadFile(path)
				for _, f := range strings.Fields(string(raw)) {
					if pid, err := strconv.Atoi(f); err == nil {
						pids = append(pids, pid)
					}
				}
			}
			return nil
		})
		if len(pids) == 0 {
			return
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(200 * time.Millisecond)
	}
	n.t.Errorf("processes left in %s after 30 s", dir)
}

// removeCgroupTree removes a cgroup directory and its children, deepest first.
func removeCgroupTree(dir string) {
	var dirs []string
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = os.Remove(dirs[i])
	}
}

// hostPathsKubeletWrites are the fixed paths kubelet, containerd and the manifests write to
// on a real node; the test's node must leave each one as it found it.
var hostPathsKubeletWrites = []string{"/etc/kubernetes", "/run/kmsplugin", "/var/lib/kubelet",
	"/var/log/containers", "/var/log/pods", "/opt/containerd", "/usr/libexec/kubernetes", "/run/containerd"}

// checkUndone fails the test if a mount, a cgroup or a file of the node is left, or one of
// the paths in absent (hostPathsKubeletWrites that did not exist before) now does.
func (n *Node) checkUndone(t testing.TB, absent []string) {
	for _, p := range absent {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s was made on the machine, outside the node's temporary root", p)
		}
	}
	raw, err := os.ReadFile("/proc/self/mountinfo")
	if err == nil && bytes.Contains(raw, []byte(n.Root)) {
		t.Errorf("mounts under %s left on the machine:\n%s", n.Root, grepLines(raw, n.Root))
	}
	for _, c := range cgroupControllers {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", c, n.cgroupRoot)); err == nil {
			t.Errorf("cgroup %s left in %s", n.cgroupRoot, c)
		}
	}
	if _, err := os.Stat(n.Root); err == nil {
		t.Errorf("the node's root %s is left", n.Root)
	}
}

func grepLines(raw []byte, s string) string {
	var out []string
	for _, l := range strings.Split(string(raw), "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// BuildPauseImage compiles the pause (sandbox) container of the kubelet's own module — the
// k8s.io/kubernetes version integration/servers/kubelet builds — statically with gcc, and
// commits it into store as name.
func BuildPauseImage(t testing.TB, store *ImageStore, name string) {
	t.Helper()
	root, err := moduleRoot()
	run.Must(t, err, "module root")
	// go mod download, not go list: with the kubelet binary cached, the module may be missing
	// from this machine's module cache (go list then names no directory); download fetches it.
	dl := exec.Command("go", "mod", "download", "-json", "k8s.io/kubernetes")
	dl.Dir = filepath.Join(root, "integration", "servers", "kubelet")
	dl.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	out, err := dl.Output()
	run.Must(t, err, "downloading k8s.io/kubernetes for pause.c")
	var mod struct{ Dir, Error string }
	run.Must(t, json.Unmarshal(out, &mod), "go mod download -json k8s.io/kubernetes")
	if mod.Dir == "" {
		t.Fatalf("go mod download k8s.io/kubernetes gave no directory: %s", mod.Error)
	}
	src := filepath.Join(mod.Dir, "build", "pause", "linux", "pause.c")
	bin := filepath.Join(t.TempDir(), "pause")
	if out, err := exec.Command("gcc", "-Os", "-Wall", "-Werror", "-static", "-DVERSION=local", "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("gcc -static %s: %v\n%s", src, err, out)
	}
	ctr := store.Buildah(t, "from", "scratch")
	store.Buildah(t, "copy", ctr, bin, "/pause")
	store.Buildah(t, "config", "--entrypoint", `["/pause"]`, "--user", "65535:65535", ctr)
	store.Buildah(t, "commit", "--rm", ctr, name)
}

// BuildKubeAPIServerImage puts the kube-apiserver that build.sh built (a static binary) on
// an empty base, as name.
func BuildKubeAPIServerImage(t testing.TB, store *ImageStore, name string) {
	t.Helper()
	bin, err := filepath.EvalSymlinks(run.Binary(t, "kube-apiserver"))
	run.Must(t, err, "kube-apiserver binary")
	ctr := store.Buildah(t, "from", "scratch")
	store.Buildah(t, "copy", ctr, bin, "/usr/local/bin/kube-apiserver")
	store.Buildah(t, "config", "--entrypoint", `["/usr/local/bin/kube-apiserver"]`, ctr)
	store.Buildah(t, "commit", "--rm", ctr, name)
}
