package integration

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
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"

	"github.com/kmsplugin/kms-plugin/integration/harness"
	"github.com/kmsplugin/kms-plugin/integration/harness/run"
	"github.com/kmsplugin/kms-plugin/integration/harness/vaultd"
	"github.com/kmsplugin/kms-plugin/internal/kmsclient"
)

const (
	kubeAPIServerImage = "localhost/kube-apiserver:v1.37.2" // the harness's build, on an empty base
	pauseImage         = "localhost/pause:local"            // pause.c of the kubelet's module
)

// kubeadmAPIServer is kube-apiserver's static pod as kubeadm writes it, trimmed to what this
// machine has: the test's PKI and tokens stand in for kubeadm's certificates, and it listens
// on 127.0.0.1 only (it advertises the machine's address, as a loopback one is refused). The deploy/static-pod/kube-apiserver-patch.yaml changes are applied to it.
const kubeadmAPIServer = `apiVersion: v1
kind: Pod
metadata:
  labels:
    component: kube-apiserver
    tier: control-plane
  name: kube-apiserver
  namespace: kube-system
spec:
  containers:
  - command:
    - kube-apiserver
    - --bind-address=127.0.0.1
    - --allow-privileged=true
    - --authorization-mode=Node,RBAC
    - --client-ca-file=/etc/kubernetes/pki/ca.crt
    - --enable-admission-plugins=NodeRestriction
    - --etcd-servers=%[2]s
    - --secure-port=%[1]d
    - --service-account-issuer=https://kubernetes.default.svc.cluster.local
    - --service-account-key-file=/etc/kubernetes/pki/sa.key
    - --service-account-signing-key-file=/etc/kubernetes/pki/sa.key
    - --service-cluster-ip-range=10.96.0.0/12
    - --tls-cert-file=/etc/kubernetes/pki/apiserver.crt
    - --tls-private-key-file=/etc/kubernetes/pki/apiserver.key
    - --token-auth-file=/etc/kubernetes/pki/tokens.csv
    image: %[3]s
    imagePullPolicy: IfNotPresent
    livenessProbe:
      failureThreshold: 8
      httpGet: {host: 127.0.0.1, path: /livez, port: %[1]d, scheme: HTTPS}
      initialDelaySeconds: 10
      periodSeconds: 10
      timeoutSeconds: 15
    name: kube-apiserver
    readinessProbe:
      failureThreshold: 3
      httpGet: {host: 127.0.0.1, path: /readyz, port: %[1]d, scheme: HTTPS}
      periodSeconds: 1
      timeoutSeconds: 15
    resources:
      requests:
        cpu: 250m
    startupProbe:
      failureThreshold: 24
      httpGet: {host: 127.0.0.1, path: /livez, port: %[1]d, scheme: HTTPS}
      initialDelaySeconds: 10
      periodSeconds: 10
      timeoutSeconds: 15
    volumeMounts:
    - mountPath: /etc/ssl/certs
      name: ca-certs
      readOnly: true
    - mountPath: /etc/kubernetes/pki
      name: k8s-certs
      readOnly: true
  hostNetwork: true
  priority: 2000001000
  priorityClassName: system-node-critical
  securityContext:
    seccompProfile:
      type: RuntimeDefault
  volumes:
  - hostPath: {path: /etc/ssl/certs, type: DirectoryOrCreate}
    name: ca-certs
  - hostPath: {path: /etc/kubernetes/pki, type: DirectoryOrCreate}
    name: k8s-certs
`

// applyAPIServerPatch applies deploy/static-pod/kube-apiserver-patch.yaml to kubeadm's
// manifest the way its comments tell an operator to: the flags added to the command, the
// volume mounts and volumes merged in by name.
func applyAPIServerPatch(t *testing.T, manifest []byte) []byte {
	t.Helper()
	var pod, patch corev1.Pod
	run.Must(t, yaml.UnmarshalStrict(manifest, &pod), "kubeadm's manifest")
	raw, err := os.ReadFile("../deploy/static-pod/kube-apiserver-patch.yaml")
	run.Must(t, err, "the patch")
	run.Must(t, yaml.UnmarshalStrict(raw, &patch), "the patch")
	c, p := &pod.Spec.Containers[0], patch.Spec.Containers[0]
	c.Command = append(c.Command, p.Command...)
	for _, m := range p.VolumeMounts {
		if slices.ContainsFunc(c.VolumeMounts, func(o corev1.VolumeMount) bool { return o.Name == m.Name }) {
			t.Fatalf("the patch's volume mount %s is already in kubeadm's manifest", m.Name)
		}
		c.VolumeMounts = append(c.VolumeMounts, m)
	}
	for _, v := range patch.Spec.Volumes {
		if slices.ContainsFunc(pod.Spec.Volumes, func(o corev1.Volume) bool { return o.Name == v.Name }) {
			t.Fatalf("the patch's volume %s is already in kubeadm's manifest", v.Name)
		}
		pod.Spec.Volumes = append(pod.Spec.Volumes, v)
	}
	out, err := yaml.Marshal(&pod)
	run.Must(t, err, "patched manifest")
	return out
}

