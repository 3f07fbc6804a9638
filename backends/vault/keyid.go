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

// A key id is "vault:<lineage>:v<version>". The lineage ties the id to one key version of one
// transit key in one Vault cluster: a deleted and recreated key, or a same-named key
// elsewhere, gets other lineages and so never reuses a key id the apiserver has already seen.
//
// It hashes the creation time of the version the id names, not of version 1: Vault lists a
// key's versions (and their creation times) only down to min_decryption_version, so version
// 1's time disappears when an operator retires old versions, while every version that can
// still decrypt keeps its own.
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

// lineage is the first 16 hex digits of SHA-256 over the cluster id, namespace, mount, key
// name and a key version's creation time (Unix seconds). Each field is length-prefixed so no
// two field lists hash alike.
func lineage(clusterID, namespace, mount, key string, created int64) string {
	h := sha256.New()
	for _, f := range []string{"kms-plugin vault lineage v1", clusterID, namespace, mount, key, strconv.FormatInt(created, 10)} {
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
	bad := fmt.Errorf("%w: %q is not a vault key id (vault:<16 hex>:v<version>)", dek.ErrUnknownKey, id)
	rest, ok := strings.CutPrefix(id, keyIDPrefix)
	if !ok {
		return KeyVersion{}, bad
	}
	lin, ver, ok := strings.Cut(rest, ":v")
	if !ok || len(lin) != 16 || strings.Trim(lin, "0123456789abcdef") != "" {
		return KeyVersion{}, bad
	}
	if ver == "" || ver[0] == '0' || len(ver) > 9 || strings.Trim(ver, "0123456789") != "" {
		return KeyVersion{}, bad
	}
	n, err := strconv.Atoi(ver)
	if err != nil {
		return KeyVersion{}, bad
	}
	return KeyVersion{lineage: lin, version: n}, nil
}

// debounce adopts a key id only once two consecutive observations agree, so that control-plane
// nodes behind a load balancer that briefly disagree about the latest version never make the
// key id flip back and forth. The first observation is adopted at once: there is nothing yet
// to flip from.
type debounce struct {
	adopted   KeyVersion
	candidate KeyVersion
}

// observe records one successful check's view and reports whether it changed the adopted id.
func (d *debounce) observe(seen KeyVersion) bool {
	switch {
	case d.adopted.lineage == "" || seen == d.adopted:
		changed := seen != d.adopted
		d.adopted, d.candidate = seen, KeyVersion{}
		return changed
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
