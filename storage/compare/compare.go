// Package compare measures, on the machine it runs on, what each encryption provider costs
// per value: identity, aescbc, aesgcm, secretbox and KMS v2 as kube-apiserver uses it (one DEK
// seed from the plugin, then a derived key per value), plus the plugin's own Encrypt and
// Decrypt round trip on its socket.
package compare

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"slices"
	"text/tabwriter"
	"time"

	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/dek"
	"github.com/kmsplugin/kms-plugin/storage/providers"
)

// Options says what to measure.
type Options struct {
	Sizes    []int         // value sizes in bytes, e.g. 1 KiB and 64 KiB
	Duration time.Duration // time spent on each (provider, size, operation)
	Plugin   kmsapi.KeyManagementServiceClient
}

// Row is one measurement.
type Row struct {
	Provider, Op string
	Size         int
	Ops          int           // operations done
	PerSecond    float64       // operations per second
	MBPerSecond  float64       // plaintext megabytes (10^6) per second
	P50, P99     time.Duration // latency of one operation
	Skipped      string        // why it was not measured, if it was not
}

// Run measures every provider for every size, one operation at a time on one goroutine.
func Run(ctx context.Context, o Options) ([]Row, error) {
	if o.Duration <= 0 || len(o.Sizes) == 0 || o.Plugin == nil {
		return nil, errors.New("compare: sizes, a duration and a plugin are required")
	}
	key := make([]byte, 32)
	rand.Read(key)
	cbc, _ := providers.NewAESCBC(key)
	gcm, _ := providers.NewAESGCM(key)
	box, _ := providers.NewSecretbox(key)
	kms := providers.NewKMSv2("compare", o.Plugin, 10*time.Second)
	subjects := []struct {
		name string
		t    providers.Transformer
	}{
		{"identity", providers.Identity{}}, {"aescbc", cbc}, {"aesgcm", gcm}, {"secretbox", box}, {"kms v2", kms},
	}
	etcdKey := []byte("/registry/secrets/default/compare")
	var rows []Row
	for _, size := range o.Sizes {
		plain := make([]byte, size)
		rand.Read(plain)
		for _, s := range subjects {
			stored, err := s.t.Encrypt(ctx, nil, plain, etcdKey) // also fetches kms v2's seed
			if err != nil {
				return nil, fmt.Errorf("%s: %w", s.name, err)
			}
			if _, err := s.t.Decrypt(ctx, stored, etcdKey); err != nil { // and caches it for reads
				return nil, fmt.Errorf("%s: %w", s.name, err)
			}
			enc, err := measure(ctx, o.Duration, func() error { _, err := s.t.Encrypt(ctx, nil, plain, etcdKey); return err })
			if err != nil {
				return nil, fmt.Errorf("%s encrypt: %w", s.name, err)
			}
			dec, err := measure(ctx, o.Duration, func() error { _, err := s.t.Decrypt(ctx, stored, etcdKey); return err })
			if err != nil {
				return nil, fmt.Errorf("%s decrypt: %w", s.name, err)
			}
			rows = append(rows, enc.row(s.name, "encrypt", size), dec.row(s.name, "decrypt", size))
		}
		pluginRows, err := measurePlugin(ctx, o, size)
		if err != nil {
			return nil, err
		}
		rows = append(rows, pluginRows...)
	}
	return rows, nil
}

// measurePlugin times the plugin's own RPCs; it refuses plaintexts above its limit.
func measurePlugin(ctx context.Context, o Options, size int) ([]Row, error) {
	const name = "plugin RPC"
	if size > dek.MaxPlaintextSize {
		why := fmt.Sprintf("the plugin accepts at most %d bytes (the apiserver sends 32)", dek.MaxPlaintextSize)
		return []Row{{Provider: name, Op: "Encrypt", Size: size, Skipped: why}, {Provider: name, Op: "Decrypt", Size: size, Skipped: why}}, nil
	}
	plain := make([]byte, size)
	rand.Read(plain)
	resp, err := o.Plugin.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: plain, Uid: "compare"})
	if err != nil {
		return nil, fmt.Errorf("plugin Encrypt: %w", err)
	}
	enc, err := measure(ctx, o.Duration, func() error {
		_, err := o.Plugin.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: plain, Uid: "compare"})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("plugin Encrypt: %w", err)
	}
	dec, err := measure(ctx, o.Duration, func() error {
		_, err := o.Plugin.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: resp.Ciphertext, KeyId: resp.KeyId, Uid: "compare"})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("plugin Decrypt: %w", err)
	}
	return []Row{enc.row(name, "Encrypt", size), dec.row(name, "Decrypt", size)}, nil
}

type sample struct {
	ops       int
	elapsed   time.Duration
	latencies []time.Duration
}

// maxLatencies bounds the latency samples kept (a reservoir), so that a fast provider's
// millions of operations do not measure slice growth instead.
const maxLatencies = 100_000

// measure spends half of d on throughput, with no timer around each operation, and half on
// per-operation latency.
func measure(ctx context.Context, d time.Duration, op func() error) (sample, error) {
	var s sample
	start := time.Now()
	for s.elapsed < d/2 {
		for range 16 {
			if err := op(); err != nil {
				return s, err
			}
		}
		s.ops += 16
		s.elapsed = time.Since(start)
		if err := ctx.Err(); err != nil {
			return s, err
		}
	}
	s.latencies = make([]time.Duration, 0, maxLatencies)
	seen := 0
	for begin := time.Now(); time.Since(begin) < d/2 || seen == 0; seen++ {
		t0 := time.Now()
		if err := op(); err != nil {
			return s, err
		}
		lat := time.Since(t0)
		if len(s.latencies) < maxLatencies {
			s.latencies = append(s.latencies, lat)
		} else if i := mrand.IntN(seen + 1); i < maxLatencies {
			s.latencies[i] = lat
		}
	}
	return s, nil
}

func (s sample) row(provider, op string, size int) Row {
	slices.Sort(s.latencies)
	n := len(s.latencies)
	perSec := float64(s.ops) / s.elapsed.Seconds()
	return Row{
		Provider: provider, Op: op, Size: size, Ops: s.ops,
		PerSecond: perSec, MBPerSecond: perSec * float64(size) / 1e6,
		P50: s.latencies[n/2], P99: s.latencies[min(n-1, n*99/100)],
	}
}

// Print writes rows as a table.
func Print(w io.Writer, rows []Row) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "provider\top\tsize\tops/s\tMB/s\tp50\tp99\t")
	for _, r := range rows {
		if r.Skipped != "" {
			fmt.Fprintf(tw, "%s\t%s\t%s\t-\t-\t-\t-\t  (%s)\n", r.Provider, r.Op, sizeName(r.Size), r.Skipped)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f\t%.1f\t%s\t%s\t\n", r.Provider, r.Op, sizeName(r.Size), r.PerSecond, r.MBPerSecond, round(r.P50), round(r.P99))
	}
	return tw.Flush()
}

func sizeName(n int) string {
	if n >= 1024 && n%1024 == 0 {
		return fmt.Sprintf("%d KiB", n/1024)
	}
	return fmt.Sprintf("%d B", n)
}

func round(d time.Duration) time.Duration {
	switch {
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	case d >= 10*time.Microsecond:
		return d.Round(100 * time.Nanosecond)
	}
	return d
}
