package deploy_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	apiserverconfig "k8s.io/apiserver/pkg/server/options/encryptionconfig"
	"k8s.io/apiserver/pkg/storage/value"
	"sigs.k8s.io/yaml"

	"github.com/kmsplugin/kms-plugin/internal/testing/plugintest"
	ourconfig "github.com/kmsplugin/kms-plugin/storage/encryptionconfig"
	"github.com/kmsplugin/kms-plugin/storage/providers"
)

const dir = "static-pod"

// files returns the YAML files in static-pod/ whose kind is kind.
func files(t *testing.T, kind string) map[string][]byte {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, p := range paths {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var meta struct{ Kind string }
		if err := yaml.Unmarshal(raw, &meta); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if meta.Kind == "" {
			t.Fatalf("%s: no kind", p)
		}
		if meta.Kind == kind {
			out[filepath.Base(p)] = raw
		}
	}
	if len(out) == 0 {
		t.Fatalf("no %s in %s", kind, dir)
	}
	return out
}

// decodePod decodes a manifest the strict way: an unknown or duplicated field is an error.
func decodePod(t *testing.T, name string, raw []byte) *corev1.Pod {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	s := json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme, json.SerializerOptions{Yaml: true, Strict: true})
	obj, _, err := s.Decode(raw, nil, nil)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		t.Fatalf("%s: decoded a %T", name, obj)
	}
	return pod
}

func TestStrictDecodingCatchesTypos(t *testing.T) {
	raw := files(t, "Pod")["kms-plugin.yaml"]
	bad := bytes.Replace(raw, []byte("hostNetwork:"), []byte("hostNetwrok:"), 1)
	scheme := runtime.NewScheme()
	corev1.AddToScheme(scheme)
	s := json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme, json.SerializerOptions{Yaml: true, Strict: true})
	if _, _, err := s.Decode(bad, nil, nil); err == nil {
		t.Fatal("a misspelt field decoded without error")
	}
}

func TestPluginManifests(t *testing.T) {
	for name, raw := range files(t, "Pod") {
		if !strings.HasPrefix(name, "kms-plugin") {
			continue
		}
		t.Run(name, func(t *testing.T) {
			pod := decodePod(t, name, raw)
			spec := pod.Spec
			if !spec.HostNetwork || spec.PriorityClassName != "system-node-critical" || pod.Namespace != "kube-system" {
				t.Errorf("hostNetwork %v, priorityClassName %q, namespace %q", spec.HostNetwork, spec.PriorityClassName, pod.Namespace)
			}
			if len(spec.Containers) != 1 {
				t.Fatalf("%d containers", len(spec.Containers))
			}
			c := spec.Containers[0]
			if c.Command[0] != "/kms-plugin" || c.Command[1] != "serve" {
				t.Errorf("command %v: want /kms-plugin serve ...", c.Command)
			}
			// Liveness must be the plugin's own /healthz, which never depends on the backend.
			if lp := c.LivenessProbe; lp == nil || lp.HTTPGet == nil || lp.HTTPGet.Path != "/healthz" || lp.HTTPGet.Host != "127.0.0.1" || lp.HTTPGet.Port.IntValue() != 8095 {
				t.Errorf("liveness probe %+v: want httpGet 127.0.0.1:8095/healthz (the default --health-addr)", lp)
			}
			if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
				t.Errorf("no resource requests: %v", c.Resources.Requests)
			}
			sc := c.SecurityContext
			if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
				sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
				sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
				t.Errorf("securityContext %+v: want no privilege escalation, read-only root, all capabilities dropped", sc)
			}
			volumes := map[string]*corev1.HostPathVolumeSource{}
			for _, v := range spec.Volumes {
				volumes[v.Name] = v.HostPath
			}
			for _, m := range c.VolumeMounts {
				hp := volumes[m.Name]
				if hp == nil {
					t.Errorf("mount %s: no hostPath volume", m.Name)
					continue
				}
				switch {
				case hp.Path == "/var/run/kmsplugin":
					if m.MountPath != "/var/run/kmsplugin" {
						t.Errorf("socket directory mounted at %s", m.MountPath)
					}
				case hp.Path == "/run/kms-plugin":
					// The kept state: written, so on tmpfs (under /run), and only for the
					// tmpfs store in a directory of its own that the plugin makes 0700.
					if !slices.Contains(c.Command, "--vault-keep-memory=tmpfs") || !slices.Contains(c.Command, "--vault-keep-memory-dir="+m.MountPath+"/state") {
						t.Errorf("%s is mounted read-write at %s, but the command keeps no tmpfs state in %s/state: %v", hp.Path, m.MountPath, m.MountPath, c.Command)
					}
				case !m.ReadOnly:
					t.Errorf("%s (%s) is mounted read-write: keys and credentials are read-only", m.Name, hp.Path)
				}
			}
			if !slices.Contains(c.Command, "--listen=unix:///var/run/kmsplugin/kms.sock") {
				t.Errorf("command %v does not serve the socket the examples name", c.Command)
			}
		})
	}
}