// The deployment as users run it: kube-apiserver and kms-plugin as static pods of a real
// kubelet over containerd and runc, the plugin's manifests as shipped, its image built from
// the Dockerfile. The two manifests run one after the other on nodes of their own (both
// serve the same fixed health port), from images built once.
func TestStaticPodsUnderKubelet(t *testing.T) {
	t.Parallel()
	archives := buildNodeImages(t)
	t.Run("localaes", func(t *testing.T) { testLocalAESStaticPod(t, archives) })
	t.Run("vault", func(t *testing.T) { testVaultStaticPod(t, archives) })
}

// buildNodeImages builds the images a node runs — the plugin from the Dockerfile as the guide
// does without a registry (scripts/image.sh --local-bases), kube-apiserver and pause built
// here — each saved as an OCI archive for containerd.
func buildNodeImages(t *testing.T) []string {
	t.Helper()
	store := harness.NewImageStore(t)
	root, err := filepath.Abs("..")
	run.Must(t, err, "checkout")
	commit, _ := exec.Command("git", "-C", root, "rev-parse", "HEAD").Output()
	// The archive image.sh writes is the one the guide imports on a node.
	archives := []string{filepath.Join(t.TempDir(), "kms-plugin-image.tar")}
	store.BuildPluginImage(t, harness.PluginImageOptions{Context: root, Version: "v0.1.0",
		Commit: strings.TrimSpace(string(commit)), Archive: archives[0], HostBuildCache: true})
	harness.BuildKubeAPIServerImage(t, store, kubeAPIServerImage)
	harness.BuildPauseImage(t, store, pauseImage)
	for _, image := range []string{kubeAPIServerImage, pauseImage} {
		path := filepath.Join(t.TempDir(), "image.tar")
		store.SaveOCIArchive(t, image, image, path)
		archives = append(archives, path)
	}
	return archives
}

// staticPodCluster is a control-plane node as kubeadm makes one: etcd, a kubelet running
// kube-apiserver (kubeadm's manifest with deploy/static-pod/kube-apiserver-patch.yaml) and a
// kms-plugin manifest from deploy/static-pod/, as shipped.
type staticPodCluster struct {
	t         *testing.T
	etcd      *harness.Etcd
	node      *harness.Node
	cs        *kubernetes.Clientset
	pluginPod string // the plugin's mirror pod
	started   time.Time
}

