// Package plugin serves the KMS v2 KeyManagementService over gRPC on a unix socket. It knows
// nothing of any backend: Encrypt and Decrypt go to a dek.Sealer, Status reads a Monitor.
//
// New builds the whole serving stack, and is the one place that orders its layers (serve, the
// test helpers and kmsctl compare all use it); its comment shows the path of a request. The
// Monitor refreshes the backend's state in the background, never queued behind traffic, and
// Status answers from that state without calling the backend.
package plugin
