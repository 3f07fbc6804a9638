package doctor

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/kmsplugin/kms-plugin/plugin/endpoints"
)

// HealthAddr checks --health-addr with serve's own check (endpoints.CheckAddr binds it as
// serve's endpoints.Listen does): an address that cannot be bound fails, since serve then
// refuses to start. With running, the running plugin is expected to hold it, and its /healthz
// must answer.
func HealthAddr(ctx context.Context, addr string, running bool) Result {
	const check = "health address"
	switch {
	case addr == "":
		return ok(check, `endpoints off (--health-addr ""): no /healthz, /readyz or /metrics`)
	case running:
		return healthz(ctx, addr)
	}
	if err := endpoints.CheckAddr(addr); err != nil {
		return fail(check, endpoints.BindFix, "%v: serve would refuse to start", err)
	}
	if loopback, _ := endpoints.IsLoopback(addr); !loopback {
		return warn(check, "keep the endpoints on loopback (the default "+endpoints.DefaultAddr+"), or restrict the port to the probes and Prometheus",
			"%s can be bound, but listens beyond loopback: /readyz and /metrics have no authentication", addr)
	}
	return ok(check, "%s can be bound", addr)
}

// healthz asks a running plugin's /healthz at addr.
func healthz(ctx context.Context, addr string) Result {
	const check = "health address"
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	url := "http://" + addr + "/healthz"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fail(check, "", "%s: %v", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fail(check, "give doctor the plugin's --health-addr, or see the plugin's log",
			"GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	if resp.StatusCode != http.StatusOK {
		return fail(check, "give doctor the plugin's --health-addr, or see the plugin's log",
			"GET %s: %s %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return ok(check, "%s", fmt.Sprintf("GET %s: %s", url, strings.TrimSpace(string(body))))
}
