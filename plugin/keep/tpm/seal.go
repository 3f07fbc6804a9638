package tpm

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/kmsplugin/kms-plugin/internal/privatefile"
)

// srk creates the storage primary key under the owner hierarchy from its standard template:
// the same key at every start, so nothing of it is stored. flush frees its slot.
func (s *Store) srk() (handle tpm2.AuthHandle, pub *tpm2.TPMTPublic, flush func(), err error) {
	rsp, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(s.tpm)
	if err != nil {
		return tpm2.AuthHandle{}, nil, nil, fmt.Errorf("TPM: creating the storage key (an owner hierarchy with a password is not supported): %w", err)
	}
	flush = func() { tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}.Execute(s.tpm) }
	if pub, err = rsp.OutPublic.Contents(); err != nil {
		flush()
		return tpm2.AuthHandle{}, nil, nil, err
	}
	return tpm2.AuthHandle{Handle: rsp.ObjectHandle, Name: rsp.Name, Auth: tpm2.PasswordAuth(nil)}, pub, flush, nil
}

func (s *Store) pcrSelection() tpm2.TPMLPCRSelection {
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(uintPCRs(s.cfg.PCRs)...),
	}}}
}

func uintPCRs(pcrs []int) []uint {
	out := make([]uint, len(pcrs))
	for i, p := range pcrs {
		out[i] = uint(p)
	}
	return out
}

// sealNewKey makes a random state key and seals it to the TPM under the storage key, with a
// policy of the PCRs' values now (none without PCRs: the TPM alone).
func (s *Store) sealNewKey() ([]byte, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	parent, parentPub, flush, err := s.srk()
	if err != nil {
		return nil, err
	}
	defer flush()
	attrs := tpm2.TPMAObject{FixedTPM: true, FixedParent: true, NoDA: true, UserWithAuth: len(s.cfg.PCRs) == 0}
	var policy []byte
	if len(s.cfg.PCRs) > 0 {
		sess, done, err := tpm2.PolicySession(s.tpm, tpm2.TPMAlgSHA256, 16, tpm2.Trial())
		if err != nil {
			return nil, fmt.Errorf("TPM: trial policy session: %w", err)
		}
		defer done()
		if _, err := (tpm2.PolicyPCR{PolicySession: sess.Handle(), Pcrs: s.pcrSelection()}).Execute(s.tpm); err != nil {
			return nil, fmt.Errorf("TPM: PCR policy of PCRs %v (is the SHA-256 bank active?): %w", s.cfg.PCRs, err)
		}
		d, err := tpm2.PolicyGetDigest{PolicySession: sess.Handle()}.Execute(s.tpm)
		if err != nil {
			return nil, err
		}
		policy = d.PolicyDigest.Buffer
	}
	// The key travels to the TPM encrypted by a session salted with the storage key: a probe
	// on the TPM's bus sees no key.
	parent.Auth = tpm2.HMAC(tpm2.TPMAlgSHA256, 16, tpm2.AESEncryption(128, tpm2.EncryptIn), tpm2.Salted(parent.Handle, *parentPub))
	rsp, err := tpm2.Create{
		ParentHandle: parent,
		InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
			Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: key}),
		}},
		InPublic: tpm2.New2B(tpm2.TPMTPublic{Type: tpm2.TPMAlgKeyedHash, NameAlg: tpm2.TPMAlgSHA256, ObjectAttributes: attrs, AuthPolicy: tpm2.TPM2BDigest{Buffer: policy}}),
	}.Execute(s.tpm)
	if err != nil {
		clear(key)
		return nil, fmt.Errorf("TPM: sealing the state key: %w", err)
	}
	if err := privatefile.Write(s.path(pubFile), tpm2.Marshal(rsp.OutPublic), true); err != nil {
		clear(key)
		return nil, err
	}
	if err := privatefile.Write(s.path(privFile), tpm2.Marshal(rsp.OutPrivate), true); err != nil {
		clear(key)
		return nil, err
	}
	return key, nil
}

// ErrPolicy is a state key the TPM refuses to unseal: the PCRs differ from their values at
// sealing (another boot chain), or the key was sealed by another TPM.
var ErrPolicy = errors.New("the TPM refuses to unseal the state key")

