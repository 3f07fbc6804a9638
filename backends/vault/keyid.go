package vault

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"

	"github.com/kmsplugin/kms-plugin/dek"
)

// A key id is "vault:<lineage>:v<version>". The lineage is the first 16 hex digits of SHA-256
// over the creation time of the version the id names (Unix seconds, as transit/keys/<key>
// lists it), and nothing else (format 2). That time belongs to the key material: Transit
// backup and restore carry it to another Vault cluster, mount or key name, and a Raft snapshot
// keeps it, so a key moved or recovered that way keeps its key ids and the apiserver sees no
// rotation. A deleted and recreated key, or any other key, has versions created at other
// times, so it gets other lineages and never reuses a key id the apiserver has already seen
// (unless its version was created in the same second as the other key's: see docs/vault.md).
//
// It hashes the named version's creation time, not version 1's: Vault lists a key's versions
// (and their creation times) only down to min_decryption_version, so version 1's time
// disappears when an operator retires old versions, while every version that can still decrypt
// keeps its own.
//
// Format 1, written by every version before this one, hashed Vault's cluster id, the
// namespace, the mount and the key name with that time (legacyLineage). Its ids have the same
// shape; they stay valid in envelopes: Unwrap asks Vault to decrypt under whatever version an
// envelope's key id names, and only the key material decides whether that succeeds.
const keyIDPrefix = "vault:"

// KeyVersion is what a key id names: one version of one lineage. The zero value names none.
type KeyVersion struct {
	lineage string // 16 hex digits
	version int    // 1 and up
}

// Lineage is the 16 hex digits that tie the key id to one key version of one transit key.
func (k KeyVersion) Lineage() string { return k.lineage }

// Version is the transit key version the key id names, 1 and up.
func (k KeyVersion) Version() int { return k.version }

// String is the key id, "vault:<lineage>:v<version>"; "" for the zero value.
func (k KeyVersion) String() string {
	if k.lineage == "" {
		return ""
	}
	return keyIDPrefix + k.lineage + ":v" + strconv.Itoa(k.version)
}

// lineage is the key-id lineage (format 2) of a key version created at created (Unix seconds).
func lineage(created int64) string {
	return hashFields("kms-plugin vault lineage v2", strconv.FormatInt(created, 10))
}

// legacyLineage is the lineage of format 1, which tied a key id to one Vault cluster, namespace,
// mount and key name. Only Unwrap's error reporting still uses it: an envelope under a format-1
// id of this very key that Vault cannot authenticate was tampered with.
func legacyLineage(clusterID, namespace, mount, key string, created int64) string {
	return hashFields("kms-plugin vault lineage v1", clusterID, namespace, mount, key, strconv.FormatInt(created, 10))
}

// hashFields is the first 16 hex digits of SHA-256 over the fields, each length-prefixed so no
// two field lists hash alike.
func hashFields(fields ...string) string {
	h := sha256.New()
	for _, f := range fields {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(f)))
		h.Write(n[:])
		h.Write([]byte(f))
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// ParseKeyID reads a key id strictly, as Wrap and Unwrap do; anything else is not one of ours
// (dek.ErrUnknownKey).
func ParseKeyID(id string) (KeyVersion, error) {
	if kv, ok := parseKeyID(id); ok {
		return kv, nil
	}
	return KeyVersion{}, fmt.Errorf("%w: %q is not a vault key id (vault:<16 hex>:v<version>)", dek.ErrUnknownKey, id)
}

// parseKeyID is ParseKeyID without the error, which every Wrap and Unwrap would build.
func parseKeyID(id string) (KeyVersion, bool) {
	rest, ok := strings.CutPrefix(id, keyIDPrefix)
	if !ok {
		return KeyVersion{}, false
	}
	lin, ver, ok := strings.Cut(rest, ":v")
	if !ok || len(lin) != 16 || strings.Trim(lin, "0123456789abcdef") != "" {
		return KeyVersion{}, false
	}
	if ver == "" || ver[0] == '0' || len(ver) > 9 || strings.Trim(ver, "0123456789") != "" {
		return KeyVersion{}, false
	}
	n, err := strconv.Atoi(ver)
	if err != nil {
		return KeyVersion{}, false
	}
	return KeyVersion{lineage: lin, version: n}, true
}

// debounce adopts a key id only once two consecutive observations agree, so that control-plane
// nodes behind a load balancer that briefly disagree about the latest version never make the
// key id flip back and forth. That holds for the first key id too: a replica lagging behind a
// rotation that answers a restarted plugin's first read must not take the key id back to the
// version before it (Check makes the first two observations close together, so a start is
// not delayed long).
type debounce struct {
	adopted   KeyVersion
	candidate KeyVersion
}

// observe records one successful check's view and reports whether it changed the adopted id.
func (d *debounce) observe(seen KeyVersion) bool {
	switch {
	case seen == d.adopted:
		d.candidate = KeyVersion{}
		return false
	case seen == d.candidate:
		d.adopted, d.candidate = seen, KeyVersion{}
		return true
	default:
		d.candidate = seen
		return false
	}
}

// adopt takes seen at once, bypassing the wait.
func (d *debounce) adopt(seen KeyVersion) { d.adopted, d.candidate = seen, KeyVersion{} }

// miss records a failed check: observations on either side of it are not consecutive.
func (d *debounce) miss() { d.candidate = KeyVersion{} }
