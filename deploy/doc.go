// Package deploy holds the operator-facing deployment files (static-pod/) and the tests that
// keep them loadable by the real Kubernetes code: every manifest decodes strictly as its
// k8s.io/api type, and every EncryptionConfiguration loads with kube-apiserver's own loader
// and encrypts and decrypts through a real plugin.
package deploy
