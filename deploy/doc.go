// Package deploy holds the operator-facing deployment files (static-pod/, rbac/, systemd/) and the tests
// that keep them loadable by the real Kubernetes code: every manifest decodes strictly as its
// k8s.io/api type, every EncryptionConfiguration loads with kube-apiserver's own loader (and
// ours) and encrypts and decrypts through a real plugin, and rewrite's admission guard runs
// through the apiserver's CEL admission compiler; the systemd unit passes systemd-analyze verify
// and security, and the plugin run with its command line and environment notifies readiness.
package deploy
