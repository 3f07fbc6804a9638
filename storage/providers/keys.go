package providers

import "fmt"

// Key is one named key of an aescbc, aesgcm or secretbox provider, already base64-decoded.
type Key struct {
	Name   string
	Secret []byte
}

// keyChain builds a provider's link: its prefix, then one link per key named "<name>:", the
// first of which writes (the apiserver's aesPrefixTransformer / secretboxPrefixTransformer).
func keyChain(provider, prefix string, keys []Key, build func([]byte) (Transformer, error)) (Link, error) {
	if len(keys) == 0 {
		return Link{}, fmt.Errorf("%s: at least one key is required", provider)
	}
	links := make([]Link, 0, len(keys))
	for i, k := range keys {
		if k.Name == "" {
			return Link{}, fmt.Errorf("%s: key %d has no name", provider, i)
		}
		t, err := build(k.Secret)
		if err != nil {
			return Link{}, fmt.Errorf("%s key %q: %w", provider, k.Name, err)
		}
		links = append(links, Link{Prefix: k.Name + ":", Transformer: t})
	}
	return Link{Prefix: prefix, Transformer: NewChain(provider+" key", links...)}, nil
}

func checkAESKeySize(key []byte) error {
	switch len(key) {
	case 16, 24, 32:
		return nil
	}
	return fmt.Errorf("key of %d bytes: want 16, 24 or 32", len(key))
}
