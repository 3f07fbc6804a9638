// Package keep keeps what the plugin serves from memory across a restart, so that a plugin
// restarted while its backend is unreachable serves its apiserver for the rest of the grace
// (docs/vault.md, "Restart during an outage"; docs/security.md for what each store exposes).
//
// What is kept is a Snapshot: the key id Status reports, the time the backend last answered,
// the current local KEK and the most recently used DEK cache entries, bounded in number and
// size. A Store holds one snapshot's bytes: on tmpfs (Tmpfs: a process restart, not a reboot)
// or sealed to a TPM 2.0 (package tpm: a reboot too). A Keeper saves the snapshot after each
// successful check and each new local KEK, and erases it when the backend refuses.
package keep
