package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/kmsplugin/kms-plugin/backends/localaes"
)

func newKeygenCommand() *cobra.Command {
	var path, name string
	var write bool
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Add a new AES-256 key to a local key file (creating the file 0600 if missing)",
		Long: `Adds a freshly generated AES-256 key to the local key file.

A new file gets one key, which is its write key. In an existing file the new key is
decrypt-only (last in the list) unless --write makes it the write key (first in the list).
To roll a key over several control-plane nodes: add it decrypt-only on every node (SIGHUP
each plugin), then make it the write key on every node. See docs/localaes.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if path == "" {
				return fmt.Errorf("--localaes-key-file is required")
			}
			id, err := localaes.AddKey(path, name, write)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added key %s to %s\n", id, path)
			return nil
		},
	}
	cmd.Flags().StringVar(&path, "localaes-key-file", "", "key file to create or extend")
	cmd.Flags().StringVar(&name, "name", "", "name of the new key (default: key<N>)")
	cmd.Flags().BoolVar(&write, "write", false, "make the new key the write key (first in the list)")
	return cmd
}
