// Package run is the process plumbing beneath the real-server harness, with no server's
// client in it: ServersDir and Binary find the servers that integration/servers/build.sh
// built, FreePort picks a loopback port, Start runs a server as a Process (killed when the
// test ends, its log printed when the test fails), Eventually polls until a condition holds,
// NewTestPKI writes a throwaway CA with server and client certificates, and Must ends a test
// on a setup error.
//
// The packages that start one kind of server build on it: integration/harness/vaultd (Vault,
// with only Vault's API client) and integration/harness (etcd, kube-apiserver, the plugin and
// the clusters made of them). A package's tests import the ones for the servers they start,
// so that they link no other server's client.
package run
