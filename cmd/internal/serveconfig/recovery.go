package serveconfig

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/pflag"

	"github.com/kmsplugin/kms-plugin/dek/recovery"
	"github.com/kmsplugin/kms-plugin/internal/privatefile"
	"github.com/kmsplugin/kms-plugin/plugin"
)

// MaxBreakGlass bounds --break-glass-until: break-glass mode is for getting a cluster back
// and rewritten to a new key, which takes hours, not a way to run.
const MaxBreakGlass = 7 * 24 * time.Hour

// RecoveryOptions are the flags of the offline recovery key (docs/disaster-recovery.md).
type RecoveryOptions struct {
	PublicKey       string // --recovery-public-key
	BreakGlassKey   string // --break-glass-recovery-key: a file, or - for stdin
	BreakGlassUntil string // --break-glass-until: an RFC 3339 time, never a duration
}

func (o *RecoveryOptions) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.PublicKey, "recovery-public-key", "", "recovery public key file (kmsctl recovery-key): seal each local KEK to it, so that its private key reads every envelope without Vault (vault backend, local KEK mode; envelope format v3). Off by default: read docs/security.md first")
	fs.StringVar(&o.BreakGlassKey, "break-glass-recovery-key", "", "BREAK-GLASS: recovery private key file (mode 0600), or - for stdin: serve reads of envelopes sealed to it without the backend, until --break-glass-until; writes go to the backend")
	fs.StringVar(&o.BreakGlassUntil, "break-glass-until", "", "end of break-glass mode (required with --break-glass-recovery-key): an RFC 3339 time at most 168h ahead, e.g. $(date -u -d +12hours +%FT%TZ); not a duration, which every restart would push forward")
	for _, name := range []string{"recovery-public-key", "break-glass-recovery-key", "break-glass-until"} {
		fs.SetAnnotation(name, GroupAnnotation, []string{"recovery"})
	}
}

// Recovery reads the recovery flags into the serving stack's RecoveryConfig (nil: none) for
// the backend, which is in local KEK mode or not (serve asks the opened backend, doctor its
// flags). The private key's bytes are cleared once parsed; crypto/hpke's key
// object itself cannot be cleared (docs/security.md).
func (o RecoveryOptions) Recovery(backend string, localKEK bool, stdin io.Reader, now time.Time) (*plugin.RecoveryConfig, error) {
	if o.PublicKey == "" && o.BreakGlassKey == "" && o.BreakGlassUntil == "" {
		return nil, nil
	}
	rc := &plugin.RecoveryConfig{}
	if o.PublicKey != "" {
		if backend != "vault" || !localKEK {
			return nil, errors.New("--recovery-public-key needs --backend vault in local KEK mode (--vault-local-kek, the default): only a local KEK is sealed to the recovery key")
		}
		text, err := privatefile.ReadAs(o.PublicKey, privatefile.Public)
		if err != nil {
			return nil, fmt.Errorf("--recovery-public-key: %w", err)
		}
		if rc.Seal, err = recovery.ParsePublic(text); err != nil {
			return nil, fmt.Errorf("--recovery-public-key %s: %w", o.PublicKey, err)
		}
	}
	switch {
	case o.BreakGlassKey == "" && o.BreakGlassUntil != "":
		return nil, errors.New("--break-glass-until without --break-glass-recovery-key")
	case o.BreakGlassKey == "":
		return rc, nil
	case o.BreakGlassUntil == "":
		return nil, errors.New("--break-glass-recovery-key needs --break-glass-until: break-glass mode must end (at most 168h from now)")
	}
	until, err := parseUntil(o.BreakGlassUntil, now)
	if err != nil {
		return nil, err
	}
	text, err := privatefile.ReadOrStdin(o.BreakGlassKey, stdin)
	defer clear(text)
	if err != nil {
		return nil, fmt.Errorf("--break-glass-recovery-key: %w", err)
	}
	if rc.BreakGlass, err = recovery.ParsePrivate(text); err != nil {
		return nil, fmt.Errorf("--break-glass-recovery-key: %w", err)
	}
	rc.Until = until
	return rc, nil
}

// parseUntil reads --break-glass-until: a time in the future and at most MaxBreakGlass away.
// Not a duration: a restarted plugin (a static pod, Restart=always) would count it again from
// its own start, and a crash loop would move the end forward for ever.
func parseUntil(s string, now time.Time) (time.Time, error) {
	until, err := time.Parse(time.RFC3339, s)
	if err != nil {
		if _, derr := time.ParseDuration(s); derr == nil {
			return time.Time{}, fmt.Errorf("--break-glass-until %q is a duration: give the time break-glass mode ends, in RFC 3339 (e.g. $(date -u -d +12hours +%%FT%%TZ)), so that a restart does not move it", s)
		}
		return time.Time{}, fmt.Errorf("--break-glass-until %q: want an RFC 3339 time, e.g. 2026-12-04T18:00:00Z (date -u -d +12hours +%%FT%%TZ)", s)
	}
	switch left := until.Sub(now); {
	case left <= 0:
		return time.Time{}, fmt.Errorf("--break-glass-until %s is past", until.UTC().Format(time.RFC3339))
	case left > MaxBreakGlass:
		return time.Time{}, fmt.Errorf("--break-glass-until %s is %s away: at most %s (rewrite to the new key meanwhile, then leave break-glass mode)", until.UTC().Format(time.RFC3339), left.Round(time.Minute), MaxBreakGlass)
	}
	return until, nil
}
