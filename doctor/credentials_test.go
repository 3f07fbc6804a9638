package doctor

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/vault/api"

	"github.com/kmsplugin/kms-plugin/backends/vault"
)

// Serve and doctor judge a credential file alike: a file serve refuses, doctor reports as
// FAIL; a file serve accepts, doctor passes (or, for a projected service-account token, warns).
func TestServeAndDoctorJudgeCredentialFilesAlike(t *testing.T) {
	dir, write := fileWriter(t)
	// No Vault answers here: a login that gets past its files fails to connect.
	client, err := api.NewClient(&api.Config{Address: "http://127.0.0.1:1", MaxRetries: 0})
	if err != nil {
		t.Fatal(err)
	}
	roleID := write("role-id", "role", 0o600)
	certFile := write("client.crt", cert, 0o644) // a certificate alone may be readable by all
	for _, c := range []struct {
		name string
		auth vault.Auth
		bad  string // the file at 0644 that serve must refuse
		what string // how serve names it
	}{
		{"approle secret id", vault.AppRole{RoleIDFile: roleID, SecretIDFile: write("secret-id", "sid", 0o644)}, "secret-id", "approle secret id file"},
		{"approle role id", vault.AppRole{RoleIDFile: write("role-id-2", "role", 0o644), SecretIDFile: write("secret-id-2", "sid", 0o600)}, "role-id-2", "approle role id file"},
		{"token file", &vault.TokenFile{Path: write("token", "hvs.x", 0o644)}, "token", "token file"},
		{"jwt file", &vault.JWT{TokenFile: write("jwt", "eyJ.x", 0o644)}, "jwt", "JWT file"},
		{"cert auth key", &vault.Cert{CertFile: certFile, KeyFile: write("client.key", key, 0o644)}, "client.key", "client key file"},
		{"cert auth certificate and key", &vault.Cert{PEMFile: write("client.pem", cert+key, 0o644)}, "client.pem", "client certificate file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, c.bad)
			_, _, err := c.auth.Login(context.Background(), client)
			if err == nil {
				t.Fatal("serve logged in with a credential file of mode 0644")
			}
			for _, want := range []string{c.what, path, "mode 0644", "chmod 600 " + path} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("serve's error %q does not say %q", err, want)
				}
			}
			for _, r := range Files(VaultFiles(vault.Config{Auth: c.auth})) {
				switch {
				case strings.Contains(r.String(), path):
					wantStatus(t, r, Fail, "chmod 600 "+path)
				case r.Status != OK:
					t.Errorf("doctor: %s", r) // the other files are fine, for serve too
				}
			}
		})
	}

	// A projected service-account token: serve takes kubelet's mode, doctor warns about it.
	sa := write("sa-token", "eyJ.sa", 0o644)
	_, _, err = vault.Kubernetes{Role: "kms", JWTFile: sa}.Login(context.Background(), client)
	if err == nil || strings.Contains(err.Error(), "mode") {
		t.Errorf("kubernetes login with a 0644 projected token: %v; want it past the file, failing to connect", err)
	}
	wantStatus(t, only(t, Files(VaultFiles(vault.Config{Auth: vault.Kubernetes{Role: "kms", JWTFile: sa}}))), Warn, "chmod 600")
}

// A credential file owned by another user: refused by serve, FAIL in doctor.
func TestCredentialFileOwnedByAnotherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("changing a file's owner needs root")
	}
	dir := t.TempDir()
	secretID := filepath.Join(dir, "secret-id")
	if err := os.WriteFile(secretID, []byte("sid"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(secretID, 4321, 4321); err != nil {
		t.Fatal(err)
	}
	auth := vault.AppRole{RoleID: "role", SecretIDFile: secretID}
	client, err := api.NewClient(&api.Config{Address: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := auth.Login(context.Background(), client); err == nil || !strings.Contains(err.Error(), "owned by uid 4321") {
		t.Errorf("serve: %v; want a refusal naming the owner", err)
	}
	wantStatus(t, only(t, Files(VaultFiles(vault.Config{Auth: auth}))), Fail, "chown root "+secretID)
}