// startStaticPodCluster starts the node with manifest (a file of deploy/static-pod/) beside
// the apiserver; prepare writes the plugin's own files on the node before kubelet starts.
func startStaticPodCluster(t *testing.T, archives []string, manifest string, prepare func(*harness.Node)) *staticPodCluster {
	t.Helper()
	// The manifests' fixed health address must be free on this machine.
	if l, err := net.Listen("tcp", "127.0.0.1:8095"); err != nil {
		t.Fatalf("127.0.0.1:8095, the manifest's --health-addr, is taken on this machine: %v", err)
	} else {
		l.Close()
	}
	etcd := harness.StartEtcd(t)
	node := harness.StartNode(t, harness.NodeOptions{Images: archives, SandboxImage: pauseImage})

	// The node's files, where kubeadm and the guide put them.
	pki := run.NewTestPKI(t, t.TempDir())
	copyInto := func(src, dst string) {
		raw, err := os.ReadFile(src)
		run.Must(t, err, "%s", src)
		node.WriteFile(t, dst, raw, 0o600)
	}
	copyInto(pki.CAFile, "/etc/kubernetes/pki/ca.crt")
	copyInto(pki.ServerCert, "/etc/kubernetes/pki/apiserver.crt")
	copyInto(pki.ServerKey, "/etc/kubernetes/pki/apiserver.key")
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	run.Must(t, err, "service-account key")
	der, err := x509.MarshalECPrivateKey(saKey)
	run.Must(t, err, "service-account key")
	node.WriteFile(t, "/etc/kubernetes/pki/sa.key", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
	adminToken, nodeToken := randomToken(t), randomToken(t)
	node.WriteFile(t, "/etc/kubernetes/pki/tokens.csv", []byte(fmt.Sprintf(
		"%s,admin,admin,system:masters\n%s,system:node:%s,node,system:nodes\n", adminToken, nodeToken, node.Name)), 0o600)
	// The shipped EncryptionConfiguration, and the plugin's own files.
	copyInto("../deploy/static-pod/encryption-config.yaml", "/etc/kubernetes/enc/encryption-config.yaml")
	prepare(node)

	// The manifests: kubeadm's apiserver with the patch, the plugin's file as shipped.
	port := run.FreePort(t)
	apiserverManifest := applyAPIServerPatch(t, []byte(fmt.Sprintf(kubeadmAPIServer, port, strings.Join(etcd.Endpoints, ","), kubeAPIServerImage)))
	node.WriteFile(t, "/etc/kubernetes/manifests/kube-apiserver.yaml", apiserverManifest, 0o600)
	copyInto(manifest, "/etc/kubernetes/manifests/"+filepath.Base(manifest))
	var pod corev1.Pod
	raw, err := os.ReadFile(manifest)
	run.Must(t, err, "%s", manifest)
	run.Must(t, yaml.UnmarshalStrict(raw, &pod), "%s", manifest)

	ca, err := os.ReadFile(pki.CAFile)
	run.Must(t, err, "CA")
	url := fmt.Sprintf("https://127.0.0.1:%d", port)
	kubeconfig := clientcmdapi.NewConfig()
	kubeconfig.Clusters["kubernetes"] = &clientcmdapi.Cluster{Server: url, CertificateAuthorityData: ca}
	kubeconfig.AuthInfos["node"] = &clientcmdapi.AuthInfo{Token: nodeToken}
	kubeconfig.Contexts["node"] = &clientcmdapi.Context{Cluster: "kubernetes", AuthInfo: "node"}
	kubeconfig.CurrentContext = "node"
	kubeletConf, err := clientcmd.Write(*kubeconfig)
	run.Must(t, err, "kubelet kubeconfig")

	c := &staticPodCluster{t: t, etcd: etcd, node: node, pluginPod: pod.Name + "-" + node.Name, started: time.Now()}
	node.StartKubelet(t, harness.KubeletOptions{Kubeconfig: kubeletConf})
	c.cs, err = kubernetes.NewForConfig(&rest.Config{Host: url, BearerToken: adminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: ca}, Timeout: 10 * time.Second})
	run.Must(t, err, "clientset")
	return c
}

// createSecret writes Secret name through the apiserver, retrying while it is not up yet.
func (c *staticPodCluster) createSecret(name string) {
	c.t.Helper()
	run.Eventually(c.t, 5*time.Minute, "creating Secret "+name, func(ctx context.Context) error {
		_, err := c.cs.CoreV1().Secrets("default").Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Data:       map[string][]byte{"v": []byte("value of " + name)},
		}, metav1.CreateOptions{})
		if err != nil && strings.Contains(err.Error(), "already exists") {
			return nil
		}
		return err
	})
}

// checkStored checks that each Secret is stored k8s:enc:kms:v2: in etcd and reads back
// through the apiserver.
func (c *staticPodCluster) checkStored(names []string) {
	c.t.Helper()
	for _, name := range names {
		raw := c.etcd.Get(c.t, harness.Key("secrets", "default", name))
		if !strings.HasPrefix(string(raw), "k8s:enc:kms:v2:kms-plugin:") {
			c.t.Errorf("Secret %s is stored as %.40q, want k8s:enc:kms:v2:kms-plugin:", name, raw)
		}
		var s *corev1.Secret
		run.Eventually(c.t, 2*time.Minute, "reading Secret "+name, func(ctx context.Context) error {
			var err error
			s, err = c.cs.CoreV1().Secrets("default").Get(ctx, name, metav1.GetOptions{})
			return err
		})
		if string(s.Data["v"]) != "value of "+name {
			c.t.Errorf("Secret %s read through the apiserver: %q", name, s.Data["v"])
		}
	}
}

// mirrorPod reads a static pod's mirror pod.
func (c *staticPodCluster) mirrorPod(name string) *corev1.Pod {
	c.t.Helper()
	var pod *corev1.Pod
	run.Eventually(c.t, 2*time.Minute, "mirror pod "+name, func(ctx context.Context) error {
		var err error
		pod, err = c.cs.CoreV1().Pods("kube-system").Get(ctx, name, metav1.GetOptions{})
		return err
	})
	return pod
}

