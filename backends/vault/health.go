package vault

import (
	"context"
	"fmt"

	"github.com/hashicorp/vault/api"

	"github.com/kmsplugin/kms-plugin/dek"
)

// ReadHealth asks sys/health through c (a client of the root namespace; no token needed) and
// judges the answer as the backend's check does: an error wrapping dek.ErrUnavailable when
// Vault at addr cannot be reached, is not initialized, is sealed or reports no cluster id. The
// answer, when there is one, comes back with the error, so a caller can tell which.
func ReadHealth(ctx context.Context, c *api.Client, addr string) (*api.HealthResponse, error) {
	h, err := c.Sys().HealthWithContext(ctx)
	return h, judgeHealth(addr, h, err)
}

func judgeHealth(addr string, h *api.HealthResponse, err error) error {
	switch {
	case err != nil:
		return classify("vault health check at "+addr, err)
	case !h.Initialized:
		return dek.PublicAs(fmt.Errorf("%w: vault at %s is not initialized", dek.ErrUnavailable, addr), "vault is not initialized")
	case h.Sealed:
		return dek.PublicAs(fmt.Errorf("%w: vault at %s is sealed", dek.ErrUnavailable, addr), "vault is sealed")
	case h.ClusterID == "":
		return fmt.Errorf("%w: vault at %s reports no cluster id", dek.ErrUnavailable, addr)
	}
	return nil
}
