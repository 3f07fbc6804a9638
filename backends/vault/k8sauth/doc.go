// Package k8sauth has no code. Its test logs the Vault backend in with Kubernetes auth, with
// a service-account token that a real kube-apiserver issued and Vault verifies with that
// apiserver's TokenReview. It lives apart from package vault because starting a kube-apiserver
// links client-go and the etcd client (integration/harness), which package vault's own tests,
// Vault alone, must not (internal/boundaries checks it). It runs with `go test ./...` and
// `go test ./backends/vault/...`.
package k8sauth