// The apiserver patch mounts what the plugin serves and what the config flag names.
func TestAPIServerPatch(t *testing.T) {
	pod := decodePod(t, "kube-apiserver-patch.yaml", files(t, "Pod")["kube-apiserver-patch.yaml"])
	c := pod.Spec.Containers[0]
	var configPath string
	for _, arg := range c.Command {
		if p, ok := strings.CutPrefix(arg, "--encryption-provider-config="); ok {
			configPath = p
		}
	}
	if configPath == "" || !slices.Contains(c.Command, "--encryption-provider-config-automatic-reload=true") {
		t.Fatalf("command %v lacks the encryption flags", c.Command)
	}
	if filepath.Base(configPath) != "encryption-config.yaml" {
		t.Errorf("config path %s: docs tell operators to copy encryption-config.yaml", configPath)
	}
	mounted := map[string]string{} // mount path -> host path
	for _, m := range c.VolumeMounts {
		for _, v := range pod.Spec.Volumes {
			if v.Name == m.Name && v.HostPath != nil {
				mounted[m.MountPath] = v.HostPath.Path
			}
		}
	}
	if mounted[filepath.Dir(configPath)] != filepath.Dir(configPath) {
		t.Errorf("the config's directory %s is not mounted from the host: %v", filepath.Dir(configPath), mounted)
	}
	if mounted["/var/run/kmsplugin"] != "/var/run/kmsplugin" {
		t.Errorf("the plugin's socket directory is not mounted: %v", mounted)
	}
}

var socketRE = regexp.MustCompile(`unix:///var/run/kmsplugin/([a-z0-9.-]+\.sock)`)

// startPlugin serves our plugin in-process on socket with a localaes key file.
func startPlugin(t *testing.T, socket string) {
	plugintest.ServeLocalAES(t, plugintest.Options{Socket: socket})
}

// loadedConfig is one example, loaded by kube-apiserver's loader.
type loadedConfig struct {
	name     string
	secrets  value.Transformer
	ours     *providers.Chain // the same Secrets chain, by storage/encryptionconfig
	prefixes []string         // the storage prefix of each provider, in order ("" for identity)
}

