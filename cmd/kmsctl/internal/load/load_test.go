package load

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/internal/kmsclient"
	"github.com/kmsplugin/kms-plugin/internal/testing/plugintest"
)

func TestPercentilesOfAKnownDistribution(t *testing.T) {
	samples := make([]time.Duration, 1000)
	for i := range samples {
		samples[i] = time.Duration(i+1) * time.Millisecond
	}
	rand.Shuffle(len(samples), func(i, j int) { samples[i], samples[j] = samples[j], samples[i] })
	got := Summarize(samples)
	want := Latency{Min: 1 * time.Millisecond, Mean: 500500 * time.Microsecond, P50: 500 * time.Millisecond,
		P90: 900 * time.Millisecond, P99: 990 * time.Millisecond, P999: 999 * time.Millisecond, Max: 1000 * time.Millisecond}
	if got != want {
		t.Errorf("1..1000 ms: got %+v, want %+v", got, want)
	}

	// Nearest rank on few samples: the smallest sample with at least q of them at or below it.
	ten := []time.Duration{10, 9, 8, 7, 6, 5, 4, 3, 2, 1}
	if l := Summarize(ten); l.P50 != 5 || l.P90 != 9 || l.P99 != 10 || l.P999 != 10 {
		t.Errorf("1..10: got %+v", l)
	}
	if l := Summarize([]time.Duration{7}); l.P50 != 7 || l.P999 != 7 || l.Min != 7 || l.Max != 7 {
		t.Errorf("one sample: got %+v", l)
	}
	if l := Summarize(nil); l != (Latency{}) {
		t.Errorf("no samples: got %+v", l)
	}
	// A tail of just over 0.1% shows in p99.9 and nowhere else (exactly 0.1% would not: 99.9% of
	// the samples would still be at or below 1 ms).
	tail := make([]time.Duration, 10000)
	for i := range tail {
		tail[i] = time.Millisecond
	}
	for i := range 11 {
		tail[i] = time.Second
	}
	if l := Summarize(tail); l.P99 != time.Millisecond || l.P999 != time.Second {
		t.Errorf("a tail of 11 in 10000: got p99 %v, p99.9 %v", l.P99, l.P999)
	}
}

func TestOptions(t *testing.T) {
	o, err := Options{Count: 10}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if o.Op != OpDecrypt || o.Concurrency != DefaultConcurrency || o.Connections != 1 || o.PayloadSize != 32 || o.Distinct != 300 || o.MixRatio != 0 {
		t.Errorf("defaults: %+v", o)
	}
	if o, _ := (Options{Op: OpMix, Count: 1}).withDefaults(); o.MixRatio != DefaultMixRatio {
		t.Errorf("mix ratio default: %v", o.MixRatio)
	}
	for _, bad := range []Options{
		{}, // neither duration nor count
		{Count: 1, Duration: time.Second},
		{Count: 1, Op: "sign"},
		{Count: 1, Op: OpMix, MixRatio: 1.5},
		{Count: 1, PayloadSize: 4},
		{Count: 1, Concurrency: 2, Connections: 3},
		{Count: -1},
	} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("%+v: accepted", bad)
		}
	}
}

func TestMixSpreadsEncryptsEvenly(t *testing.T) {
	r := &runner{o: Options{Op: OpMix, MixRatio: 0.125}}
	n := 0
	for i := range uint64(800) {
		if r.encrypt(i) {
			n++
			if i%8 != 7 {
				t.Fatalf("request %d is an Encrypt: want every 8th", i)
			}
		}
	}
	if n != 100 {
		t.Errorf("%d Encrypts in 800 at 0.125", n)
	}
}

// recorder is a KMS v2 server that records what it is sent and can fail Decrypts.
type recorder struct {
	kmsapi.UnimplementedKeyManagementServiceServer
	mu          sync.Mutex
	plaintexts  map[string]int
	ciphertexts map[string]int
	failDecrypt bool
}

func (r *recorder) Status(context.Context, *kmsapi.StatusRequest) (*kmsapi.StatusResponse, error) {
	return &kmsapi.StatusResponse{Version: "v2", Healthz: "ok", KeyId: "rec"}, nil
}

func (r *recorder) Encrypt(_ context.Context, req *kmsapi.EncryptRequest) (*kmsapi.EncryptResponse, error) {
	r.mu.Lock()
	r.plaintexts[string(req.Plaintext)]++
	r.mu.Unlock()
	ct := append([]byte("ct:"), req.Plaintext...)
	return &kmsapi.EncryptResponse{Ciphertext: ct, KeyId: "rec", Annotations: map[string][]byte{"rec.example.com": []byte("a")}}, nil
}

