// Package load drives a KMS v2 plugin's unix socket (this plugin or any other vendor's) with
// Encrypt, Decrypt or a mix of both, at a given concurrency, for a duration or a count of
// requests, and measures throughput and latency (exact percentiles from every sample). It also
// serves the floor: a do-nothing KMS v2 server, so that each figure can be given as a ratio to
// what gRPC over a unix socket costs on the same machine in the same run.
//
// It lives in internal/, not under plugin/ nor storage/: it is a client of the KMS v2 API, not
// part of what serves it (the serving binary must not carry it, and the floor must share no code
// with our plugin, or it would not be a floor), and it is not one of the apiserver's storage
// formats. It imports only the KMS v2 API, gRPC and internal/kmsclient (the one socket dialer).
package load

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/internal/kmsclient"
)

// Op is what the load sends.
type Op string

const (
	OpEncrypt Op = "encrypt"
	OpDecrypt Op = "decrypt"
	OpMix     Op = "mix" // Encrypts and Decrypts in the ratio Options.MixRatio
)

// Defaults of Options' zero fields.
const (
	DefaultConcurrency = 16
	DefaultConnections = 1
	DefaultPayloadSize = 32 // a kube-apiserver DEK seed
	DefaultDistinct    = 300
	DefaultMixRatio    = 0.125 // 1 Encrypt to 7 Decrypts
	DefaultTimeout     = kmsclient.APIServerTimeout
	MaxPayloadSize     = 1 << 20
)

// Options say what load to send. Exactly one of Duration and Count is set.
type Options struct {
	Op          Op            `json:"op"`
	MixRatio    float64       `json:"mix_ratio,omitempty"` // fraction of Encrypts with OpMix
	Concurrency int           `json:"concurrency"`         // requests in flight at once
	Connections int           `json:"connections"`         // gRPC connections they share
	Duration    time.Duration `json:"duration_ns,omitempty"`
	Count       int           `json:"count,omitempty"` // requests in all
	PayloadSize int           `json:"payload_size"`    // bytes of each Encrypt's plaintext
	Distinct    int           `json:"distinct"`        // envelopes Decrypt cycles through
	Timeout     time.Duration `json:"timeout_ns"`      // of one request
}