// waitReady waits until the one container of static pod (its mirror pod's name) runs, is
// ready by its readiness probe, and its restart count satisfies restarts.
func (c *staticPodCluster) waitReady(pod, what string, restarts func(int32) bool) *corev1.Pod {
	c.t.Helper()
	var p *corev1.Pod
	run.Eventually(c.t, 4*time.Minute, what, func(ctx context.Context) error {
		var err error
		if p, err = c.cs.CoreV1().Pods("kube-system").Get(ctx, pod, metav1.GetOptions{}); err != nil {
			return err
		}
		if len(p.Status.ContainerStatuses) != 1 {
			return fmt.Errorf("container statuses %v", p.Status.ContainerStatuses)
		}
		st := p.Status.ContainerStatuses[0]
		if !st.Ready || st.State.Running == nil || !restarts(st.RestartCount) {
			return fmt.Errorf("ready %v, state %+v, restarts %d", st.Ready, st.State, st.RestartCount)
		}
		return nil
	})
	return p
}

// events are the kubelet's events about pod with reason, whose message starts with prefix.
func (c *staticPodCluster) events(ctx context.Context, pod, reason, prefix string) ([]corev1.Event, error) {
	events, err := c.cs.CoreV1().Events("kube-system").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod})
	if err != nil {
		return nil, err
	}
	var out []corev1.Event
	for _, e := range events.Items {
		if e.Source.Component == "kubelet" && e.Reason == reason && strings.HasPrefix(e.Message, prefix) {
			out = append(out, e)
		}
	}
	return out, nil
}

