// Package plugin serves the KMS v2 KeyManagementService over gRPC on a unix socket. It knows
// nothing of any backend: Encrypt and Decrypt go to a dek.Sealer, Status reads a Monitor.
//
// One Encrypt, as serve wires it (cmd/kms-plugin/operations.go):
//
//	socket (Listen) → Server (gRPC, v2 and v1beta1, health) → Service.Encrypt
//	  → dek.Sealer.Encrypt (fresh DEK, AES-256-GCM, envelope)
//	    → [limit.Timeout → limit.KEK (Vault's calls bounded in time and number)]
//	    → Monitor.Proving → metrics.KEK (counted, timed) → backend Wrap
//
// Decrypt takes the same path to the backend's Unwrap. With Vault, a DEK cache and local KEK
// mode sit above the limit (cmd/kms-plugin/operations.go). The Monitor refreshes the backend's
// state in the background through metrics.KEK (never queued behind the limiter), and Status
// answers from that state without calling the backend.
package plugin