func (r *recorder) Decrypt(_ context.Context, req *kmsapi.DecryptRequest) (*kmsapi.DecryptResponse, error) {
	if r.failDecrypt {
		return nil, status.Error(codes.Unavailable, "down")
	}
	if req.KeyId != "rec" || string(req.Annotations["rec.example.com"]) != "a" {
		return nil, status.Error(codes.InvalidArgument, "key id or annotations not those Encrypt returned")
	}
	r.mu.Lock()
	r.ciphertexts[string(req.Ciphertext)]++
	r.mu.Unlock()
	return &kmsapi.DecryptResponse{Plaintext: bytes.TrimPrefix(req.Ciphertext, []byte("ct:"))}, nil
}

func serveRecorder(t *testing.T, failDecrypt bool) (*recorder, string) {
	t.Helper()
	socket := filepath.Join(plugintest.ShortTempDir(t), "rec.sock")
	lis, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{plaintexts: map[string]int{}, ciphertexts: map[string]int{}, failDecrypt: failDecrypt}
	srv := grpc.NewServer()
	kmsapi.RegisterKeyManagementServiceServer(srv, rec)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return rec, socket
}

// measure runs the load against socket alone and returns its result.
func measure(t *testing.T, socket string, o Options) Result {
	t.Helper()
	rep, err := Measure(context.Background(), socket, o, Comparison{})
	if err != nil {
		t.Fatal(err)
	}
	return rep.Target
}

// Every Encrypt's payload is distinct; the Decrypts cycle through the pool with the key id and
// annotations Encrypt returned; failures are counted by code.
func TestPayloadsAndPool(t *testing.T) {
	rec, socket := serveRecorder(t, false)
	res := measure(t, socket, Options{Op: OpEncrypt, Count: 500, Concurrency: 8, Connections: 2, PayloadSize: 48})
	if len(rec.plaintexts) != 500 {
		t.Errorf("%d distinct payloads in 500 Encrypts", len(rec.plaintexts))
	}
	for p := range rec.plaintexts {
		if len(p) != 48 {
			t.Fatalf("payload of %d bytes, want 48", len(p))
		}
	}
	if s, ok := res.Method("Encrypt"); !ok || s.Requests != 500 || s.Errors != 0 || len(res.Methods) != 1 {
		t.Errorf("result: %+v", res)
	}

	clear(rec.plaintexts)
	res = measure(t, socket, Options{Op: OpDecrypt, Count: 400, Concurrency: 4, Distinct: 40})
	if len(rec.plaintexts) != 40 || len(rec.ciphertexts) != 40 {
		t.Errorf("pool of %d envelopes, %d of them decrypted; want 40", len(rec.plaintexts), len(rec.ciphertexts))
	}
	for ct, n := range rec.ciphertexts {
		if n != 10 {
			t.Errorf("envelope %x decrypted %d times, want 10", ct, n)
		}
	}
	if s, ok := res.Method("Decrypt"); !ok || s.Requests != 400 || s.Errors != 0 || s.PerSecond <= 0 {
		t.Errorf("result: %+v", res)
	}

	// A plugin that fails: counted by code, not measured, and the run finishes.
	_, failing := serveRecorder(t, true)
	res = measure(t, failing, Options{Op: OpMix, MixRatio: 0.5, Count: 100, Concurrency: 2, Distinct: 5})
	enc, _ := res.Method("Encrypt")
	dec, _ := res.Method("Decrypt")
	if enc.Requests != 50 || enc.Errors != 0 || dec.Requests != 50 || dec.Errors != 50 || dec.ErrorsBy["Unavailable"] != 50 || res.Errors() != 50 {
		t.Errorf("failing Decrypts: %+v", res)
	}
}

