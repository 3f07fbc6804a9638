package dek

import "time"

// What a backend may do beyond KEK. Each is a small interface that the serving stack looks for
// on the backend it is given, as database/sql/driver declares Pinger beside Conn: a backend
// that has the ability implements the interface, and nothing names a concrete backend.

// Judge says, from memory, whether the backend still accepts a key id: nil, or why not (a
// version below Vault's min_decryption_version, a key deleted or recreated). The serving stack
// drops what it holds in memory under key ids it refuses: cached DEKs and the local KEK.
type Judge interface {
	Usable(keyID string) error
}

// Reloader re-reads the backend's configuration (localaes: its key file) on SIGHUP. A failed
// reload keeps the keys in use.
type Reloader interface {
	Reload() error
}

// TokenTTLReporter is a backend whose credentials expire (a Vault token). TokenTTL answers from
// memory: the time left on the credentials in use, and false while none are held or they do
// not expire.
type TokenTTLReporter interface {
	TokenTTL() (time.Duration, bool)
}

// UnwrapBatcher is a backend that coalesces concurrent unwraps into batched requests (Vault's
// transit batch_input): the requests sent and the unwraps they carried.
type UnwrapBatcher interface {
	DecryptBatches() (requests, items uint64)
}
