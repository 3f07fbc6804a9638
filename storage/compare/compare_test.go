package compare_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/internal/kmsclient"
	"github.com/kmsplugin/kms-plugin/internal/testing/plugintest"
	"github.com/kmsplugin/kms-plugin/storage/compare"
)

// Every provider and the plugin's RPCs get a row for each size, over a real plugin socket;
// sizes above the plugin's limit are reported as skipped, not as failures.
func TestRunMeasuresEveryProvider(t *testing.T) {
	socket := plugintest.ServeLocalAES(t, plugintest.Options{}).Socket
	conn, err := kmsclient.Dial("unix://" + socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	rows, err := compare.Run(context.Background(), compare.Options{
		Sizes: []int{1024, 8192}, Duration: 10 * time.Millisecond, Plugin: kmsapi.NewKeyManagementServiceClient(conn),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2*(5*2+2) {
		t.Fatalf("%d rows", len(rows))
	}
	for _, r := range rows {
		skipped := r.Provider == "plugin RPC" && r.Size > dek.MaxPlaintextSize
		if skipped != (r.Skipped != "") || !skipped && (r.Ops == 0 || r.P50 <= 0 || r.P99 < r.P50) {
			t.Errorf("row %+v", r)
		}
	}
	var out bytes.Buffer
	if err := compare.Print(&out, rows); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"identity", "aescbc", "aesgcm", "secretbox", "kms v2", "plugin RPC", "8 KiB", "at most 4096 bytes"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}

func TestRunNeedsOptions(t *testing.T) {
	if _, err := compare.Run(context.Background(), compare.Options{}); err == nil {
		t.Fatal("no error")
	}
}
