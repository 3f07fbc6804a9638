package serveconfig

import (
	"context"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/spf13/pflag"

	"github.com/kmsplugin/kms-plugin/backends/localaes"
)

// Plugins starting at once on the default path (missing file, flag not given) end with one key
// file, and every plugin wraps with a key that is in it.
func TestDefaultKeyFileConcurrentFirstStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kms-plugin", "keys.yaml")
	const n = 20
	using := make([]string, n)
	var wg sync.WaitGroup
	for i := range using {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
			b := &LocalAES{}
			b.AddFlags(fs)
			b.KeyFile = path // the default as far as the flag set knows: not Changed
			opened, err := b.Open(context.Background(), fs, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Error(err)
				return
			}
			using[i] = opened.KEK.CurrentID()
		}()
	}
	wg.Wait()
	final, err := localaes.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	ids := final.KeyIDs()
	if len(ids) != 1 {
		t.Errorf("the key file holds %d keys, want 1", len(ids))
	}
	for i, id := range using {
		if !slices.Contains(ids, id) {
			t.Errorf("plugin %d wraps with %s, which is not in the key file %v", i, id, ids)
		}
	}
}
