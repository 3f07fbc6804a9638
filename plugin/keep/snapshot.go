package keep

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/dek/cache"
)

// Bounds of a snapshot.
const (
	// DefaultEntries is how many DEK cache entries are kept, most recently used first: the
	// DEK seeds of a few apiservers across many rotations, with room to spare. About 300 bytes
	// each with Vault's key ids and wrapped keys in local KEK mode, 390 with a recovery seal
	// (TestSnapshotEntrySize), so all fit in MaxSize.
	DefaultEntries = 1000
	// MaxSize bounds an encoded snapshot: entries beyond it are left out, and a larger file is
	// refused when read.
	MaxSize = 512 << 10
)

// Snapshot is what is kept across a restart. Its keys are secrets: Clear it when done.
type Snapshot struct {
	// Binding names the backend's configuration the state belongs to (for Vault: namespace,
	// mount and key); a state kept under another is not restored.
	Binding  string
	KeyID    string    // the key id Status reported
	Answered time.Time // the last time the backend answered (wall clock)
	LocalKEK *dek.LocalKEKState
	Entries  []cache.Entry // most recently used first
}

// Clear zeroes the keys the snapshot holds.
func (s *Snapshot) Clear() {
	if s == nil {
		return
	}
	if s.LocalKEK != nil {
		clear(s.LocalKEK.Key)
	}
	for _, e := range s.Entries {
		clear(e.Key)
	}
}

// magic starts an encoded snapshot; its last byte is the format version.
var magic = []byte("kms-plugin-keep\x01")

// Marshal encodes s, leaving out the entries that would take it past MaxSize.
//
//	magic(16) binding<u16> keyID<u8> answered(unix ns, i64) hasLocal(u8)
//	[localKeyID<u8> localWrapped<u16> localKey<u8> created(i64) uses(u64)]
//	count(u32) { keyID<u8> wrapped<u16> key<u8> }*count
//	sha256(everything before)
//
// <uN> is a byte string after its length in N bits, big endian. The checksum catches a file
// damaged on the tmpfs store, whose bytes nothing else authenticates: a local KEK restored with
// a changed key would write envelopes that Vault's copy of it cannot open.
func (s *Snapshot) Marshal() ([]byte, error) {
	var b cryptobyte.Builder
	b.AddBytes(magic)
	b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(s.Binding)) })
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(s.KeyID)) })
	b.AddUint64(uint64(s.Answered.UnixNano()))
	if lk := s.LocalKEK; lk != nil {
		b.AddUint8(1)
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(lk.KeyID)) })
		b.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(lk.Wrapped) })
		b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(lk.Key) })
		b.AddUint64(uint64(lk.Created.UnixNano()))
		b.AddUint64(lk.Uses)
	} else {
		b.AddUint8(0)
	}
	head, err := b.Bytes()
	if err != nil {
		return nil, err
	}
	// The entries go in while they fit: the most recently used first.
	var body []byte
	size, n := len(head)+4+sha256.Size, 0
	for _, e := range s.Entries {
		var eb cryptobyte.Builder
		eb.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(e.KeyID)) })
		eb.AddUint16LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(e.Wrapped) })
		eb.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes(e.Key) })
		one, err := eb.Bytes()
		if err != nil {
			clear(body)
			clear(head)
			return nil, err
		}
		if size+len(one) > MaxSize {
			clear(one)
			break
		}
		size += len(one)
		body = append(body, one...)
		clear(one)
		n++
	}
	if size > MaxSize {
		clear(head)
		clear(body)
		return nil, fmt.Errorf("snapshot of %d bytes without entries: over %d", size, MaxSize)
	}
	out := make([]byte, 0, size)
	out = append(out, head...)
	out = append(out, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	out = append(out, body...)
	sum := sha256.Sum256(out)
	out = append(out, sum[:]...)
	clear(head)
	clear(body)
	return out, nil
}

// Unmarshal decodes what Marshal wrote. Keys are copied out of b.
func Unmarshal(b []byte) (*Snapshot, error) {
	if len(b) > MaxSize {
		return nil, fmt.Errorf("kept state of %d bytes: over %d", len(b), MaxSize)
	}
	if len(b) < len(magic)+sha256.Size {
		return nil, errors.New("kept state: truncated")
	}
	b, sum := b[:len(b)-sha256.Size], b[len(b)-sha256.Size:]
	if want := sha256.Sum256(b); subtle.ConstantTimeCompare(sum, want[:]) != 1 {
		return nil, errors.New("kept state: checksum mismatch (the file was damaged or changed)")
	}
	in := cryptobyte.String(b)
	var head []byte
	if !in.ReadBytes(&head, len(magic)) || string(head) != string(magic) {
		return nil, errors.New("kept state: not a snapshot of this format (bad magic or version)")
	}
	s := &Snapshot{}
	var binding, keyID cryptobyte.String
	var answered uint64
	var hasLocal uint8
	if !in.ReadUint16LengthPrefixed(&binding) || !in.ReadUint8LengthPrefixed(&keyID) || !in.ReadUint64(&answered) || !in.ReadUint8(&hasLocal) || hasLocal > 1 {
		return nil, errors.New("kept state: truncated or malformed header")
	}
	s.Binding, s.KeyID, s.Answered = string(binding), string(keyID), time.Unix(0, int64(answered))
	if hasLocal == 1 {
		var id, wrapped, key cryptobyte.String
		var created, uses uint64
		if !in.ReadUint8LengthPrefixed(&id) || !in.ReadUint16LengthPrefixed(&wrapped) || !in.ReadUint8LengthPrefixed(&key) ||
			!in.ReadUint64(&created) || !in.ReadUint64(&uses) || len(key) != dek.DEKSize {
			return nil, errors.New("kept state: malformed local KEK")
		}
		s.LocalKEK = &dek.LocalKEKState{KeyID: string(id), Wrapped: clone(wrapped), Key: clone(key), Created: time.Unix(0, int64(created)), Uses: uses}
	}
	var count uint32
	if !in.ReadUint32(&count) {
		s.Clear()
		return nil, errors.New("kept state: truncated entry count")
	}
	for i := uint32(0); i < count; i++ {
		var id, wrapped, key cryptobyte.String
		if !in.ReadUint8LengthPrefixed(&id) || !in.ReadUint16LengthPrefixed(&wrapped) || !in.ReadUint8LengthPrefixed(&key) ||
			len(id) == 0 || len(wrapped) == 0 || len(key) != dek.DEKSize {
			s.Clear()
			return nil, fmt.Errorf("kept state: malformed entry %d of %d", i, count)
		}
		s.Entries = append(s.Entries, cache.Entry{KeyID: string(id), Wrapped: clone(wrapped), Key: clone(key)})
	}
	if !in.Empty() {
		s.Clear()
		return nil, fmt.Errorf("kept state: %d bytes after the last entry", len(in))
	}
	return s, nil
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }
