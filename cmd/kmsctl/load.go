package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/kmsplugin/kms-plugin/cmd/kmsctl/internal/load"
	"github.com/kmsplugin/kms-plugin/internal/kmsclient"
)

func newLoadCommand() *cobra.Command {
	var o load.Options
	var socket, op string
	var asJSON, floor bool
	var c load.Comparison
	cmd := &cobra.Command{
		Use:   "load",
		Short: "Drive a KMS v2 plugin's socket with Encrypt/Decrypt load and report ops/s and latency percentiles, also as a ratio to a do-nothing server",
		Long: `Sends Encrypt, Decrypt or a mix of both to any KMS v2 plugin's unix socket (this plugin or
another vendor's), --concurrency requests at a time over --connections gRPC connections, for
--duration or --count requests, and reports requests per second and latency p50, p90, p99 and
p99.9 (exact, from every sample) per method, as a table or as JSON (--json; durations in ns).
Every Encrypt's plaintext is distinct; Decrypt first encrypts a pool of --distinct envelopes
(not measured) and cycles through them, checking each plaintext.

--compare-floor then runs the same load against a do-nothing KMS v2 server (the floor: Encrypt
and Decrypt echo, no crypto) served in this process on a temporary socket, and adds each figure
as a ratio to it: what the plugin costs beyond gRPC over a unix socket on this machine.
--floor-socket uses a floor served by another process instead (kmsctl load --floor), as the
plugin is; --rounds alternates plugin and floor, so that a busy machine weighs on both alike.

--floor serves that do-nothing server on --socket until interrupted, sending no load, so that
another client can be measured against it. See docs/performance.md.

Exit status 3 when any request failed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if socket == "" {
				return errors.New("--socket is required")
			}
			if floor {
				return serveFloor(cmd, socket)
			}
			o.Op = load.Op(op)
			if cmd.Flags().Changed("count") && !cmd.Flags().Changed("duration") {
				o.Duration = 0
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			c.Floor = c.Floor || c.FloorSocket != ""
			rep, err := load.Measure(ctx, socket, o, c)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				err = rep.WriteJSON(out)
			} else {
				err = rep.WriteTable(out)
			}
			if err != nil {
				return err
			}
			if n := rep.Target.Errors(); n > 0 {
				return checkFailure{fmt.Sprintf("%d requests to %s failed", n, socket)}
			}
			return nil
		},
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	fs.StringVar(&socket, "socket", "", "the plugin's socket: a path or unix:///path (with --floor: where to serve)")
	fs.StringVar(&op, "op", string(load.OpDecrypt), "encrypt, decrypt or mix")
	fs.Float64Var(&o.MixRatio, "mix-ratio", load.DefaultMixRatio, "with --op mix: the fraction of requests that are Encrypts")
	fs.IntVar(&o.Concurrency, "concurrency", load.DefaultConcurrency, "requests in flight at once")
	fs.IntVar(&o.Connections, "connections", load.DefaultConnections, "gRPC connections the requests share (kube-apiserver uses one)")
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "how long to send requests")
	fs.IntVar(&o.Count, "count", 0, "send this many requests instead of running for --duration")
	fs.IntVar(&o.PayloadSize, "payload-size", load.DefaultPayloadSize, "bytes of each Encrypt's plaintext (kube-apiserver sends a 32-byte seed)")
	fs.IntVar(&o.Distinct, "distinct", load.DefaultDistinct, "envelopes Decrypt cycles through")
	fs.DurationVar(&o.Timeout, "timeout", load.DefaultTimeout, "deadline of one request (kube-apiserver's default is 3s)")
	fs.BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	fs.BoolVar(&c.Floor, "compare-floor", false, "also run the load against a do-nothing KMS v2 server in this process, and print each figure as a ratio to it")
	fs.StringVar(&c.FloorSocket, "floor-socket", "", "compare with the do-nothing server at this socket (kmsctl load --floor in another process) instead")
	fs.IntVar(&c.Rounds, "rounds", 1, "with a floor: alternate plugin and floor this many times (--duration or --count each), figures over all rounds")
	fs.BoolVar(&floor, "floor", false, "serve the do-nothing KMS v2 server on --socket until interrupted, instead of sending load")
	return cmd
}

// serveFloor serves the floor on socket until SIGINT or SIGTERM.
func serveFloor(cmd *cobra.Command, socket string) error {
	path, err := kmsclient.SocketPath(socket)
	if err != nil {
		return err
	}
	f, err := load.ServeFloor(path)
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "serving the do-nothing KMS v2 server on %s; Ctrl-C stops it\n", path)
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() { <-ctx.Done(); f.Stop() }()
	return f.Wait()
}
