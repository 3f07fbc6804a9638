package providers_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2"
	kmstypes "k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2/v2"

	"github.com/kmsplugin/kms-plugin/storage/providers"
)

func validObject(t *testing.T) []byte {
	t.Helper()
	b, err := proto.Marshal(&kmstypes.EncryptedObject{EncryptedData: []byte("d"), KeyID: "k", EncryptedDEKSource: []byte("s")})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A field number above 2^29-1, the largest protobuf allows, makes the apiserver's proto.Unmarshal
// fail; the hand-written parser we had skipped it as an unknown field and accepted the value.
func TestFieldNumberAboveTheLimitIsRejected(t *testing.T) {
	bad := protowire.AppendVarint(protowire.AppendTag(validObject(t), 1<<29, protowire.VarintType), 0)
	if err := proto.Unmarshal(bad, &kmstypes.EncryptedObject{}); err == nil {
		t.Fatal("proto.Unmarshal accepts field number 1<<29: the premise of this test is gone")
	}
	if _, err := providers.ParseEncryptedObject(bad); !errors.Is(err, providers.ErrMalformed) {
		t.Errorf("ParseEncryptedObject: %v, want ErrMalformed", err)
	}
	if id, err := providers.EncryptedObjectKeyID(bad); err == nil {
		t.Errorf("EncryptedObjectKeyID: key id %q, want an error", id)
	}
	// The largest valid field number is an unknown field, skipped by both.
	ok := protowire.AppendVarint(protowire.AppendTag(validObject(t), protowire.MaxValidNumber, protowire.VarintType), 0)
	if _, err := providers.ParseEncryptedObject(ok); err != nil {
		t.Errorf("field number 2^29-1: %v", err)
	}

	// The hand-made fuzz seed holds the same bytes, so that the differential fuzzer checks it on
	// every run.
	seed, err := os.ReadFile(filepath.Join("testdata", "fuzz", "FuzzParseEncryptedObject", "field-number-1-shl-29"))
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", bad); string(seed) != want {
		t.Errorf("the seed file holds\n%s\nwant\n%s", seed, want)
	}
}

// EncryptedObjectKeyID checks the message and its key id only; ParseEncryptedObject checks
// everything the apiserver does.
func TestEncryptedObjectKeyID(t *testing.T) {
	keyOnly, _ := proto.Marshal(&kmstypes.EncryptedObject{KeyID: "vault:k8s:7"})
	if id, err := providers.EncryptedObjectKeyID(keyOnly); err != nil || id != "vault:k8s:7" {
		t.Errorf("key id only: %q, %v", id, err)
	}
	if _, err := providers.ParseEncryptedObject(keyOnly); err == nil {
		t.Error("ParseEncryptedObject accepted an object without data")
	}
	wrongType := protowire.AppendVarint(protowire.AppendTag(nil, 2, protowire.VarintType), 7)
	tooLong := protowire.AppendString(protowire.AppendTag(nil, 2, protowire.BytesType), string(make([]byte, 2000)))
	for name, b := range map[string][]byte{
		"empty": nil, "key id as varint": wrongType, "key id too long": tooLong,
		"bad tag": {0xff}, "short length": {0x12, 0x05, 'a'}, "not UTF-8": {0x12, 0x01, 0xff},
	} {
		if id, err := providers.EncryptedObjectKeyID(b); err == nil {
			t.Errorf("%s: got key id %q, want an error", name, id)
		}
		// Where the apiserver refuses the key id, it refuses the object.
		ref := &kmstypes.EncryptedObject{}
		if err := proto.Unmarshal(b, ref); err == nil {
			if _, err := kmsv2.ValidateKeyID(ref.KeyID); err == nil {
				t.Errorf("%s: the apiserver accepts the key id %q", name, ref.KeyID)
			}
		}
	}
}