// The localaes manifest, kms-plugin.yaml: Secrets stored k8s:enc:kms:v2:, the kubelet's
// probes, restarts after a hang (liveness) and a kill (restart policy) with no Secret lost,
// the container's confinement, rotation by SIGHUP through the mounted key directory, and the
// socket removed on a graceful stop.
func testLocalAESStaticPod(t *testing.T, archives []string) {
	c := startStaticPodCluster(t, archives, "../deploy/static-pod/kms-plugin.yaml", func(node *harness.Node) {
		// A key file made by kmsctl, in the directory the manifest mounts.
		run.Must(t, os.MkdirAll(node.Path("/etc/kubernetes/kms"), 0o700), "key dir")
		keygen := exec.Command(harness.KmsctlBinary(t), "keygen", "--localaes-key-file", node.Path("/etc/kubernetes/kms/keys.yaml"), "--name", "first")
		if out, err := keygen.CombinedOutput(); err != nil {
			t.Fatalf("kmsctl keygen: %v\n%s", err, out)
		}
	})
	node := c.node

	// The first Secret stored encrypted through the static-pod apiserver.
	c.createSecret("first")
	t.Logf("from kubelet start to the first Secret stored through the static-pod apiserver: %s", time.Since(c.started).Round(time.Second))
	secrets := []string{"first"}
	c.checkStored(secrets)

	// kubelet listens on loopback only.
	listening := listeningAddresses(t, node.Kubelet.Pid())
	t.Logf("kubelet listens on %v", listening)
	if len(listening) == 0 {
		t.Error("kubelet listens on no TCP address")
	}
	for _, a := range listening {
		if !strings.HasPrefix(a, "127.0.0.1:") {
			t.Errorf("kubelet listens on %s, want 127.0.0.1 only", a)
		}
	}

	// The mirror pod, and the kubelet's probes in its status.
	pod := c.waitReady(c.pluginPod, "plugin ready by its readiness probe", func(int32) bool { return true })
	restarts := pod.Status.ContainerStatuses[0].RestartCount
	pid := containerPID(t, node, pod)
	t.Logf("plugin pod ready, container pid %d, restarts %d", pid, restarts)
	for _, cond := range pod.Status.Conditions {
		t.Logf("condition %s=%s since %s", cond.Type, cond.Status, cond.LastTransitionTime)
	}

	// Inside the container: read-only root, no capabilities, no privilege gain, GOMEMLIMIT
	// under the memory limit.
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	run.Must(t, err, "container status")
	for _, want := range []string{"CapInh:\t0000000000000000", "CapPrm:\t0000000000000000", "CapEff:\t0000000000000000", "CapBnd:\t0000000000000000", "CapAmb:\t0000000000000000", "NoNewPrivs:\t1"} {
		if !strings.Contains(string(status), want) {
			t.Errorf("the plugin's /proc status lacks %q:\n%s", want, status)
		}
	}
	mountinfo, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	run.Must(t, err, "container mounts")
	for _, line := range strings.Split(string(mountinfo), "\n") {
		f := strings.Fields(line)
		if len(f) > 5 && f[4] == "/" && !strings.HasPrefix(f[5], "ro") {
			t.Errorf("the plugin's root filesystem is not read-only: %s", line)
		}
		if len(f) > 5 && f[4] == "/etc/kubernetes/kms" && !strings.HasPrefix(f[5], "ro") {
			t.Errorf("the key directory is not mounted read-only: %s", line)
		}
	}
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	run.Must(t, err, "container environment")
	if !slices.Contains(strings.Split(string(environ), "\x00"), "GOMEMLIMIT=192MiB") {
		t.Errorf("GOMEMLIMIT=192MiB not in the plugin's environment")
	}
	if limit := memoryLimit(t, pid); limit != 256<<20 {
		t.Errorf("the plugin's memory limit is %d, want 256Mi (above GOMEMLIMIT's 192MiB)", limit)
	}

	// A hung plugin: the liveness probe (every 10 s, 6 failures) restarts it.
	run.Must(t, syscall.Kill(pid, syscall.SIGSTOP), "SIGSTOP")
	stopped := time.Now()
	pod = c.waitReady(c.pluginPod, "restart by the liveness probe after SIGSTOP", func(n int32) bool { return n > restarts })
	t.Logf("hung plugin restarted by the liveness probe and ready again after %s", time.Since(stopped).Round(time.Second))
	// Six failed probes 10 s apart, then SIGTERM, which a stopped process cannot act on, and
	// SIGKILL after the pod's 30 s grace period: about 90 s.
	// Six failures end 50 to 60 s after the hang; without the grace period it would be back
	// by about 60 s.
	if d := time.Since(stopped); d < 75*time.Second || d > 150*time.Second {
		t.Errorf("restarted %s after SIGSTOP: want 6 failed probes 10 s apart and a 30 s grace period (about 90 s)", d)
	}
	// The restart was the kubelet's liveness probe: its event says so.
	run.Eventually(t, time.Minute, "the kubelet's liveness-probe event", func(ctx context.Context) error {
		events, err := c.events(ctx, c.pluginPod, "Unhealthy", "Liveness probe failed")
		if err != nil {
			return err
		}
		if len(events) == 0 {
			return errors.New("no Unhealthy liveness event")
		}
		t.Logf("event: %s %s (x%d)", events[0].Reason, events[0].Message, events[0].Count)
		return nil
	})
	if n := livenessFailures(node.Kubelet.Log(), c.pluginPod); n < 6 {
		t.Errorf("kubelet's log has %d failed liveness probes of %s, want at least the 6 that restarted it", n, c.pluginPod)
	}
	restarts = pod.Status.ContainerStatuses[0].RestartCount
	c.createSecret("after-hang")
	secrets = append(secrets, "after-hang")
	c.checkStored(secrets)

	// A killed plugin: the restart policy brings it back.
	pid = containerPID(t, node, pod)
	run.Must(t, syscall.Kill(pid, syscall.SIGKILL), "SIGKILL")
	killed := time.Now()
	pod = c.waitReady(c.pluginPod, "restart by the restart policy after SIGKILL", func(n int32) bool { return n > restarts })
	t.Logf("killed plugin restarted and ready again after %s", time.Since(killed).Round(time.Second))
	if d := time.Since(killed); d > time.Minute {
		t.Errorf("restarted %s after SIGKILL: want the restart policy's first back-off (10 s) and a probe", d)
	}
	if term := pod.Status.ContainerStatuses[0].LastTerminationState.Terminated; term == nil || term.ExitCode != 137 {
		t.Errorf("last termination %+v, want the SIGKILL (exit code 137)", term)
	}
	c.createSecret("after-kill")
	secrets = append(secrets, "after-kill")
	c.checkStored(secrets)

	// Killed again at once: kubelet's crash-loop back-off (10 s, doubling at each restart)
	// holds the next start, in the pod's status as CrashLoopBackOff.
	restarts = pod.Status.ContainerStatuses[0].RestartCount
	run.Must(t, syscall.Kill(containerPID(t, node, pod), syscall.SIGKILL), "SIGKILL again")
	killed = time.Now()
	run.Eventually(t, time.Minute, "CrashLoopBackOff after a second kill", func(ctx context.Context) error {
		st := c.mirrorPod(c.pluginPod).Status.ContainerStatuses
		if len(st) != 1 {
			return fmt.Errorf("container statuses %v", st)
		}
		if w := st[0].State.Waiting; w != nil && w.Reason == "CrashLoopBackOff" {
			t.Logf("after a second kill: %s: %s", w.Reason, w.Message)
			return nil
		}
		if st[0].RestartCount > restarts {
			t.Fatalf("restarted %s after a second kill with no CrashLoopBackOff in between", time.Since(killed))
		}
		return fmt.Errorf("state %+v", st[0].State)
	})
	pod = c.waitReady(c.pluginPod, "restart after the back-off", func(n int32) bool { return n > restarts })
	t.Logf("killed again: ready after %s (the back-off)", time.Since(killed).Round(time.Second))
	if d := time.Since(killed); d < 5*time.Second {
		t.Errorf("restarted %s after a second kill: want kubelet's back-off (at least 10 s after the last start)", d)
	}
	c.checkStored(secrets)

	// Rotation through the mounted key directory: a new write key, then SIGHUP.
	pid = containerPID(t, node, pod)
	before := pluginKeyID(t, node)
	keygen := exec.Command(harness.KmsctlBinary(t), "keygen", "--localaes-key-file", node.Path("/etc/kubernetes/kms/keys.yaml"), "--name", "second", "--write")
	if out, err := keygen.CombinedOutput(); err != nil {
		t.Fatalf("kmsctl keygen --write: %v\n%s", err, out)
	}
	run.Must(t, syscall.Kill(pid, syscall.SIGHUP), "SIGHUP")
	run.Eventually(t, time.Minute, "the plugin's key ID after SIGHUP", func(context.Context) error {
		if after := pluginKeyID(t, node); after == before {
			return fmt.Errorf("key ID still %s", after)
		}
		return nil
	})
	c.checkStored(secrets)

	// A graceful stop: the manifest removed, kubelet stops the pod (SIGTERM), the plugin
	// removes its socket.
	sock := node.Path("/var/run/kmsplugin/kms.sock")
	if info, err := os.Stat(sock); err != nil || info.Mode().Type() != os.ModeSocket {
		t.Fatalf("the plugin's socket before the stop: %v, %v", info, err)
	}
	run.Must(t, os.Remove(node.Path("/etc/kubernetes/manifests/kms-plugin.yaml")), "removing the manifest")
	run.Eventually(t, 2*time.Minute, "the plugin's container to stop", func(ctx context.Context) error {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			return fmt.Errorf("pid %d still runs", pid)
		}
		return nil
	})
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("the socket after a graceful stop: %v, want it removed", err)
	}
}

