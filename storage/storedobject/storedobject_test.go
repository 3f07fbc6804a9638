package storedobject_test

import (
	"bytes"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/kmsplugin/kms-plugin/storage/storedobject"
)

const secretYAML = `apiVersion: v1
kind: Secret
metadata:
  name: s1
  namespace: default
data:
  password: aHVudGVyMg==
type: Opaque
`

func TestSecretRoundTrip(t *testing.T) {
	stored, err := storedobject.Encode([]byte(secretYAML))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(stored, []byte("k8s\x00")) || !storedobject.LooksStored(stored) {
		t.Fatalf("stored form starts %q", stored[:8])
	}
	// The apiserver's own decoder reads it as a v1 Secret.
	obj, _, err := protobuf.NewSerializer(scheme.Scheme, scheme.Scheme).Decode(stored, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, ok := obj.(*corev1.Secret)
	if !ok || s.Name != "s1" || string(s.Data["password"]) != "hunter2" {
		t.Fatalf("decoded %#v", obj)
	}
	y, err := storedobject.Decode(stored, storedobject.YAML)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"kind: Secret", "apiVersion: v1", "name: s1", "password: aHVudGVyMg=="} {
		if !strings.Contains(string(y), want) {
			t.Errorf("YAML lacks %q:\n%s", want, y)
		}
	}
	j, err := storedobject.Decode(stored, storedobject.JSON)
	if err != nil || !strings.Contains(string(j), `"kind": "Secret"`) {
		t.Fatalf("JSON: %v\n%s", err, j)
	}
}

func TestCustomResourcesStayJSON(t *testing.T) {
	in := "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\nspec: {size: 3}\n"
	stored, err := storedobject.Encode([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if string(stored) != `{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"w"},"spec":{"size":3}}` {
		t.Fatalf("stored %s", stored)
	}
	y, err := storedobject.Decode(stored, storedobject.YAML)
	if err != nil || !strings.Contains(string(y), "size: 3") {
		t.Fatalf("%v %s", err, y)
	}
}

func TestBadInput(t *testing.T) {
	for _, in := range []string{"", "just text", "kind: Secret\n", "apiVersion: v1\nkind: Secret\ndata: 3\n"} {
		if _, err := storedobject.Encode([]byte(in)); err == nil {
			t.Errorf("Encode(%q) succeeded", in)
		}
	}
	for _, in := range []string{"", "garbage", "k8s\x00garbage"} {
		if _, err := storedobject.Decode([]byte(in), storedobject.YAML); err == nil {
			t.Errorf("Decode(%q) succeeded", in)
		}
	}
	if storedobject.LooksStored([]byte("\x01\x02garbage")) {
		t.Error("garbage looks stored")
	}
}
