package load

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is what `kmsctl load` prints: the run against the target and, with a floor, the same
// load against the floor and each figure as a ratio to it.
type Report struct {
	Options Options `json:"options"`
	// LoadAverage is the machine's 1-minute load average before and after (Linux only): the
	// figures are only comparable on a machine that is otherwise idle.
	LoadAverage [2]float64 `json:"load_average"`
	Rounds      int        `json:"rounds"` // target and floor alternated
	Target      Result     `json:"target"`
	Floor       *Result    `json:"floor,omitempty"`
	Ratios      []Ratio    `json:"ratio_to_floor,omitempty"`
}

// Ratio is one method's figures divided by the floor's: PerSecond below 1 and latencies above
// 1 are what the plugin costs beyond gRPC over a unix socket.
type Ratio struct {
	Method    string  `json:"method"`
	PerSecond float64 `json:"ops_per_second"`
	P50       float64 `json:"p50"`
	P90       float64 `json:"p90"`
	P99       float64 `json:"p99"`
	P999      float64 `json:"p99_9"`
}

// ratios returns target's figures as ratios to floor's, for each method both measured.
func ratios(target, floor Result) []Ratio {
	var out []Ratio
	for _, t := range target.Methods {
		f, ok := floor.Method(t.Method)
		if !ok {
			continue
		}
		out = append(out, Ratio{
			Method:    t.Method,
			PerSecond: div(t.PerSecond, f.PerSecond),
			P50:       div(float64(t.Latency.P50), float64(f.Latency.P50)),
			P90:       div(float64(t.Latency.P90), float64(f.Latency.P90)),
			P99:       div(float64(t.Latency.P99), float64(f.Latency.P99)),
			P999:      div(float64(t.Latency.P999), float64(f.Latency.P999)),
		})
	}
	return out
}

func div(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// loadAverage1 is the machine's 1-minute load average, or 0 where /proc/loadavg is not.
func loadAverage1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	var l float64
	fmt.Sscan(string(b), &l)
	return l
}

// WriteJSON writes the report as indented JSON; durations are in nanoseconds.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteTable writes the report as a table: a row per method for the target, the floor and
// their ratio.
func (r Report) WriteTable(w io.Writer) error {
	o := r.Options
	load := fmt.Sprintf("%d requests", o.Count)
	if o.Duration > 0 {
		load = o.Duration.String()
	}
	fmt.Fprintf(w, "%s, concurrency %d on %d connection(s), %d-byte payloads", load, o.Concurrency, o.Connections, o.PayloadSize)
	if o.Op != OpEncrypt {
		fmt.Fprintf(w, ", Decrypt cycling through %d envelopes", o.Distinct)
	}
	if o.Op == OpMix {
		fmt.Fprintf(w, ", %.3g of requests Encrypt", o.MixRatio)
	}
	if r.Rounds > 1 {
		fmt.Fprintf(w, ", %d rounds", r.Rounds)
	}
	fmt.Fprintf(w, "; load average %.2f before, %.2f after\n", r.LoadAverage[0], r.LoadAverage[1])
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "target\tmethod\trequests\terrors\tops/s\tp50\tp90\tp99\tp99.9\t")
	rows := func(name string, res Result) {
		for _, s := range res.Methods {
			l := s.Latency
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.0f\t%s\t%s\t%s\t%s\t\n", name, s.Method, s.Requests, s.Errors,
				s.PerSecond, ms(l.P50), ms(l.P90), ms(l.P99), ms(l.P999))
		}
	}
	rows(r.Target.Target, r.Target)
	if r.Floor != nil {
		rows(r.Floor.Target, *r.Floor)
		for _, q := range r.Ratios {
			fmt.Fprintf(tw, "ratio to floor\t%s\t\t\t%.2fx\t%.2fx\t%.2fx\t%.2fx\t%.2fx\t\n", q.Method, q.PerSecond, q.P50, q.P90, q.P99, q.P999)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, res := range append([]Result{r.Target}, deref(r.Floor)...) {
		for _, s := range res.Methods {
			if s.Errors > 0 {
				var codes []string
				for code, n := range s.ErrorsBy {
					codes = append(codes, fmt.Sprintf("%s %d", code, n))
				}
				fmt.Fprintf(w, "%s: %d %s requests failed: %s\n", res.Target, s.Errors, s.Method, strings.Join(codes, ", "))
			}
		}
	}
	return nil
}

func deref(r *Result) []Result {
	if r == nil {
		return nil
	}
	return []Result{*r}
}

// ms formats a latency in milliseconds with microsecond precision.
func ms(d time.Duration) string { return fmt.Sprintf("%.3fms", float64(d)/float64(time.Millisecond)) }

// Comparison says what to compare the target with.
type Comparison struct {
	// Floor runs the same load against the floor: the one at FloorSocket, or else one served in
	// this process on a temporary socket.
	Floor       bool
	FloorSocket string
	// Rounds alternate target and floor this many times (at least 1); each figure is over all
	// rounds, so that a change in the machine's load during the run weighs on both alike.
	Rounds int
}

// Measure runs the load against the plugin at socket and, with c.Floor, against the floor,
// alternating, with the ratios. A floor served in this process shares the process with the load;
// a plugin in another process does not (docs/performance.md measures both ways).
func Measure(ctx context.Context, socket string, o Options, c Comparison) (Report, error) {
	o, err := o.withDefaults()
	if err != nil {
		return Report{}, err
	}
	rep := Report{Options: o, Rounds: max(c.Rounds, 1)}
	floorSocket := c.FloorSocket
	if c.Floor && floorSocket == "" {
		floor, err := StartTempFloor()
		if err != nil {
			return rep, err
		}
		defer floor.Stop()
		floorSocket = floor.Socket
	}
	rep.LoadAverage[0] = loadAverage1()
	var target, floor samples
	for range rep.Rounds {
		if err := target.run(ctx, socket, o); err != nil {
			return rep, err
		}
		if c.Floor {
			if err := floor.run(ctx, floorSocket, o); err != nil {
				return rep, fmt.Errorf("floor: %w", err)
			}
		}
	}
	rep.LoadAverage[1] = loadAverage1()
	rep.Target = target.result(socket)
	if c.Floor {
		res := floor.result("floor")
		if c.FloorSocket != "" {
			res.Target = "floor " + c.FloorSocket
		}
		rep.Floor = &res
		rep.Ratios = ratios(rep.Target, res)
	}
	return rep, nil
}
