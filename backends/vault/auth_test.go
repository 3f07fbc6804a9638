package vault

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const loginAnswer = `{"auth":{"client_token":"hvs.login","lease_duration":60,"renewable":true}}`

func TestLoginRequests(t *testing.T) {
	dir := t.TempDir()
	jwtFile, roleFile, secretFile := filepath.Join(dir, "jwt"), filepath.Join(dir, "role"), filepath.Join(dir, "secret")
	writeFile(t, jwtFile, "eyJ.jwt.one")
	writeFile(t, roleFile, "role-id-1")
	writeFile(t, secretFile, "secret-id-1")
	fv := &fakeVault{handler: func(string, map[string]any, string) (int, string) { return 200, loginAnswer }}
	srv := httptest.NewServer(fv)
	defer srv.Close()
	client := testAPIClient(t, srv.URL)
	ctx := context.Background()

	k8s := Kubernetes{Mount: "k8s-prod", Role: "kms", JWTFile: jwtFile}
	token, lease, err := k8s.Login(ctx, client)
	if err != nil || token != "hvs.login" || lease.LeaseDuration != 60 || !lease.Renewable {
		t.Fatalf("kubernetes Login = %q, %+v, %v", token, lease, err)
	}
	r := fv.last("/v1/auth/k8s-prod/login")
	if r.method != http.MethodPut && r.method != http.MethodPost {
		t.Errorf("kubernetes login method %s", r.method)
	}
	if r.body["role"] != "kms" || r.body["jwt"] != "eyJ.jwt.one" || len(r.body) != 2 {
		t.Errorf("kubernetes login body %v: want role and jwt only", r.body)
	}
	if r.header.Get("X-Vault-Token") != "" {
		t.Error("a login request carried a token")
	}
	writeFile(t, jwtFile, "eyJ.jwt.two") // kubelet rotated the projected token
	if _, _, err := k8s.Login(ctx, client); err != nil {
		t.Fatal(err)
	}
	if got := fv.last("/v1/auth/k8s-prod/login").body["jwt"]; got != "eyJ.jwt.two" {
		t.Errorf("second login sent jwt %v: the file must be re-read at every login", got)
	}

	ar := AppRole{RoleIDFile: roleFile, SecretIDFile: secretFile}
	if _, _, err := ar.Login(ctx, client); err != nil {
		t.Fatal(err)
	}
	if b := fv.last("/v1/auth/approle/login").body; b["role_id"] != "role-id-1" || b["secret_id"] != "secret-id-1" {
		t.Errorf("approle login body %v", b)
	}
	writeFile(t, secretFile, "secret-id-2")
	if _, _, err := ar.Login(ctx, client); err != nil {
		t.Fatal(err)
	}
	if b := fv.last("/v1/auth/approle/login").body; b["secret_id"] != "secret-id-2" {
		t.Errorf("approle second login sent secret id %v: the file must be re-read", b["secret_id"])
	}

	os.Remove(jwtFile)
	if _, _, err := k8s.Login(ctx, client); err == nil || strings.Contains(err.Error(), "eyJ") {
		t.Errorf("missing JWT file: err = %v", err)
	}
	if _, _, err := (Kubernetes{JWTFile: jwtFile}).Login(ctx, client); err == nil {
		t.Error("kubernetes login without a role succeeded")
	}
}
