package vault

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsplugin/kms-plugin/dek"
)

// recordingClock fires every timer at once and records the waits asked for.
type recordingClock struct {
	mu    sync.Mutex
	waits []time.Duration
}

func (c *recordingClock) Now() time.Time { return time.Now() }
func (c *recordingClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	c.waits = append(c.waits, d)
	c.mu.Unlock()
	ch := make(chan time.Time, 1)
	ch <- time.Now()
	return ch
}

func TestRetryPolicy(t *testing.T) {
	policy := RetryPolicy{Attempts: 4, Base: 10 * time.Millisecond, Max: 25 * time.Millisecond}
	cases := []struct {
		name     string
		statuses []int // answers in order; the last repeats
		attempts int
		ok       bool
	}{
		{"success", []int{200}, 1, true},
		{"5xx then success", []int{503, 500, 200}, 3, true},
		{"429 retried", []int{429, 200}, 2, true},
		{"5xx bounded", []int{502}, 4, false},
		{"400 not retried", []int{400}, 1, false},
		{"403 not retried", []int{403}, 1, false},
		{"404 not retried", []int{404}, 1, true}, // vault/api reads a 404 as "nothing there"
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var n atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				i := int(n.Add(1)) - 1
				code := c.statuses[min(i, len(c.statuses)-1)]
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(code)
				if code == 200 {
					io.WriteString(w, `{"data":{"ok":true}}`)
				} else {
					io.WriteString(w, `{"errors":["nope"]}`)
				}
			}))
			defer srv.Close()
			client := testAPIClient(t, srv.URL)
			clk := &recordingClock{}
			err := policy.do(context.Background(), clk, func(ctx context.Context) error {
				_, err := client.Logical().ReadWithContext(ctx, "transit/keys/k")
				return err
			})
			if got := int(n.Load()); got != c.attempts {
				t.Errorf("attempts = %d, want %d", got, c.attempts)
			}
			if (err == nil) != c.ok {
				t.Errorf("err = %v, want ok=%v", err, c.ok)
			}
			for i, w := range clk.waits {
				d := min(policy.Base<<i, policy.Max)
				if w < d/2 || w > d {
					t.Errorf("wait %d = %s, want within [%s, %s]", i, w, d/2, d)
				}
			}
		})
	}

	t.Run("network errors retried", func(t *testing.T) {
		// A listener that accepts and at once closes every connection: no HTTP answer at all.
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		var conns atomic.Int32
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				conns.Add(1)
				c.Close()
			}
		}()
		client := testAPIClient(t, "http://"+l.Addr().String())
		err = policy.do(context.Background(), &recordingClock{}, func(ctx context.Context) error {
			_, err := client.Logical().ReadWithContext(ctx, "transit/keys/k")
			return err
		})
		if err == nil || conns.Load() < int32(policy.Attempts) {
			t.Fatalf("err = %v after %d connections; want an error after %d attempts", err, conns.Load(), policy.Attempts)
		}
		if !errors.Is(classify("read", err), dek.ErrUnavailable) {
			t.Fatalf("a network error classifies as %v, want dek.ErrUnavailable", classify("read", err))
		}
	})

	t.Run("never past the deadline", func(t *testing.T) {
		var n atomic.Int32
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n.Add(1)
			w.WriteHeader(503)
		}))
		defer srv.Close()
		client := testAPIClient(t, srv.URL)
		slow := RetryPolicy{Attempts: 10, Base: time.Hour, Max: time.Hour}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		clk := &recordingClock{}
		err := slow.do(ctx, clk, func(ctx context.Context) error {
			_, err := client.Logical().ReadWithContext(ctx, "transit/keys/k")
			return err
		})
		if err == nil || n.Load() != 1 || len(clk.waits) != 0 {
			t.Fatalf("err = %v, attempts = %d, waits = %v: a wait past the deadline must not start", err, n.Load(), clk.waits)
		}
	})
}