func randomToken(t *testing.T) string {
	raw := make([]byte, 24)
	_, err := rand.Read(raw)
	run.Must(t, err, "token")
	return hex.EncodeToString(raw)
}

// containerPID is the host PID of the plugin's container in pod's status.
func containerPID(t *testing.T, node *harness.Node, pod *corev1.Pod) int {
	t.Helper()
	id := strings.TrimPrefix(pod.Status.ContainerStatuses[0].ContainerID, "containerd://")
	var pid int
	run.Eventually(t, time.Minute, "the plugin's task", func(ctx context.Context) error {
		var err error
		pid, err = node.ContainerPID(ctx, id)
		return err
	})
	return pid
}

// memoryLimit reads the memory cgroup (v1) limit of pid.
func memoryLimit(t *testing.T, pid int) int64 {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	run.Must(t, err, "cgroup")
	for _, line := range strings.Split(string(raw), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && slices.Contains(strings.Split(parts[1], ","), "memory") {
			b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory", parts[2], "memory.limit_in_bytes"))
			run.Must(t, err, "memory limit")
			n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			run.Must(t, err, "memory limit")
			return n
		}
	}
	t.Fatalf("no memory cgroup for pid %d:\n%s", pid, raw)
	return 0
}

// pluginKeyID asks the plugin in the pod for its key ID over its socket, as the apiserver does.
func pluginKeyID(t *testing.T, node *harness.Node) string {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+node.Path("/var/run/kmsplugin/kms.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	run.Must(t, err, "dialing the plugin")
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := kmsclient.CheckStatus(ctx, conn, 5*time.Second)
	run.Must(t, err, "the plugin's Status")
	return st.KeyID
}

// livenessFailures counts the failed liveness probes of a static pod in kubelet's log (prober
// logs each at verbosity 1; the harness runs kubelet at 2).
func livenessFailures(kubeletLog, pod string) int {
	return strings.Count(kubeletLog, `"Probe failed" probeType="Liveness" pod="kube-system/`+pod+`"`)
}

// pluginReadyz is the status and body of the plugin's /readyz, on the manifests' health
// address, as its readiness probe sees it.
func pluginReadyz(t *testing.T) string {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://127.0.0.1:8095/readyz")
	run.Must(t, err, "the plugin's /readyz")
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	run.Must(t, err, "the plugin's /readyz")
	return fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(body)))
}

