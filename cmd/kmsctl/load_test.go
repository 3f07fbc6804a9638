package main

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/cmd/kmsctl/internal/load"
	"github.com/kmsplugin/kms-plugin/internal/kmsclient"
	"github.com/kmsplugin/kms-plugin/internal/testing/plugintest"
)

// kmsctl load against the real plugin, with the floor beside it, as JSON and as a table; and
// kmsctl load --floor serving the do-nothing server until stopped.
func TestLoadCommand(t *testing.T) {
	p := plugintest.ServeLocalAES(t, plugintest.Options{})
	out := runKmsctl(t, "load", "--socket", "unix://"+p.Socket, "--op", "mix", "--mix-ratio", "0.5", "--count", "200",
		"--concurrency", "4", "--connections", "2", "--distinct", "10", "--json", "--compare-floor")
	var rep load.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("--json output does not parse: %v\n%s", err, out)
	}
	if rep.Options.Count != 200 || rep.Options.Duration != 0 || rep.Options.Connections != 2 || rep.Floor == nil ||
		len(rep.Ratios) != 2 || rep.Target.Errors() != 0 || len(rep.Target.Methods) != 2 {
		t.Fatalf("report: %s", out)
	}

	out = runKmsctl(t, "load", "--socket", p.Socket, "--op", "encrypt", "--duration", "200ms", "--concurrency", "2")
	if !strings.Contains(out, "Encrypt") || !strings.Contains(out, "p99.9") || strings.Contains(out, "ratio to floor") {
		t.Fatalf("table:\n%s", out)
	}

	if _, err := runCLI("load", "--socket", p.Socket, "--op", "sign", "--count", "1"); err == nil {
		t.Error("--op sign accepted")
	}

	socket := filepath.Join(plugintest.ShortTempDir(t), "floor.sock")
	ctx, cancel := context.WithCancel(context.Background())
	root := newRootCommand()
	root.SetArgs([]string{"load", "--floor", "--socket", socket})
	root.SetErr(&bytes.Buffer{})
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	conn, err := kmsclient.Dial(socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st, err := kmsclient.CheckStatus(context.Background(), conn, time.Second)
		if err == nil && st.KeyID == load.FloorKeyID {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("--floor not serving: %v", err)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("--floor: %v", err)
	}
}
