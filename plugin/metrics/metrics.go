// Package metrics is the plugin's Prometheus instrumentation: gRPC requests, backend calls
// (through a dek.KEK decorator, so every backend gets them), the backend's health and key id,
// and the call limiter. It has its own registry, never the global one; docs/metrics.md lists
// every metric.
package metrics

import (
	"net/http"
	"sync"
	"time"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/dek/cache"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const namespace = "kms_plugin"

// latencyBuckets span a local AES wrap (microseconds) to a Vault call near the apiserver's
// 3-second timeout.
var latencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}

// Metrics holds the collectors of one plugin process.
type Metrics struct {
	reg     *prometheus.Registry
	wrapped prometheus.Registerer // adds the backend label

	requests        *prometheus.CounterVec
	requestDuration *prometheus.HistogramVec
	inFlight        *prometheus.GaugeVec
	backendCalls    *prometheus.CounterVec
	backendDuration *prometheus.HistogramVec
	keyInfo         *prometheus.GaugeVec
	rotations       prometheus.Counter
	healthy         prometheus.Gauge

	mu    sync.Mutex
	keyID string // the key id keyInfo reports
}

// New returns the metrics of a plugin serving with the named backend (localaes, vault), which
// every kms_plugin_ metric carries as its backend label. version goes into kms_plugin_build_info.
func New(backend, version string) *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	w := prometheus.WrapRegistererWith(prometheus.Labels{"backend": backend}, reg)
	m := &Metrics{
		reg:     reg,
		wrapped: w,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "requests_total",
			Help: "gRPC requests finished, by API (v2, v1beta1), method and gRPC status code.",
		}, []string{"api", "method", "code"}),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "request_duration_seconds",
			Help:    "Time to answer a gRPC request, by API and method.",
			Buckets: latencyBuckets,
		}, []string{"api", "method"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "requests_in_flight",
			Help: "gRPC requests being served now, by API and method.",
		}, []string{"api", "method"}),
		backendCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "backend_calls_total",
			Help: "Backend calls finished, by operation (wrap, unwrap, check) and result (ok or the kind of failure).",
		}, []string{"operation", "result"}),
		backendDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "backend_call_duration_seconds",
			Help:    "Time of one backend call (a Vault round trip, a local AES wrap), by operation.",
			Buckets: latencyBuckets,
		}, []string{"operation"}),
		keyInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "key_info",
			Help: "The key id that Status reports (value always 1); absent until the backend has been healthy once.",
		}, []string{"key_id"}),
		rotations: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "key_rotations_total",
			Help: "Changes of the reported key id seen since start.",
		}),
		healthy: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "backend_healthy",
			Help: "1 while the backend is usable (the health check of Status, /readyz and gRPC health), else 0.",
		}),
	}
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help:        "The plugin's version (value always 1).",
		ConstLabels: prometheus.Labels{"version": version},
	})
	buildInfo.Set(1)
	w.MustRegister(m.requests, m.requestDuration, m.inFlight, m.backendCalls, m.backendDuration,
		m.keyInfo, m.rotations, m.healthy, buildInfo)
	return m
}

// Handler serves the metrics in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg, MaxRequestsInFlight: 4, Timeout: 10 * time.Second})
}

// ObserveBackend records the state Status reports, after every health refresh: whether the
// backend is usable, the key id, and a rotation when the key id changed.
func (m *Metrics) ObserveBackend(keyID string, unhealthy error) {
	if unhealthy == nil && keyID != "" {
		m.healthy.Set(1)
	} else {
		m.healthy.Set(0)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if keyID == m.keyID {
		return
	}
	if m.keyID != "" {
		m.rotations.Inc()
		m.keyInfo.DeleteLabelValues(m.keyID)
	}
	m.keyID = keyID
	if keyID != "" {
		m.keyInfo.WithLabelValues(keyID).Set(1)
	}
}

// WatchTokenTTL exports kms_plugin_backend_token_ttl_seconds when backend implements
// dek.TokenTTLReporter; it reports whether it does.
func (m *Metrics) WatchTokenTTL(backend dek.KEK) bool {
	r, ok := backend.(dek.TokenTTLReporter)
	if ok {
		m.wrapped.MustRegister(&tokenTTLCollector{r: r, desc: prometheus.NewDesc(namespace+"_backend_token_ttl_seconds",
			"Time left on the backend's credentials (a Vault token); absent while they do not expire.", nil, nil)})
	}
	return ok
}

type tokenTTLCollector struct {
	r    dek.TokenTTLReporter
	desc *prometheus.Desc
}

func (c *tokenTTLCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }
func (c *tokenTTLCollector) Collect(ch chan<- prometheus.Metric) {
	if ttl, ok := c.r.TokenTTL(); ok {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, ttl.Seconds())
	}
}

// Limiter is what the backend call limiter reports.
type Limiter interface {
	InProgress() int
	Waiting() int
}