// listeningAddresses are the TCP addresses pid listens on (its sockets in /proc/net/tcp and
// tcp6 in the LISTEN state), as "ip:port".
func listeningAddresses(t *testing.T, pid int) []string {
	t.Helper()
	inodes := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	run.Must(t, err, "kubelet's descriptors")
	for _, fd := range fds {
		if target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && strings.HasPrefix(target, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]")] = true
		}
	}
	var out []string
	for _, table := range []string{"tcp", "tcp6"} {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		run.Must(t, err, "%s table", table)
		for _, line := range strings.Split(string(raw), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] { // 0A: LISTEN
				continue
			}
			hexIP, hexPort, _ := strings.Cut(f[1], ":")
			port, _ := strconv.ParseUint(hexPort, 16, 16)
			ip, _ := hex.DecodeString(hexIP)
			for i := 0; i+4 <= len(ip); i += 4 { // each 32-bit word is little-endian
				ip[i], ip[i+1], ip[i+2], ip[i+3] = ip[i+3], ip[i+2], ip[i+1], ip[i]
			}
			addr := net.IP(ip).String()
			if ip4 := net.IP(ip).To4(); ip4 != nil {
				addr = ip4.String()
			}
			out = append(out, fmt.Sprintf("%s:%d", addr, port))
		}
	}
	return out
}

