package serveconfig

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/dek/recovery"
)

func writeRecoveryKeys(t *testing.T) (privPath, pubPath string, key *recovery.PrivateKey) {
	key, err := recovery.Generate(recovery.KEMX25519)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	priv, _ := key.MarshalPrivate()
	privPath, pubPath = filepath.Join(dir, "priv.pem"), filepath.Join(dir, "pub.pem")
	os.WriteFile(privPath, priv, 0o600)
	os.WriteFile(pubPath, key.Public().MarshalPublic(), 0o644)
	return privPath, pubPath, key
}

func TestRecoveryFlags(t *testing.T) {
	privPath, pubPath, key := writeRecoveryKeys(t)
	now := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	const vaultLocal = true
	privText, _ := os.ReadFile(privPath)

	rc, err := RecoveryOptions{}.Recovery("vault", vaultLocal, nil, now)
	if rc != nil || err != nil {
		t.Fatalf("no flags: %v, %v", rc, err)
	}
	rc, err = RecoveryOptions{PublicKey: pubPath}.Recovery("vault", vaultLocal, nil, now)
	if err != nil || rc.Seal.ID() != key.ID() || rc.BreakGlass != nil {
		t.Fatalf("--recovery-public-key: %+v, %v", rc, err)
	}
	rc, err = RecoveryOptions{BreakGlassKey: privPath, BreakGlassUntil: "2026-12-03T21:00:00Z"}.Recovery("localaes", false, nil, now)
	if err != nil || rc.BreakGlass.ID() != key.ID() || !rc.Until.Equal(now.Add(12*time.Hour)) {
		t.Fatalf("break-glass from a file with localaes: %+v, %v", rc, err)
	}
	rc, err = RecoveryOptions{BreakGlassKey: "-", BreakGlassUntil: "2026-12-05T09:00:00Z"}.Recovery("vault", vaultLocal, bytes.NewReader(privText), now)
	if err != nil || rc.BreakGlass.ID() != key.ID() || !rc.Until.Equal(now.Add(48*time.Hour)) {
		t.Fatalf("break-glass from stdin: %+v, %v", rc, err)
	}

	os.Chmod(privPath, 0o644)
	defer os.Chmod(privPath, 0o600)
	for name, tc := range map[string]struct {
		o       RecoveryOptions
		backend string
		opened  bool
		want    string
	}{
		"public key with localaes":     {RecoveryOptions{PublicKey: pubPath}, "localaes", false, "needs --backend vault in local KEK mode"},
		"public key without local KEK": {RecoveryOptions{PublicKey: pubPath}, "vault", false, "needs --backend vault in local KEK mode"},
		"private key as public":        {RecoveryOptions{PublicKey: privPath}, "vault", vaultLocal, "can read or change a secret"},
		"no expiry":                    {RecoveryOptions{BreakGlassKey: pubPath}, "vault", vaultLocal, "needs --break-glass-until"},
		"expiry without key":           {RecoveryOptions{BreakGlassUntil: "1h"}, "vault", vaultLocal, "without --break-glass-recovery-key"},
		"past":                         {RecoveryOptions{BreakGlassKey: privPath, BreakGlassUntil: "2026-12-01T00:00:00Z"}, "vault", vaultLocal, "is past"},
		"too long":                     {RecoveryOptions{BreakGlassKey: privPath, BreakGlassUntil: "2026-12-10T09:01:00Z"}, "vault", vaultLocal, "at most 168h"},
		// A duration would be counted again from each restart: a crash loop never ends it.
		"duration":              {RecoveryOptions{BreakGlassKey: privPath, BreakGlassUntil: "12h"}, "vault", vaultLocal, "is a duration: give the time break-glass mode ends, in RFC 3339 (e.g. $(date -u -d +12hours +%FT%TZ))"},
		"bad time":              {RecoveryOptions{BreakGlassKey: privPath, BreakGlassUntil: "tomorrow"}, "vault", vaultLocal, "RFC 3339"},
		"readable by others":    {RecoveryOptions{BreakGlassKey: privPath, BreakGlassUntil: "2026-12-03T10:00:00Z"}, "vault", vaultLocal, "chmod 600"},
		"public key as private": {RecoveryOptions{BreakGlassKey: pubPath, BreakGlassUntil: "2026-12-03T10:00:00Z"}, "vault", vaultLocal, ""},
	} {
		t.Run(name, func(t *testing.T) {
			if name == "public key as private" {
				os.Chmod(pubPath, 0o600)
				defer os.Chmod(pubPath, 0o644)
			}
			_, err := tc.o.Recovery(tc.backend, tc.opened, bytes.NewReader(nil), now)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to say %q", err, tc.want)
			}
		})
	}
}
