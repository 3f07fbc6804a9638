// Package harness starts the real servers that integration tests run against — etcd,
// kube-apiserver, Vault, the plugin itself, and a kubelet node over containerd — on loopback,
// stopped when the test ends. Every integration test starts its servers through this package.
//
// # Split by server
//
// The harness is three packages, so that a package's tests link only the clients of the
// servers they start (internal/boundaries checks the light ones):
//
//   - integration/harness/run: the process plumbing, with no server's client: ServersDir,
//     Binary, FreePort, Start and Process, Eventually, the test PKI (NewTestPKI) and Must.
//   - integration/harness/vaultd: Vault (vault.go, vaultraft.go), importing only run and
//     Vault's API client. backends/vault, its policy and the commands' Vault tests use it
//     (with run), and so link neither client-go nor the etcd client.
//   - this package: etcd, kube-apiserver, the clusters made of them, and the plugin; it links
//     client-go and the etcd client.
//
// For the many tests of package integration (and the few elsewhere that start etcd too),
// moved.go keeps what moved under its old names here — type aliases (Vault, VaultCluster,
// TokenOptions, Process, TestPKI) and function values (StartVaultDev, Eventually, ...) — so
// that they need no edits. Those aliases are only for such callers: a package that starts no
// etcd or kube-apiserver imports run and vaultd, never this package.
//
// The servers are built before `go test` starts, by integration/servers/build.sh (which
// scripts/test.sh runs), never inside a test: a build would count against the test's timeout.
// The kms-plugin binary is built from this checkout once per source tree (PluginBinary), or
// taken from $KMS_PLUGIN_BIN; call BuildPlugin from TestMain to build it before the tests
// (as package integration does), or the first test that starts a plugin pays for the build.
//
// # One call: etcd + kube-apiserver with this EncryptionConfiguration
//
//	c := harness.StartCluster(t, harness.APIServerOptions{
//		EncryptionConfig: harness.EncryptionConfig([]string{"secrets"},
//			harness.KMSv2("kms-plugin", plugin.Endpoint), harness.Identity()),
//	})
//	c.APIServer.Clientset.CoreV1().Secrets("default").Create(...)
//	raw := c.Etcd.Get(t, harness.Key("secrets", "default", "name"))
//	v, err := harness.ParseKMSv2(raw, "kms-plugin") // v.KeyID
//
// StartEncryptedCluster(t, pluginArgs...) does the same with a kms-plugin it starts (for
// example with "--localaes-key-file", path): Secrets and ConfigMaps use KMS v2 provider
// "kms-plugin", then identity.
//
// # Pieces
//
//   - StartEtcd: one member, data in a temp dir; Endpoints, a clientv3 Client, Get/List of raw
//     values, Key(resource, ns, name) for the etcd key of an object. StartEtcdMTLS serves
//     clients over TLS with client certificates, as kubeadm's etcd does.
//   - StartKubeAPIServer(t, APIServerOptions): etcd servers, EncryptionConfig (YAML, written
//     to a file the apiserver's --encryption-provider-config names), AutomaticReload, and
//     ExtraArgs. It generates the service-account key and an admin token, waits for /readyz,
//     and gives Config (a rest.Config over verified TLS) and Clientset. WriteEncryptionConfig
//     replaces the file atomically; Restart and Stop; Health(ctx, "/livez") and KMSHealth
//     (/readyz/kms-providers, the aggregated check of every KMS v2 provider) say whether a
//     check answers 200 and what it says. Two apiservers may share one Etcd.
//   - StartPlugin(t, args...): `kms-plugin serve --listen <socket> args...` on a short socket
//     path; Endpoint for the EncryptionConfiguration; Status and KeyID over the socket;
//     Stop, Resume, Restart, Reload (SIGHUP) and WaitKeyID. A data race the plugin (built
//     with -race) reports fails the test.
//   - StartVaultDev / StartVaultFile (vaultd): a real Vault, with helpers for transit keys,
//     policies, tokens and auth methods; the Vault variants of the scenarios use them.
//   - EncryptionConfig, KMSv2, Identity, AESCBC, AESGCM, Secretbox build EncryptionConfiguration
//     YAML from k8s.io/apiserver's own types.
//   - ParseKMSv2 reads a raw KMS v2 value's key id and encrypted DEK source, independently
//     of the plugin's code.
//   - NewImageStore (image.go): a buildah store of the test's own (vfs, in a temp dir);
//     BuildPluginImage builds the repository's Dockerfile into it with the checkout's
//     scripts/image.sh --local-bases (base images from this machine's files, no registry,
//     --timestamp 0), and ImageLayers, ImageFile, SaveOCIArchive read the result.
//   - StartNode (kubelet.go): containerd 2.x (with Debian's runc) in a mount namespace of its
//     own, where /etc is an overlay and /run a tmpfs, the images imported into its k8s.io
//     namespace and the local pause image pinned as sandbox; StartKubelet runs kubelet on it
//     (static pods from /etc/kubernetes/manifests, cgroupfs under a cgroup root of the test's,
//     127.0.0.1). WriteFile and Path reach the node's files; ContainerPID a container's
//     process, ContainerLog its log. Everything is undone at the end, and a mount, cgroup or file left fails the test.
//     BuildPauseImage (pause.c of the kubelet's module, gcc -static) and BuildKubeAPIServerImage
//     make the other images.
//   - Binary, FreePort, Start/Process and Eventually (run) are the process plumbing beneath.
package harness