// unsealKey loads the sealed state key and unseals it: fs.ErrNotExist when none was sealed.
func (s *Store) unsealKey() ([]byte, error) {
	pubRaw, err := privatefile.Read(s.path(pubFile))
	if err != nil {
		return nil, err
	}
	privRaw, err := privatefile.Read(s.path(privFile))
	if err != nil {
		return nil, err
	}
	// A sealed key that does not parse can never be unsealed: as lost as one the TPM refuses.
	pub, err := tpm2.Unmarshal[tpm2.TPM2BPublic](pubRaw)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrPolicy, s.path(pubFile), err)
	}
	priv, err := tpm2.Unmarshal[tpm2.TPM2BPrivate](privRaw)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrPolicy, s.path(privFile), err)
	}
	parent, parentPub, flush, err := s.srk()
	if err != nil {
		return nil, err
	}
	defer flush()
	loaded, err := tpm2.Load{ParentHandle: parent, InPrivate: *priv, InPublic: *pub}.Execute(s.tpm)
	if err != nil {
		return nil, fmt.Errorf("%w: loading it failed (sealed by another TPM, or the TPM was cleared): %w", ErrPolicy, err)
	}
	defer tpm2.FlushContext{FlushHandle: loaded.ObjectHandle}.Execute(s.tpm)
	// The key comes back encrypted by a session salted with the storage key.
	opts := []tpm2.AuthOption{tpm2.AESEncryption(128, tpm2.EncryptOut), tpm2.Salted(parent.Handle, *parentPub)}
	var auth tpm2.Session
	if len(s.cfg.PCRs) == 0 {
		auth = tpm2.HMAC(tpm2.TPMAlgSHA256, 16, opts...)
	} else {
		auth = tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(t transport.TPM, handle tpm2.TPMISHPolicy, _ tpm2.TPM2BNonce) error {
			// An empty digest: the TPM takes the PCRs' values now, which match the seal's
			// policy only if they are those it was sealed with.
			_, err := tpm2.PolicyPCR{PolicySession: handle, Pcrs: s.pcrSelection()}.Execute(t)
			return err
		}, opts...)
	}
	rsp, err := tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: loaded.ObjectHandle, Name: loaded.Name, Auth: auth}}.Execute(s.tpm)
	if err != nil {
		return nil, fmt.Errorf("%w: PCRs %v differ from their values when it was sealed (another boot chain, or Secure Boot changed): %w", ErrPolicy, s.cfg.PCRs, err)
	}
	if len(rsp.OutData.Buffer) != 32 {
		clear(rsp.OutData.Buffer)
		return nil, fmt.Errorf("%w: it holds %d bytes, not a 256-bit key", ErrPolicy, len(rsp.OutData.Buffer))
	}
	return rsp.OutData.Buffer, nil
}

// counter reads the NV counter, defining it (owner authorization, empty) on first use.
func (s *Store) counter() (uint64, error) {
	name, err := s.nvName()
	if err != nil {
		return 0, err
	}
	idx := tpm2.TPMHandle(s.cfg.NVIndex)
	rsp, err := tpm2.NVRead{
		AuthHandle: tpm2.AuthHandle{Handle: idx, Name: *name, Auth: tpm2.PasswordAuth(nil)},
		NVIndex:    tpm2.NamedHandle{Handle: idx, Name: *name},
		Size:       8,
	}.Execute(s.tpm)
	if err != nil {
		return 0, fmt.Errorf("TPM: reading the NV counter %#x: %w", s.cfg.NVIndex, err)
	}
	if len(rsp.Data.Buffer) != 8 {
		return 0, fmt.Errorf("TPM: NV counter %#x holds %d bytes", s.cfg.NVIndex, len(rsp.Data.Buffer))
	}
	return binary.BigEndian.Uint64(rsp.Data.Buffer), nil
}

// nvName returns the NV counter's name, defining and initializing the counter if it does not
// exist yet.
func (s *Store) nvName() (*tpm2.TPM2BName, error) {
	idx := tpm2.TPMHandle(s.cfg.NVIndex)
	if rsp, err := (tpm2.NVReadPublic{NVIndex: idx}).Execute(s.tpm); err == nil {
		pub, err := rsp.NVPublic.Contents()
		if err != nil {
			return nil, err
		}
		if a := pub.Attributes; a.NT != tpm2.TPMNTCounter || !a.AuthRead || !a.AuthWrite || pub.DataSize != 8 {
			return nil, fmt.Errorf("TPM: NV index %#x exists but is not this plugin's counter: choose another index", s.cfg.NVIndex)
		}
		if a := pub.Attributes; a.Written {
			return &rsp.NVName, nil
		}
	} else if !errors.Is(err, tpm2.TPMRCHandle) {
		return nil, fmt.Errorf("TPM: reading NV index %#x: %w", s.cfg.NVIndex, err)
	} else if err := s.define(); err != nil {
		return nil, err
	}
	// A counter reads only once written: the first increment sets it (to the highest count
	// any counter of this TPM has had, so a redefined counter cannot go back).
	if err := s.increment(); err != nil {
		return nil, err
	}
	rsp, err := tpm2.NVReadPublic{NVIndex: idx}.Execute(s.tpm)
	if err != nil {
		return nil, err
	}
	return &rsp.NVName, nil
}

func (s *Store) define() error {
	_, err := tpm2.NVDefineSpace{
		AuthHandle: tpm2.TPMRHOwner,
		PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{
			NVIndex: tpm2.TPMHandle(s.cfg.NVIndex),
			NameAlg: tpm2.TPMAlgSHA256,
			Attributes: tpm2.TPMANV{
				OwnerWrite: true, OwnerRead: true, AuthWrite: true, AuthRead: true,
				NT: tpm2.TPMNTCounter, NoDA: true,
			},
			DataSize: 8,
		}),
	}.Execute(s.tpm)
	if err != nil {
		return fmt.Errorf("TPM: defining the NV counter %#x (an owner hierarchy with a password is not supported): %w", s.cfg.NVIndex, err)
	}
	return nil
}

func (s *Store) increment() error {
	idx := tpm2.TPMHandle(s.cfg.NVIndex)
	rsp, err := tpm2.NVReadPublic{NVIndex: idx}.Execute(s.tpm)
	if err != nil {
		return fmt.Errorf("TPM: NV counter %#x: %w", s.cfg.NVIndex, err)
	}
	_, err = tpm2.NVIncrement{
		AuthHandle: tpm2.AuthHandle{Handle: idx, Name: rsp.NVName, Auth: tpm2.PasswordAuth(nil)},
		NVIndex:    tpm2.NamedHandle{Handle: idx, Name: rsp.NVName},
	}.Execute(s.tpm)
	if err != nil {
		return fmt.Errorf("TPM: incrementing the NV counter %#x: %w", s.cfg.NVIndex, err)
	}
	return nil
}
