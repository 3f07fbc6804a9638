package encryptionconfig

import (
	"encoding/json"
	"fmt"
	"time"
)

// The file's schema: apiserver.config.k8s.io/v1 EncryptionConfiguration, as in k8s.io/apiserver
// pkg/apis/apiserver/v1/types_encryption.go. Our own copy keeps the plugin binary free of the
// apiserver's scheme machinery; a test loads the same files with both.

const (
	apiVersion = "apiserver.config.k8s.io/v1"
	kind       = "EncryptionConfiguration"
)

type fileConfig struct {
	Kind       string           `json:"kind"`
	APIVersion string           `json:"apiVersion"`
	Resources  []resourceConfig `json:"resources"`
}

type resourceConfig struct {
	Resources []string         `json:"resources"`
	Providers []providerConfig `json:"providers"`
}

type providerConfig struct {
	AESGCM    *keysConfig `json:"aesgcm,omitempty"`
	AESCBC    *keysConfig `json:"aescbc,omitempty"`
	Secretbox *keysConfig `json:"secretbox,omitempty"`
	Identity  *struct{}   `json:"identity,omitempty"`
	KMS       *kmsConfig  `json:"kms,omitempty"`
}

type keysConfig struct {
	Keys []keyConfig `json:"keys"`
}

type keyConfig struct {
	Name   string `json:"name"`
	Secret string `json:"secret"`
}

type kmsConfig struct {
	APIVersion string    `json:"apiVersion"`
	Name       string    `json:"name"`
	CacheSize  *int32    `json:"cachesize,omitempty"`
	Endpoint   string    `json:"endpoint"`
	Timeout    *duration `json:"timeout,omitempty"`
}

// duration is metav1.Duration's JSON form: a Go duration string such as "3s".
type duration struct{ time.Duration }

func (d *duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("timeout: want a duration such as \"3s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("timeout: %w", err)
	}
	d.Duration = v
	return nil
}