// withDefaults fills zero fields and checks the rest.
func (o Options) withDefaults() (Options, error) {
	if o.Op == "" {
		o.Op = OpDecrypt
	}
	if o.Op != OpEncrypt && o.Op != OpDecrypt && o.Op != OpMix {
		return o, fmt.Errorf("op %q: want encrypt, decrypt or mix", o.Op)
	}
	if o.Op == OpMix && o.MixRatio == 0 {
		o.MixRatio = DefaultMixRatio
	}
	if o.Op != OpMix {
		o.MixRatio = 0
	}
	if o.MixRatio < 0 || o.MixRatio > 1 {
		return o, fmt.Errorf("mix ratio %v: want the fraction of Encrypts, 0 to 1", o.MixRatio)
	}
	if o.Concurrency == 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.Connections == 0 {
		o.Connections = DefaultConnections
	}
	if o.PayloadSize == 0 {
		o.PayloadSize = DefaultPayloadSize
	}
	if o.Distinct == 0 {
		o.Distinct = DefaultDistinct
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	switch {
	case o.Concurrency < 0 || o.Connections < 0 || o.Distinct < 0 || o.Count < 0 || o.Duration < 0 || o.Timeout < 0:
		return o, errors.New("concurrency, connections, distinct, count, duration and timeout must not be negative")
	case o.Connections > o.Concurrency:
		return o, fmt.Errorf("%d connections for %d concurrent requests: some would stay idle", o.Connections, o.Concurrency)
	case (o.Duration == 0) == (o.Count == 0):
		return o, errors.New("give either a duration or a count of requests")
	case o.PayloadSize < 8 || o.PayloadSize > MaxPayloadSize:
		return o, fmt.Errorf("payload size %d: want 8 bytes (room for a counter that makes each payload distinct) to %d", o.PayloadSize, MaxPayloadSize)
	}
	return o, nil
}

// Latency is the distribution of successful requests' latencies; percentiles are exact
// (nearest rank over every sample).
type Latency struct {
	Min  time.Duration `json:"min_ns"`
	Mean time.Duration `json:"mean_ns"`
	P50  time.Duration `json:"p50_ns"`
	P90  time.Duration `json:"p90_ns"`
	P99  time.Duration `json:"p99_ns"`
	P999 time.Duration `json:"p99_9_ns"`
	Max  time.Duration `json:"max_ns"`
}

// Stats are one method's figures.
type Stats struct {
	Method    string         `json:"method"` // Encrypt, Decrypt
	Requests  int            `json:"requests"`
	Errors    int            `json:"errors"`
	ErrorsBy  map[string]int `json:"errors_by_code,omitempty"` // gRPC code, or Mismatch for a wrong plaintext
	PerSecond float64        `json:"ops_per_second"`           // successful requests per second of the run
	Latency   Latency        `json:"latency"`
}

// Result is one run against one socket.
type Result struct {
	Target  string        `json:"target"` // the socket, or "floor"
	KeyID   string        `json:"key_id"` // what Status reported
	Elapsed time.Duration `json:"elapsed_ns"`
	Methods []Stats       `json:"methods"` // Encrypt, then Decrypt; those sent
}

// Method returns the stats of the named method, if it was sent.
func (r Result) Method(name string) (Stats, bool) {
	for _, s := range r.Methods {
		if s.Method == name {
			return s, true
		}
	}
	return Stats{}, false
}

// Errors is the number of failed requests of every method.
func (r Result) Errors() int {
	n := 0
	for _, s := range r.Methods {
		n += s.Errors
	}
	return n
}

// envelope is one Encrypt's answer, kept to be decrypted.
type envelope struct {
	plaintext   []byte
	ciphertext  []byte
	keyID       string
	annotations map[string][]byte
}

// samples are the raw figures of one or more runs against one socket.
type samples struct {
	keyID   string
	elapsed time.Duration
	sent    [2]bool // Encrypt, Decrypt
	latency [2][]time.Duration
	errs    [2]map[string]int // failures by code
}

// run sends the load once to the plugin at socket (a path or unix:///path) and adds its
// figures to s. The plugin must answer Status as a KMS v2 plugin first. With OpDecrypt and OpMix
// it first encrypts Distinct payloads (not measured) and the Decrypts cycle through them; each
// Decrypt's plaintext is checked. Failed requests are counted, not measured, and do not stop
// the run.
func (s *samples) run(ctx context.Context, socket string, o Options) error {
	clients := make([]kmsapi.KeyManagementServiceClient, o.Connections)
	for i := range clients {
		conn, err := kmsclient.Dial(socket)
		if err != nil {
			return err
		}
		defer conn.Close()
		st, err := kmsclient.CheckStatus(ctx, conn, o.Timeout) // also opens the connection
		if err != nil {
			return err
		}
		s.keyID = st.KeyID
		clients[i] = kmsapi.NewKeyManagementServiceClient(conn)
	}
	r := &runner{o: o, clients: clients, nonce: make([]byte, 8)}
	rand.Read(r.nonce)
	if o.Op != OpEncrypt {
		if err := r.fillPool(ctx); err != nil {
			return err
		}
	}
	workers := make([]*worker, o.Concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	r.deadline = start.Add(o.Duration)
	for i := range workers {
		w := &worker{r: r, client: clients[i%len(clients)], buf: make([]byte, o.PayloadSize), errs: [2]map[string]int{{}, {}}}
		copy(w.buf[8:], r.nonce)
		workers[i] = w
		wg.Go(func() { w.run(ctx) })
	}
	wg.Wait()
	s.elapsed += time.Since(start)
	if err := ctx.Err(); err != nil {
		return err
	}
	for m := range 2 {
		if s.errs[m] == nil {
			s.errs[m] = map[string]int{}
		}
		for _, w := range workers {
			s.latency[m] = append(s.latency[m], w.samples[m]...)
			s.sent[m] = s.sent[m] || w.sent[m]
			for code, n := range w.errs[m] {
				s.errs[m][code] += n
			}
		}
	}
	return nil
}

// result summarizes the samples.
func (s *samples) result(target string) Result {
	res := Result{Target: target, KeyID: s.keyID, Elapsed: s.elapsed}
	for m, name := range []string{"Encrypt", "Decrypt"} {
		if !s.sent[m] {
			continue
		}
		st := Stats{Method: name, Requests: len(s.latency[m]), Latency: Summarize(s.latency[m])}
		for _, n := range s.errs[m] {
			st.Errors += n
		}
		st.Requests += st.Errors
		if st.Errors > 0 {
			st.ErrorsBy = s.errs[m]
		}
		st.PerSecond = float64(len(s.latency[m])) / s.elapsed.Seconds()
		res.Methods = append(res.Methods, st)
	}
	return res
}

// runner is the state the workers share.
type runner struct {
	o        Options
	clients  []kmsapi.KeyManagementServiceClient
	nonce    []byte // makes this run's payloads differ from another run's
	pool     []envelope
	next     atomic.Uint64 // the next request's number
	deadline time.Time
}

// fillPool encrypts Distinct payloads for the Decrypts, with Concurrency requests at once.
func (r *runner) fillPool(ctx context.Context) error {
	r.pool = make([]envelope, r.o.Distinct)
	var next atomic.Int64
	errs := make(chan error, r.o.Concurrency)
	var wg sync.WaitGroup
	for i := 0; i < r.o.Concurrency && i < r.o.Distinct; i++ {
		client := r.clients[i%len(r.clients)]
		wg.Go(func() {
			for {
				n := int(next.Add(1) - 1)
				if n >= len(r.pool) {
					return
				}
				plain := make([]byte, r.o.PayloadSize)
				binary.BigEndian.PutUint64(plain, uint64(n)|1<<63) // never a measured Encrypt's payload
				copy(plain[8:], r.nonce)
				rctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
				resp, err := client.Encrypt(rctx, &kmsapi.EncryptRequest{Plaintext: plain, Uid: fmt.Sprintf("load-pool-%d", n)})
				cancel()
				if err != nil {
					errs <- fmt.Errorf("encrypting the pool of %d envelopes for Decrypt: %w", r.o.Distinct, err)
					return
				}
				r.pool[n] = envelope{plaintext: plain, ciphertext: resp.Ciphertext, keyID: resp.KeyId, annotations: resp.Annotations}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs // nil when none failed
}

// encrypt says whether request n is an Encrypt.
func (r *runner) encrypt(n uint64) bool {
	switch r.o.Op {
	case OpEncrypt:
		return true
	case OpDecrypt:
		return false
	}
	// The n-th request is an Encrypt when n*ratio crosses an integer: evenly spread.
	return uint64(float64(n+1)*r.o.MixRatio) != uint64(float64(n)*r.o.MixRatio)
}

// take returns the next request's number, and false once the run is over.
func (r *runner) take() (uint64, bool) {
	if r.o.Count > 0 {
		n := r.next.Add(1) - 1
		return n, n < uint64(r.o.Count)
	}
	return r.next.Add(1) - 1, time.Now().Before(r.deadline)
}

// worker sends one request at a time and keeps its own samples.
type worker struct {
	r       *runner
	client  kmsapi.KeyManagementServiceClient
	buf     []byte // Encrypt's plaintext: gRPC has marshalled it when the call returns
	samples [2][]time.Duration
	sent    [2]bool
	errs    [2]map[string]int // failures by code
}

func (w *worker) run(ctx context.Context) {
	r := w.r
	for ctx.Err() == nil {
		n, ok := r.take()
		if !ok {
			return
		}
		m := 1 // Decrypt
		if r.encrypt(n) {
			m = 0
		}
		w.sent[m] = true
		rctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
		var err error
		start := time.Now()
		if m == 0 {
			binary.BigEndian.PutUint64(w.buf, n) // distinct from every other request of the run
			_, err = w.client.Encrypt(rctx, &kmsapi.EncryptRequest{Plaintext: w.buf, Uid: "load"})
		} else {
			e := &r.pool[n%uint64(len(r.pool))]
			var resp *kmsapi.DecryptResponse
			resp, err = w.client.Decrypt(rctx, &kmsapi.DecryptRequest{Ciphertext: e.ciphertext, KeyId: e.keyID, Annotations: e.annotations, Uid: "load"})
			if err == nil && !bytes.Equal(resp.Plaintext, e.plaintext) {
				err = errMismatch
			}
		}
		elapsed := time.Since(start)
		cancel()
		if err != nil {
			w.errs[m][errorCode(err)]++
			continue
		}
		w.samples[m] = append(w.samples[m], elapsed)
	}
}

var errMismatch = errors.New("decrypt returned another plaintext")

func errorCode(err error) string {
	if errors.Is(err, errMismatch) {
		return "Mismatch"
	}
	return status.Code(err).String()
}

// Summarize returns the distribution of samples (sorted in place).
func Summarize(samples []time.Duration) Latency {
	if len(samples) == 0 {
		return Latency{}
	}
	slices.Sort(samples)
	var sum time.Duration
	for _, s := range samples {
		sum += s
	}
	return Latency{
		Min: samples[0], Max: samples[len(samples)-1], Mean: sum / time.Duration(len(samples)),
		P50: Percentile(samples, 0.50), P90: Percentile(samples, 0.90),
		P99: Percentile(samples, 0.99), P999: Percentile(samples, 0.999),
	}
}

// Percentile is the nearest-rank q-quantile of sorted samples: the smallest sample that at
// least a fraction q of the samples are less than or equal to.
func Percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	// The rank is ceil(q*n); the epsilon keeps floating-point error in q (0.999*1000 is
	// 999.0000000000001) from moving it up by one.
	rank := int(math.Ceil(q*float64(len(sorted)) - 1e-9))
	rank = max(1, min(rank, len(sorted)))
	return sorted[rank-1]
}
