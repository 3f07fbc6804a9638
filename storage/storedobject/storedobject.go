// Package storedobject converts between the form in which kube-apiserver stores an object in
// etcd (Kubernetes protobuf, starting "k8s\x00", for built-in types; JSON for custom
// resources) and YAML or JSON for people, through client-go's scheme.
package storedobject

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"k8s.io/apimachinery/pkg/runtime"
	kjson "k8s.io/apimachinery/pkg/runtime/serializer/json"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// protobufMagic starts every object the apiserver stores as protobuf.
var protobufMagic = []byte("k8s\x00")

// LooksStored reports whether b has the shape of a stored object: Kubernetes protobuf or a
// JSON object. Used to catch garbage from unauthenticated providers (aescbc).
func LooksStored(b []byte) bool {
	return bytes.HasPrefix(b, protobufMagic) || json.Valid(b) && bytes.HasPrefix(bytes.TrimSpace(b), []byte("{"))
}

// Format is yaml or json.
type Format string

const (
	YAML Format = "yaml"
	JSON Format = "json"
)

// Decode renders a stored object as YAML or JSON.
func Decode(stored []byte, f Format) ([]byte, error) {
	if f != YAML && f != JSON {
		return nil, fmt.Errorf("output format %q: want yaml or json", f)
	}
	if !bytes.HasPrefix(stored, protobufMagic) {
		// Custom resources are stored as JSON, which needs no scheme.
		if !json.Valid(stored) {
			return nil, errors.New("the stored object is neither Kubernetes protobuf nor JSON")
		}
		if f == YAML {
			return yaml.JSONToYAML(stored)
		}
		var out bytes.Buffer
		if err := json.Indent(&out, stored, "", "  "); err != nil {
			return nil, err
		}
		return append(out.Bytes(), '\n'), nil
	}
	obj, gvk, err := scheme.Codecs.UniversalDeserializer().Decode(stored, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("decoding the stored protobuf object: %w", err)
	}
	obj.GetObjectKind().SetGroupVersionKind(*gvk)
	s := kjson.NewSerializerWithOptions(kjson.DefaultMetaFactory, scheme.Scheme, scheme.Scheme, kjson.SerializerOptions{Yaml: f == YAML, Pretty: true})
	var out bytes.Buffer
	if err := s.Encode(obj, &out); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// Encode turns a YAML or JSON object into the form the apiserver stores: protobuf for types
// client-go's scheme knows, compact JSON for others (custom resources).
func Encode(in []byte) ([]byte, error) {
	j, err := yaml.YAMLToJSON(in)
	if err != nil {
		return nil, fmt.Errorf("reading the object: %w", err)
	}
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := json.Unmarshal(j, &meta); err != nil || meta.APIVersion == "" || meta.Kind == "" {
		return nil, errors.New("the object needs apiVersion and kind")
	}
	obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(j, nil, nil)
	if runtime.IsNotRegisteredError(err) {
		var out bytes.Buffer
		if err := json.Compact(&out, j); err != nil {
			return nil, err
		}
		return out.Bytes(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("decoding %s %s: %w", meta.APIVersion, meta.Kind, err)
	}
	var out bytes.Buffer
	if err := protobuf.NewSerializer(scheme.Scheme, scheme.Scheme).Encode(obj, &out); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}
