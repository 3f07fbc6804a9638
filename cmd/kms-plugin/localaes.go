package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/pflag"

	"github.com/kmsplugin/kms-plugin/backends/localaes"
	"github.com/kmsplugin/kms-plugin/dek"
)

// defaultKeyFile is where the embedded default keeps its key. Only at this default path does
// the plugin create a missing key file: an operator who names a file and mounts it wrong must
// get an error, not a new key that cannot read the cluster's data.
var defaultKeyFile = "/var/lib/kms-plugin/keys.yaml"

type localAESBackend struct{ keyFile string }

func (*localAESBackend) name() string { return "localaes" }

func (b *localAESBackend) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&b.keyFile, "localaes-key-file", defaultKeyFile, "localaes: YAML key file (keys: [{name, secret}]), mode 0600; the first key wraps, all unwrap; SIGHUP reloads it")
}

func (b *localAESBackend) open(_ context.Context, fs *pflag.FlagSet, log *slog.Logger) (dek.KEK, error) {
	if _, err := os.Stat(b.keyFile); errors.Is(err, os.ErrNotExist) && !fs.Changed("localaes-key-file") {
		id, err := localaes.AddKey(b.keyFile, "", true)
		if err != nil {
			return nil, fmt.Errorf("creating the default key file: %w", err)
		}
		log.Warn("##### NO KEY FILE: CREATED A NEW KEY. Back up this file: without it nothing encrypted with it can be read again. For production, create and distribute keys with 'kms-plugin keygen' and pass --localaes-key-file. #####",
			"key_file", b.keyFile, "key_id", id)
	}
	return localaes.Open(b.keyFile)
}
