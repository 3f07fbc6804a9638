// Package vaultd starts real Vault servers for tests: StartVaultDev and StartVaultDevTLS (a
// dev-mode Vault in memory), StartVaultFile, StartVaultFileMTLS and StartVaultFileWith
// (file storage, which survives Restart and can be sealed and unsealed; the last on a fixed
// port and with a certificate for the names a manifest uses) and StartVaultRaftCluster (an HA cluster
// of Raft nodes), with helpers for transit keys, policies, tokens and auth methods.
//
// It imports only Vault's API client and integration/harness/run, so that a package whose
// tests start Vault alone (backends/vault, its policy, the commands' Vault tests) links
// neither client-go nor the etcd client. internal/boundaries checks that it stays so.
package vaultd
