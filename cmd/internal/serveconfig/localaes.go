package serveconfig

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/pflag"

	"github.com/kmsplugin/kms-plugin/backends/localaes"
)

// DefaultKeyFile is where the embedded default keeps its key. Only at this default path does
// the plugin create a missing key file: an operator who names a file and mounts it wrong must
// get an error, not a new key that cannot read the cluster's data.
var DefaultKeyFile = "/var/lib/kms-plugin/keys.yaml"

type LocalAES struct{ KeyFile string }

func (*LocalAES) Name() string { return "localaes" }

func (b *LocalAES) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&b.KeyFile, "localaes-key-file", DefaultKeyFile, "localaes: YAML key file (keys: [{name, secret}]), mode 0600; the first key wraps, all unwrap; SIGHUP reloads it")
}

// CreatesKeyFile reports whether Open would create the key file: only the default one, and only
// when it is missing.
func (b *LocalAES) CreatesKeyFile(fs *pflag.FlagSet) bool {
	_, err := os.Stat(b.KeyFile)
	return errors.Is(err, os.ErrNotExist) && !fs.Changed("localaes-key-file")
}

// Open opens the key file. Its calls are AES in memory: neither bounded nor served from memory.
func (b *LocalAES) Open(_ context.Context, fs *pflag.FlagSet, log *slog.Logger) (Opened, error) {
	if b.CreatesKeyFile(fs) {
		// CreateKeyFile looks again under the key file's lock and creates it only if it is
		// still missing: of plugins starting at once, one creates the file and the others find
		// it. Each then loads what the file holds, so every plugin wraps with a key in it.
		waiting := func(msg string) { log.Warn(msg) }
		id, created, err := localaes.Editor{Waiting: waiting}.CreateKeyFile(b.KeyFile)
		if err != nil {
			return Opened{}, fmt.Errorf("creating the default key file: %w", err)
		}
		if created {
			log.Warn("##### NO KEY FILE: CREATED A NEW KEY. Back up this file: without it nothing encrypted with it can be read again. For production, create and distribute keys with 'kmsctl keygen' and pass --localaes-key-file. #####",
				"key_file", b.KeyFile, "key_id", id)
		}
	}
	kek, err := localaes.Open(b.KeyFile)
	if err != nil {
		return Opened{}, err
	}
	return Opened{KEK: kek}, nil
}
