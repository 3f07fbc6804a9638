package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/integration/harness"
	"github.com/kmsplugin/kms-plugin/internal/testing/vaultkms"
)

// The in-place switch from vault-kubernetes-kms (docs/migration.md): a real kube-apiserver
// writes Secrets and ConfigMaps through a stand-in that makes exactly that plugin's envelopes
// against a real Vault; the stand-in stops, our plugin starts on the same socket with the same
// transit key and provider name and --vault-read-vault-kubernetes-kms, the apiserver restarts:
// every object reads, nothing was rewritten before, new writes are ours; scan counts the
// foreign objects by transit key version, decrypt reads one offline, doctor judges the
// token; with the format off the plugin refuses them; rewrite leaves none, after which the
// flag can go.
func TestAdoptVaultKubernetesKMS(t *testing.T) {
	t.Parallel()
	v := harness.StartVaultDev(t)
	v.EnableTransit(t, "transit")
	b := newVaultBackend(t, v).(*vaultBackend)
	token, err := os.ReadFile(b.tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	withFlag := append(b.pluginArgs(), "--vault-read-vault-kubernetes-kms")

	// Our plugin gets the socket path; the stand-in serves there first, as the peer did.
	p := harness.StartPlugin(t, withFlag...)
	p.Stop()
	theirs, err := vaultkms.Serve(p.Socket, vaultkms.Transit{Client: v.Client(t, strings.TrimSpace(string(token))), Mount: "transit", Key: b.key})
	if err != nil {
		t.Fatal(err)
	}
	c := harness.StartCluster(t, harness.APIServerOptions{EncryptionConfig: harness.EncryptionConfig(encrypted, harness.KMSv2(provider, p.Endpoint), harness.Identity())})
	cs := c.APIServer.Clientset
	config := c.APIServer.EncryptionConfigPath()
	createNamespace(t, cs, "e2e")
	old := createMany(t, cs, "e2e", "old", 5)
	// The transit key rotated under the peer: its Status reports the new version, the
	// apiserver makes a new seed, and the peer encrypts it under v2.
	v.RotateKey(t, "transit", b.key)
	probe := create(t, cs, "configmaps", "e2e", "probe")
	waitForWrites(t, c, 3*time.Minute, "the apiserver writes under the peer's key version 2", probe, func(raw []byte) error {
		val, err := harness.ParseKMSv2(raw, provider)
		if err == nil && !bytes.HasPrefix(val.EncryptedDEKSource, []byte("vault:v2:")) {
			err = fmt.Errorf("still %.9q", val.EncryptedDEKSource)
		}
		return err
	})
	old = append(old, createMany(t, cs, "e2e", "old-v2", 2)...)
	foreign := map[string][]byte{} // etcd key -> the stand-in's ciphertext, as stored
	byVersion := map[string]int{}
	for _, r := range encrypted {
		for key, raw := range c.Etcd.List(t, "/registry/"+r+"/") {
			val, err := harness.ParseKMSv2(raw, provider)
			version, _, _ := strings.Cut(strings.TrimPrefix(string(val.EncryptedDEKSource), "vault:v"), ":")
			if err != nil || (val.KeyID != "1" && val.KeyID != "2") || !bytes.HasPrefix(val.EncryptedDEKSource, []byte("vault:v"+val.KeyID+":")) {
				t.Fatalf("%s as the stand-in stored it: key id %q, DEK source %.12q, %v", key, val.KeyID, val.EncryptedDEKSource, err)
			}
			foreign[key] = val.EncryptedDEKSource
			byVersion["vault:v"+version]++
		}
	}
	if len(byVersion) != 2 {
		t.Fatalf("the peer's objects by version: %v, want v1 and v2", byVersion)
	}
	if len(foreign) < len(old) {
		t.Fatalf("%d objects in the peer's format in etcd, want at least %d", len(foreign), len(old))
	}

	// The switch: the peer stops, ours starts on its socket, the apiserver restarts.
	theirs.Stop()
	p.Resume(t)
	c.APIServer.Restart(t)
	checkReads(t, cs, old...)
	for key, src := range foreign { // nothing was rewritten by the switch
		if val, err := harness.ParseKMSv2(c.Etcd.Get(t, key), provider); err != nil || !bytes.Equal(val.EncryptedDEKSource, src) {
			t.Errorf("%s changed during the switch: %v", key, err)
		}
	}
	ours := p.KeyID(t)
	fresh := createMany(t, cs, "e2e", "fresh", 2)
	checkKMSStored(t, c.Etcd, ours, fresh...)
	checkReads(t, cs, fresh...)

	// scan: the foreign objects by transit key version.
	scan := func(extra ...string) (map[string]int, int) {
		out, errOut, code := kmsctl(t, append([]string{"scan", "--etcd-endpoints", strings.Join(c.Etcd.Endpoints, ","), "--encryption-config", config, "-o", "json"}, extra...)...)
		if code != 0 && code != 3 {
			t.Fatalf("scan: exit %d\n%s\n%s", code, out, errOut)
		}
		var rep struct {
			VaultKubernetesKMS map[string]int `json:"vaultKubernetesKMS"`
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("scan -o json: %v\n%s", err, out)
		}
		return rep.VaultKubernetesKMS, code
	}
	if got, _ := scan(); fmt.Sprint(got) != fmt.Sprint(byVersion) {
		t.Errorf("scan counts %v objects in vault-kubernetes-kms's format, want %v", got, byVersion)
	}
	if _, code := scan("--fail-on-vault-kubernetes-kms"); code != 3 {
		t.Errorf("scan --fail-on-vault-kubernetes-kms with foreign objects left: exit %d, want 3", code)
	}
	out, _, code := kmsctl(t, "scan", "--etcd-endpoints", strings.Join(c.Etcd.Endpoints, ","), "--encryption-config", config)
	t.Logf("scan:\n%s", out)
	if code != 0 || !strings.Contains(out, "kms-v2 (vault-kubernetes-kms)") || !strings.Contains(out, "by transit key version: vault:v1:") {
		t.Errorf("scan's table: exit %d", code)
	}

	// decrypt: one of them, offline, through the plugin's socket (and so Vault).
	first := old[0]
	in := filepath.Join(t.TempDir(), "value")
	if err := os.WriteFile(in, c.Etcd.Get(t, first.key()), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := kmsctl(t, "decrypt", "--encryption-config", config, "--etcd-key", first.key(), "--in", in, "-o", "json")
	if code != 0 || !strings.Contains(out, first.name) {
		t.Errorf("decrypt of %s: exit %d\n%s\n%s", first, code, out, errOut)
	}

	// doctor: the token may decrypt them, and how many there are.
	doctor := func(args []string) string {
		out, errOut, _ := kmsctl(t, append([]string{"doctor", "--running", "--listen", p.Socket, "--etcd-endpoints", strings.Join(c.Etcd.Endpoints, ",")}, args...)...)
		t.Logf("doctor:\n%s%s", out, errOut)
		return out
	}
	if out := doctor(withFlag); !strings.Contains(out, "ok    vault-kubernetes-kms envelopes the token may decrypt with transit/decrypt/"+b.key) ||
		!strings.Contains(out, "v1: ") {
		t.Errorf("doctor with the flag: no ok line for vault-kubernetes-kms envelopes")
	}

	// A token whose policy lacks decrypt on the key: doctor says it cannot read them.
	noDecrypt := v.PolicyTokenFile(t, b.key+"-no-decrypt", fmt.Sprintf(`path "transit/encrypt/%[1]s" { capabilities = ["update"] }
path "transit/keys/%[1]s" { capabilities = ["read"] }
path "auth/token/lookup-self" { capabilities = ["read"] }
path "auth/token/renew-self" { capabilities = ["update"] }
path "sys/capabilities-self" { capabilities = ["update"] }
`, b.key))
	denied := []string{"--backend=vault", "--vault-addr=" + v.Addr, "--vault-transit-key=" + b.key, "--vault-auth=token",
		"--vault-token-file=" + noDecrypt, "--vault-read-vault-kubernetes-kms"}
	if out := doctor(denied); !strings.Contains(out, "FAIL  vault-kubernetes-kms envelopes the token may not decrypt with transit/decrypt/"+b.key) {
		t.Errorf("doctor with a token that may not decrypt: no FAIL line for vault-kubernetes-kms envelopes")
	}

	// The format off: refused, naming the flag; doctor fails while such objects remain.
	p.RestartWith(t, b.pluginArgs()...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = p.Client().Decrypt(ctx, &kmsapi.DecryptRequest{Uid: "off", KeyId: "1", Ciphertext: foreign[first.key()]})
	if st, _ := status.FromError(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "--vault-read-vault-kubernetes-kms") {
		t.Errorf("format off: Decrypt = %v, want FailedPrecondition naming the flag", err)
	}
	if out := doctor(b.pluginArgs()); !strings.Contains(out, "FAIL  vault-kubernetes-kms envelopes") {
		t.Errorf("doctor without the flag, with foreign objects in etcd: no FAIL line")
	}

	// rewrite (with the flag back on) leaves none; then the flag can go.
	p.RestartWith(t, withFlag...)
	out, errOut, code = kmsctl(t, "rewrite", "--kubeconfig", c.APIServer.Kubeconfig(t, ""), "--apiservers", c.APIServer.URL, "--encryption-config", config)
	if code != 0 {
		t.Fatalf("rewrite: exit %d\n%s\n%s", code, out, errOut)
	}
	if got, code := scan("--fail-on-vault-kubernetes-kms"); len(got) != 0 || code != 0 {
		t.Errorf("after rewrite scan still counts %v (exit %d)", got, code)
	}
	checkAllKMSStored(t, c.Etcd, ours)
	p.RestartWith(t, b.pluginArgs()...)
	c.APIServer.Restart(t)
	checkReads(t, cs, append(old, fresh...)...)
}