// Every EncryptionConfiguration example loads with kube-apiserver's own loader and with ours
// (storage/encryptionconfig, strict), encrypts and decrypts Secrets through a real plugin on
// the socket it names (moved to a temp dir), and reads exactly what the other examples write
// when it lists their write provider, by both readers: so the migration steps, applied one
// node at a time, never leave a node unable to read, and kmsctl reads what the apiserver does.
func TestEncryptionConfigs(t *testing.T) {
	sockets := t.TempDir()
	started := map[string]bool{}
	var loaded []loadedConfig
	for name, raw := range files(t, "EncryptionConfiguration") {
		text := socketRE.ReplaceAllStringFunc(string(raw), func(m string) string {
			sock := socketRE.FindStringSubmatch(m)[1]
			path := filepath.Join(sockets, sock)
			if !started[sock] {
				startPlugin(t, path)
				started[sock] = true
			}
			return "unix://" + path
		})
		path := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		cfg, err := apiserverconfig.LoadEncryptionConfig(ctx, path, true, "deploy-test")
		if err != nil {
			t.Fatalf("%s: kube-apiserver's loader: %v", name, err)
		}
		tr := cfg.Transformers[schema.GroupResource{Resource: "secrets"}]
		if tr == nil {
			t.Fatalf("%s does not configure secrets", name)
		}
		ours, err := ourconfig.Load(path)
		if err != nil {
			t.Fatalf("%s: storage/encryptionconfig: %v", name, err)
		}
		t.Cleanup(func() { ours.Close() })
		secrets := ourconfig.GroupResource{Resource: "secrets"}
		loaded = append(loaded, loadedConfig{name: name, secrets: tr, ours: ours.TransformerFor(secrets),
			prefixes: prefixes(t, name, ours.ProvidersFor(secrets))})
	}
	if !started["kms.sock"] {
		t.Fatal("no example names the plugin's default socket")
	}

	const key = "/registry/secrets/default/db-password"
	written := map[string][]byte{}
	for _, c := range loaded {
		out, err := c.secrets.TransformToStorage(context.Background(), []byte("hunter2"), value.DefaultContext(key))
		if err != nil {
			t.Fatalf("%s: encrypt: %v", c.name, err)
		}
		if c.prefixes[0] == "" { // identity first: the first step of turning encryption on
			if string(out) != "hunter2" {
				t.Fatalf("%s: identity stored %q", c.name, out)
			}
		} else if !bytes.HasPrefix(out, []byte(c.prefixes[0])) || bytes.Contains(out, []byte("hunter2")) {
			t.Fatalf("%s: stored %q, want prefix %q and no plaintext", c.name, out[:min(len(out), 40)], c.prefixes[0])
		}
		written[c.name] = out
	}
	for _, reader := range loaded {
		for _, writer := range loaded {
			want := slices.Contains(reader.prefixes, writer.prefixes[0])
			plain, _, err := reader.secrets.TransformFromStorage(context.Background(), written[writer.name], value.DefaultContext(key))
			switch {
			case want && err != nil:
				t.Errorf("%s cannot read what %s wrote: %v", reader.name, writer.name, err)
			case want && string(plain) != "hunter2":
				t.Errorf("%s read %q from what %s wrote", reader.name, plain, writer.name)
			case !want && err == nil:
				t.Errorf("%s reads what %s wrote without listing its provider", reader.name, writer.name)
			}
			ours, err := reader.ours.Decrypt(context.Background(), written[writer.name], []byte(key))
			if want != (err == nil && string(ours) == "hunter2") {
				t.Errorf("storage/encryptionconfig: %s reading what %s wrote: %q, %v; want it read: %v", reader.name, writer.name, ours, err, want)
			}
		}
		// identity, where listed, reads what was stored before encryption was turned on.
		plain, _, err := reader.secrets.TransformFromStorage(context.Background(), []byte("k8s\x00old"), value.DefaultContext(key))
		if listed := slices.Contains(reader.prefixes, ""); listed != (err == nil && string(plain) == "k8s\x00old") {
			t.Errorf("%s: identity listed %v, reading plaintext: %q, %v", reader.name, listed, plain, err)
		}
	}
}

// prefixes lists the storage prefix of each provider of the Secrets rule, as our reader
// describes them ("" for identity).
func prefixes(t *testing.T, name string, chain []ourconfig.Provider) []string {
	t.Helper()
	var out []string
	for _, p := range chain {
		switch p.Prefix {
		case "":
			out = append(out, "")
		case providers.AESCBCPrefix:
			out = append(out, p.Prefix+p.Keys[0]+":")
		case providers.KMSv2Prefix:
			out = append(out, p.Prefix+p.Name+":")
		default:
			t.Fatalf("%s uses a provider this test does not know: %+v", name, p)
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s: no providers for secrets", name)
	}
	return out
}

// Every plugin manifest sets a Go memory limit under its container's memory limit, so the
// runtime collects harder before the kernel kills the plugin.
func TestManifestsSetAGoMemoryLimit(t *testing.T) {
	for name, raw := range files(t, "Pod") {
		if !strings.HasPrefix(name, "kms-plugin") {
			continue
		}
		pod := decodePod(t, name, raw)
		for _, c := range pod.Spec.Containers {
			limit := c.Resources.Limits.Memory()
			var gomem string
			for _, e := range c.Env {
				if e.Name == "GOMEMLIMIT" {
					gomem = e.Value
				}
			}
			q, err := resource.ParseQuantity(strings.TrimSuffix(gomem, "B"))
			if gomem == "" || err != nil || limit.IsZero() || q.Cmp(*limit) >= 0 {
				t.Errorf("%s: container %s: GOMEMLIMIT %q, memory limit %v: want a GOMEMLIMIT below the limit", name, c.Name, gomem, limit)
			}
		}
	}
}
