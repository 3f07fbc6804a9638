package harness

import (
	"github.com/kmsplugin/kms-plugin/integration/harness/run"
	"github.com/kmsplugin/kms-plugin/integration/harness/vaultd"
)

// What moved to run and vaultd, under the names the integration tests have always used, so
// that they need no edits. New code outside package integration imports run or vaultd.

// The process plumbing (package run).
type (
	Process = run.Process
	TestPKI = run.TestPKI
)

const RequireServersEnv = run.RequireServersEnv

var (
	ServersDir = run.ServersDir
	Binary     = run.Binary
	FreePort   = run.FreePort
	Start      = run.Start
	Eventually = run.Eventually
	NewTestPKI = run.NewTestPKI
)

// Vault (package vaultd).
type (
	Vault        = vaultd.Vault
	VaultCluster = vaultd.VaultCluster
	TokenOptions = vaultd.TokenOptions
)

var (
	StartVaultDev         = vaultd.StartVaultDev
	StartVaultDevTLS      = vaultd.StartVaultDevTLS
	StartVaultFile        = vaultd.StartVaultFile
	StartVaultFileMTLS    = vaultd.StartVaultFileMTLS
	StartVaultRaftCluster = vaultd.StartVaultRaftCluster
	WithoutPolicyPath     = vaultd.WithoutPolicyPath
	TransitPolicy         = vaultd.TransitPolicy
)