// The Vault manifest, kms-plugin-vault.yaml, against a real Vault at the address it names
// (vault.example.com:8200: the node's /etc/hosts points the name at this machine's loopback,
// and Vault's certificate is for it), with AppRole credentials and the CA in the directory
// it mounts. Beyond what the localaes manifest proves: Secrets stored under Vault's key;
// during a Vault outage the plugin killed and restarted by kubelet restores what it serves
// from the tmpfs the manifest mounts (/run/kms-plugin), the apiserver then restarted too
// reads every Secret and writes, and the liveness probe restarts nothing; Vault's return is
// picked up.
func testVaultStaticPod(t *testing.T, archives []string) {
	const vaultName = "vault.example.com" // kms-plugin-vault.yaml's --vault-addr
	v := vaultd.StartVaultFileWith(t, vaultd.FileOptions{Port: 8200, TLS: true, DNSNames: []string{vaultName}})
	v.EnableTransit(t, "transit")
	v.CreateKey(t, "transit", "kubernetes")
	v.WritePolicy(t, "kms-plugin", vaultd.TransitPolicy("transit", "kubernetes"))
	v.EnableAuth(t, "approle", "approle")
	roleID, secretID := v.AppRole(t, "approle", "kms-plugin", map[string]any{"token_policies": "kms-plugin", "token_ttl": "1h"})

	c := startStaticPodCluster(t, archives, "../deploy/static-pod/kms-plugin-vault.yaml", func(node *harness.Node) {
		// kubelet gives a hostNetwork pod the node's /etc/hosts.
		hosts, err := os.ReadFile(node.Path("/etc/hosts"))
		run.Must(t, err, "the node's /etc/hosts")
		node.WriteFile(t, "/etc/hosts", append(hosts, []byte("\n127.0.0.1 "+vaultName+"\n")...), 0o644)
		ca, err := os.ReadFile(v.CAFile)
		run.Must(t, err, "Vault's CA")
		node.WriteFile(t, "/etc/kubernetes/kms/vault/ca.crt", ca, 0o600)
		node.WriteFile(t, "/etc/kubernetes/kms/vault/role-id", []byte(roleID+"\n"), 0o600)
		node.WriteFile(t, "/etc/kubernetes/kms/vault/secret-id", []byte(secretID+"\n"), 0o600)
	})
	node := c.node

	c.createSecret("first")
	t.Logf("from kubelet start to the first Secret stored through the static-pod apiserver (Vault backend): %s", time.Since(c.started).Round(time.Second))
	secrets := []string{"first"}
	c.checkStored(secrets)
	pod := c.waitReady(c.pluginPod, "plugin ready by its readiness probe", func(int32) bool { return true })
	restarts := pod.Status.ContainerStatuses[0].RestartCount

	// The Secret is stored under the key id the plugin reports, which names Vault's key.
	keyID := pluginKeyID(t, node)
	stored, err := harness.ParseKMSv2(c.etcd.Get(t, harness.Key("secrets", "default", "first")), "kms-plugin")
	run.Must(t, err, "the stored Secret")
	if stored.KeyID != keyID {
		t.Errorf("the stored Secret's key id is %q, the plugin's %q", stored.KeyID, keyID)
	}
	t.Logf("plugin key id %s", keyID)
	if !strings.HasPrefix(keyID, "vault:") || !strings.HasSuffix(keyID, ":v1") {
		t.Errorf("the plugin's key id %q is not vault:<lineage>:v1, the transit key's first version", keyID)
	}

	// What it serves from memory is kept on the node's tmpfs, in a directory of its own.
	stateDir := node.Path("/run/kms-plugin/state")
	run.Eventually(t, time.Minute, "the kept state on the node's tmpfs", func(context.Context) error {
		entries, err := os.ReadDir(stateDir)
		if err != nil {
			return err
		}
		if len(entries) == 0 {
			return errors.New("empty")
		}
		return nil
	})
	if info, err := os.Stat(stateDir); err != nil || info.Mode().Perm() != 0o700 {
		t.Errorf("the kept state's directory: %v, %v; want mode 0700", info, err)
	}

	// A Vault outage: the plugin is killed and restarted by kubelet, then the apiserver. Both
	// start empty while Vault is away; the plugin restores what it kept and serves.
	v.Stop(t)
	outage := time.Now()
	c.createSecret("during-outage")
	secrets = append(secrets, "during-outage")
	pid := containerPID(t, node, pod)
	run.Must(t, syscall.Kill(pid, syscall.SIGKILL), "SIGKILL")
	pod = c.waitReady(c.pluginPod, "the plugin restarted during the outage, ready from its kept state", func(n int32) bool { return n > restarts })
	restartedAt := time.Now()
	kubeletLogAt := len(node.Kubelet.Log())
	restarts = pod.Status.ContainerStatuses[0].RestartCount
	log := node.ContainerLog(t, c.pluginPod, "kms-plugin", restarts)
	if !strings.Contains(log, "RESTORED kept state") {
		t.Errorf("the restarted plugin's log lacks RESTORED kept state:\n%s", log)
	}
	if got := pluginKeyID(t, node); got != keyID {
		t.Errorf("the restarted plugin's key id during the outage is %q, want %q", got, keyID)
	}
	if ready := pluginReadyz(t); !strings.HasPrefix(ready, "200 ok: serving from memory") {
		t.Errorf("the restarted plugin's /readyz during the outage: %q, want 200 ok: serving from memory", ready)
	}
	apiserver := c.mirrorPod("kube-apiserver-" + node.Name)
	apiserverRestarts := apiserver.Status.ContainerStatuses[0].RestartCount
	run.Must(t, syscall.Kill(containerPID(t, node, apiserver), syscall.SIGKILL), "SIGKILL the apiserver")
	c.waitReady(apiserver.Name, "the apiserver restarted by kubelet", func(n int32) bool { return n > apiserverRestarts })
	c.checkStored(secrets) // a fresh apiserver: every DEK seed is decrypted by the plugin again
	c.createSecret("after-restarts")
	secrets = append(secrets, "after-restarts")
	c.checkStored(secrets)
	t.Logf("the plugin and the apiserver restarted during a Vault outage; every Secret read, writes work (%s into the outage)", time.Since(outage).Round(time.Second))
	// The liveness probe does not depend on Vault: through more than its window (six failures
	// 10 s apart) of outage after the restart, it fails never and restarts nothing. kubelet's
	// own log is the record (its events are lost while the apiserver is down).
	if wait := 75*time.Second - time.Since(restartedAt); wait > 0 {
		time.Sleep(wait)
	}
	c.waitReady(c.pluginPod, "the plugin still ready, not restarted, through the outage", func(n int32) bool { return n == restarts })
	if n := livenessFailures(node.Kubelet.Log()[kubeletLogAt:], c.pluginPod); n > 0 {
		t.Errorf("kubelet's log has %d failed liveness probes of %s during the Vault outage", n, c.pluginPod)
	}
	if ready := pluginReadyz(t); !strings.HasPrefix(ready, "200 ok: serving from memory") {
		t.Errorf("/readyz %s into the outage: %q, want 200 ok: serving from memory", time.Since(outage).Round(time.Second), ready)
	}

	// Vault returns: the plugin answers from Vault again.
	v.Start(t)
	v.Unseal(t)
	back := time.Now()
	t.Logf("Vault back after a %s outage", back.Sub(outage).Round(time.Second))
	c.createSecret("after-outage")
	secrets = append(secrets, "after-outage")
	c.checkStored(secrets)
	c.waitReady(c.pluginPod, "the plugin ready after Vault's return", func(n int32) bool { return n == restarts })
	run.Eventually(t, 3*time.Minute, "the plugin's next check of Vault", func(context.Context) error {
		if ready := pluginReadyz(t); ready != "200 ok" {
			return fmt.Errorf("/readyz: %q", ready)
		}
		return nil
	})
	t.Logf("the plugin served from Vault again %s after Vault answered (its next check)", time.Since(back).Round(time.Second))
	if got := pluginKeyID(t, node); got != keyID {
		t.Errorf("the plugin's key id after the outage is %q, want %q", got, keyID)
	}
}