func TestFloorServer(t *testing.T) {
	floor, err := StartTempFloor()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := kmsclient.Dial(floor.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := kmsclient.CheckStatus(context.Background(), conn, 5*time.Second)
	if err != nil || st.Healthz != "ok" || st.KeyID != FloorKeyID {
		t.Fatalf("Status: %+v, %v", st, err)
	}
	client := kmsapi.NewKeyManagementServiceClient(conn)
	enc, err := client.Encrypt(context.Background(), &kmsapi.EncryptRequest{Plaintext: []byte("seed")})
	if err != nil || string(enc.Ciphertext) != "seed" || enc.KeyId != FloorKeyID {
		t.Fatalf("Encrypt: %v, %v", enc, err)
	}
	res := measure(t, floor.Socket, Options{Op: OpMix, Duration: 200 * time.Millisecond, Concurrency: 4})
	if res.Errors() != 0 || len(res.Methods) != 2 || res.Methods[0].PerSecond <= 0 || res.Methods[1].PerSecond <= 0 {
		t.Errorf("floor: %+v", res)
	}
	if res.Elapsed < 200*time.Millisecond {
		t.Errorf("a 200ms run took %v", res.Elapsed)
	}
	floor.Stop()
	if err := floor.Wait(); err != nil {
		t.Errorf("Wait after Stop: %v", err)
	}
}

// Our plugin under load, beside the floor, and the report as JSON and as a table.
func TestMeasurePluginAgainstFloor(t *testing.T) {
	p := plugintest.ServeLocalAES(t, plugintest.Options{})
	// Mix alternates two rounds with a floor in another server (as another process would serve it).
	external, err := StartTempFloor()
	if err != nil {
		t.Fatal(err)
	}
	defer external.Stop()
	comparisons := map[Op]Comparison{OpEncrypt: {Floor: true}, OpDecrypt: {Floor: true}, OpMix: {Floor: true, FloorSocket: external.Socket, Rounds: 2}}
	for _, op := range []Op{OpEncrypt, OpDecrypt, OpMix} {
		c := comparisons[op]
		rep, err := Measure(context.Background(), p.Socket, Options{Op: op, Count: 150, Concurrency: 8, Distinct: 20}, c)
		if err != nil {
			t.Fatal(op, err)
		}
		var buf bytes.Buffer
		if err := rep.WriteJSON(&buf); err != nil {
			t.Fatal(err)
		}
		var got Report
		if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
			t.Fatalf("%s: JSON does not parse: %v\n%s", op, err, buf.String())
		}
		var raw map[string]any
		json.Unmarshal(buf.Bytes(), &raw)
		for _, key := range []string{"options", "load_average", "target", "floor", "ratio_to_floor"} {
			if _, ok := raw[key]; !ok {
				t.Errorf("%s: JSON lacks %q:\n%s", op, key, buf.String())
			}
		}
		want := map[Op]int{OpEncrypt: 1, OpDecrypt: 1, OpMix: 2}[op]
		if len(got.Target.Methods) != want || len(got.Floor.Methods) != want || len(got.Ratios) != want {
			t.Fatalf("%s: %d, %d methods and %d ratios, want %d:\n%s", op, len(got.Target.Methods), len(got.Floor.Methods), len(got.Ratios), want, buf.String())
		}
		wantFloor := "floor"
		if c.FloorSocket != "" {
			wantFloor = "floor " + c.FloorSocket
		}
		if !strings.HasPrefix(got.Target.KeyID, "localaes:") || got.Floor.KeyID != FloorKeyID || got.Floor.Target != wantFloor {
			t.Errorf("%s: key ids %q, %q, floor %q", op, got.Target.KeyID, got.Floor.KeyID, got.Floor.Target)
		}
		floorTotal := 0
		for _, s := range got.Floor.Methods {
			floorTotal += s.Requests
		}
		if rounds := max(c.Rounds, 1); got.Rounds != rounds || floorTotal != 150*rounds {
			t.Errorf("%s: %d rounds, %d requests to the floor; want %d, %d", op, got.Rounds, floorTotal, rounds, 150*rounds)
		}
		total := 0
		for i, s := range got.Target.Methods {
			total += s.Requests
			l := s.Latency
			if s.Errors != 0 || s.PerSecond <= 0 || !(l.Min > 0 && l.Min <= l.P50 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max) {
				t.Errorf("%s %s: %+v", op, s.Method, s)
			}
			r := got.Ratios[i]
			if r.Method != s.Method || r.PerSecond <= 0 || r.P50 <= 0 {
				t.Errorf("%s: ratio %+v", op, r)
			}
		}
		if want := 150 * max(c.Rounds, 1); total != want {
			t.Errorf("%s: %d requests, want %d", op, total, want)
		}
		buf.Reset()
		if err := got.WriteTable(&buf); err != nil {
			t.Fatal(err)
		}
		table := buf.String()
		for _, s := range []string{p.Socket, "floor", "ratio to floor", "p99.9", "ops/s"} {
			if !strings.Contains(table, s) {
				t.Errorf("%s: table lacks %q:\n%s", op, s, table)
			}
		}
		t.Logf("%s:\n%s", op, table)
	}
}
