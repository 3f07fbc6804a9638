package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/backends/localaes"
	"github.com/kmsplugin/kms-plugin/internal/kmsclient"
	"github.com/kmsplugin/kms-plugin/plugin"
	"github.com/kmsplugin/kms-plugin/storage/compare"
)

func newCompareCommand() *cobra.Command {
	var socket string
	var sizes []int
	var duration time.Duration
	cmd := &cobra.Command{
		Use:   "compare",
		Short: "Measure encrypt/decrypt throughput and latency of identity, aescbc, aesgcm, secretbox and KMS v2 on this machine",
		Long: `Measures, one operation at a time, what each provider costs per value as kube-apiserver uses
it: identity, aescbc, aesgcm and secretbox with a random 32-byte key, and KMS v2 with one DEK
seed from the plugin and a derived key per value (reads find the seed in the cache, as in a
running apiserver). It also times the plugin's own Encrypt and Decrypt on its socket.

Without --kms-socket it starts this plugin in-process with a throwaway local AES key on a
temporary socket. See docs/providers.md for figures and each provider's security properties.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if socket == "" {
				s, stop, err := startThrowawayPlugin()
				if err != nil {
					return err
				}
				defer stop()
				socket = s
			}
			conn, err := kmsclient.Dial(socket)
			if err != nil {
				return err
			}
			defer conn.Close()
			rows, err := compare.Run(ctx, compare.Options{Sizes: sizes, Duration: duration, Plugin: kmsapi.NewKeyManagementServiceClient(conn)})
			if err != nil {
				return err
			}
			return compare.Print(cmd.OutOrStdout(), rows)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&socket, "kms-socket", "", "a running KMS v2 plugin's socket (default: start this plugin in-process with a throwaway key)")
	fs.IntSliceVar(&sizes, "sizes", []int{1024, 64 * 1024}, "value sizes in bytes")
	fs.DurationVar(&duration, "duration", time.Second, "time spent on each provider, size and operation")
	return cmd
}

// startThrowawayPlugin serves the plugin with a fresh localaes key in a temporary directory.
func startThrowawayPlugin() (string, func(), error) {
	dir, err := os.MkdirTemp("", "kms-compare")
	if err != nil {
		return "", nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	keyFile := filepath.Join(dir, "keys.yaml")
	if _, err := localaes.AddKey(keyFile, "compare", true); err != nil {
		cleanup()
		return "", nil, err
	}
	backend, err := localaes.Open(keyFile)
	if err != nil {
		cleanup()
		return "", nil, err
	}
	stack := plugin.New(plugin.Config{KEK: backend}) // serve's stack for localaes
	stack.Monitor.Refresh(context.Background())
	socket := filepath.Join(dir, "kms.sock")
	lis, err := plugin.Listen(socket, plugin.SocketOptions{GID: -1})
	if err != nil {
		cleanup()
		return "", nil, fmt.Errorf("throwaway plugin: %w", err)
	}
	go stack.Server.Serve(lis)
	return socket, func() { stack.Server.Stop(); cleanup() }, nil
}