// WatchLimiter exports the limiter's calls in progress and waiting, and its bounds.
func (m *Metrics) WatchLimiter(l Limiter, maxInProgress, maxWaiting int) {
	m.wrapped.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "backend_calls_in_progress",
			Help: "Wrap and unwrap calls the backend is serving now.",
		}, func() float64 { return float64(l.InProgress()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "backend_calls_waiting",
			Help: "Wrap and unwrap calls queued for a free slot (--max-concurrent-backend-calls).",
		}, func() float64 { return float64(l.Waiting()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "backend_calls_in_progress_limit",
			Help: "--max-concurrent-backend-calls.",
		}, func() float64 { return float64(maxInProgress) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "backend_calls_waiting_limit",
			Help: "--backend-call-queue.",
		}, func() float64 { return float64(maxWaiting) }),
	)
}

// Cache is the DEK cache as the metrics see it (dek/cache.KEK).
type Cache interface {
	Stats() cache.Stats
}

// WatchCache exports the DEK cache's hits, misses, evictions and size.
func (m *Metrics) WatchCache(c Cache) {
	counter := func(name, help string, v func(cache.Stats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help},
			func() float64 { return float64(v(c.Stats())) })
	}
	m.wrapped.MustRegister(
		counter("dek_cache_hits_total", "Unwraps answered from the DEK cache, with no backend call.", func(s cache.Stats) uint64 { return s.Hits }),
		counter("dek_cache_misses_total", "Unwraps the DEK cache could not answer (a backend call, shared by identical concurrent misses).", func(s cache.Stats) uint64 { return s.Misses }),
		counter("dek_cache_evictions_total", "DEKs dropped (and cleared) to keep the cache within --vault-dek-cache-size.", func(s cache.Stats) uint64 { return s.Evictions }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: namespace, Name: "dek_cache_entries",
			Help: "DEKs and local KEKs held in the cache now."}, func() float64 { return float64(c.Stats().Entries) }),
	)
}

// WatchLocalKEKs exports the number of local KEKs generated (each cost one backend wrap).
func (m *Metrics) WatchLocalKEKs() (generated func(keyID string)) {
	n := prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "local_kek_generations_total",
		Help: "Local KEKs generated and wrapped by the backend (local KEK mode): at start, on a new key id, by age or use."})
	m.wrapped.MustRegister(n)
	return func(string) { n.Inc() }
}

// WatchVaultKubernetesKMSReads exports the number of vault-kubernetes-kms envelopes decrypted
// (serve's --vault-read-vault-kubernetes-kms): the sunset of that flag is when it stays flat and
// kmsctl scan finds none left.
func (m *Metrics) WatchVaultKubernetesKMSReads() (read func(version int)) {
	n := prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: "vault_kubernetes_kms_decrypts_total",
		Help: "Envelopes written by vault-kubernetes-kms (Transit's vault:vN: text) that Decrypt read, with --vault-read-vault-kubernetes-kms."})
	m.wrapped.MustRegister(n)
	return func(int) { n.Inc() }
}

// WatchMemory exports whether the plugin serves from memory (the backend unreachable, within
// the grace) and how much of the grace is left.
func (m *Metrics) WatchMemory(state func() (serving bool, graceLeft time.Duration)) {
	m.wrapped.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: namespace, Name: "serving_from_memory",
			Help: "1 while the backend is unreachable and Encrypt/Decrypt are served from the DEK cache and local KEK, within the grace."},
			func() float64 {
				if serving, _ := state(); serving {
					return 1
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: namespace, Name: "memory_grace_remaining_seconds",
			Help: "While serving from memory, the seconds left until the grace ends and requests that need the backend fail; 0 otherwise."},
			func() float64 {
				if serving, left := state(); serving {
					return left.Seconds()
				}
				return 0
			}),
	)
}

// WatchBreakGlass exports break-glass mode: on (1) or off (0), and when it ends.
func (m *Metrics) WatchBreakGlass(state func() (on bool, until time.Time)) {
	m.wrapped.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: namespace, Name: "break_glass",
			Help: "1 while break-glass mode serves reads with the offline recovery private key (bypassing the backend and its audit log); 0 once it has ended."},
			func() float64 {
				if on, _ := state(); on {
					return 1
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: namespace, Name: "break_glass_expiry_timestamp_seconds",
			Help: "When break-glass mode ends (--break-glass-until), as a Unix time; 0 when not in break-glass mode."},
			func() float64 {
				if _, until := state(); !until.IsZero() {
					return float64(until.Unix())
				}
				return 0
			}),
	)
}

// WatchBatches exports the backend's batching of unwraps, if it batches (vault): requests
// sent and the unwraps they carried; their ratio is the mean batch size.
func (m *Metrics) WatchBatches(backend dek.KEK) bool {
	b, ok := backend.(dek.UnwrapBatcher)
	if !ok {
		return false
	}
	m.wrapped.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: namespace, Name: "backend_unwrap_batches_total",
			Help: "Unwrap requests sent to the backend, each carrying one or more unwraps (vault: transit batch_input)."},
			func() float64 { r, _ := b.DecryptBatches(); return float64(r) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: namespace, Name: "backend_unwrap_batch_items_total",
			Help: "Unwraps carried by those requests; divided by kms_plugin_backend_unwrap_batches_total, the mean batch size."},
			func() float64 { _, i := b.DecryptBatches(); return float64(i) }),
	)
	return true
}
