package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kmsplugin/kms-plugin/backends/localaes"
	"github.com/kmsplugin/kms-plugin/storage/scan"
)

// keygenLockWait bounds keygen's wait for the key file's lock; tests shorten it.
var keygenLockWait = localaes.DefaultLockWait

// keyFileEditor is how keygen changes the key file: waiting at most keygenLockWait for the
// key file's lock, and saying on stderr what it waits for.
func keyFileEditor(cmd *cobra.Command) localaes.Editor {
	return localaes.Editor{Wait: keygenLockWait, Waiting: func(msg string) { fmt.Fprintln(cmd.ErrOrStderr(), msg) }}
}

func newKeygenCommand() *cobra.Command {
	var path, name, remove, root string
	var write, force bool
	var etcd etcdFlags
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Add a new AES-256 key to a local key file (creating the file 0600 if missing), or retire one",
		Long: `Adds a freshly generated AES-256 key to the local key file.

A new file gets one key, which is its write key. In an existing file the new key is
decrypt-only (last in the list) unless --write makes it the write key (first in the list).
To roll a key over several control-plane nodes: add it decrypt-only on every node (SIGHUP
each plugin), then make it the write key on every node. See docs/localaes.md.

--remove NAME retires a key: it first scans etcd (the etcd flags, as for scan) and refuses
while any object is stored under that key (rewrite them first: kmsctl rewrite), unless --force.
The write key cannot be removed. See docs/rotation.md.

While another keygen (or a plugin creating the key file) holds the key file's lock
(<file>.lock), keygen says so and waits for it, at most a minute; then it fails.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if path == "" {
				return fmt.Errorf("--localaes-key-file is required")
			}
			if remove != "" {
				return removeKey(cmd, path, remove, root, etcd, force)
			}
			id, err := keyFileEditor(cmd).AddKey(path, name, write)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added key %s to %s\n", id, path)
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&path, "localaes-key-file", "", "key file to create or extend")
	fs.StringVar(&name, "name", "", "name of the new key (default: key<N>)")
	fs.BoolVar(&write, "write", false, "make the new key the write key (first in the list)")
	fs.StringVar(&remove, "remove", "", "remove the key of this name, once no object in etcd is stored under it")
	fs.BoolVar(&force, "force", false, "with --remove: remove even if objects are stored under the key, or etcd was not checked")
	etcd.add(fs, nil)
	fs.StringVar(&root, "prefix", scan.DefaultRoot, "etcd key prefix of the apiserver's objects")
	return cmd
}

// removeKey retires a key after checking etcd for objects under it.
func removeKey(cmd *cobra.Command, path, name, root string, etcd etcdFlags, force bool) error {
	out := cmd.OutOrStdout()
	inUse := func(id string) error {
		if len(etcd.endpoints) == 0 {
			if force {
				fmt.Fprintf(out, "not checking etcd (--force): objects still under %s would no longer decrypt\n", id)
				return nil
			}
			return fmt.Errorf("--remove needs the etcd flags (--etcd-endpoints, ...) to check that no object is stored under %s, or --force", id)
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Minute)
		defer cancel()
		client, err := etcd.client(ctx)
		if err != nil {
			return err
		}
		defer client.Close()
		rep, err := scan.Scan(ctx, client, scan.Options{Root: root})
		if err != nil {
			return err
		}
		n := 0
		var where []string
		for _, r := range rep.Resources {
			for _, s := range r.Storage {
				if s.Class == scan.KMSv2 && s.Key == id {
					n += s.Objects
					where = append(where, fmt.Sprintf("%s: %d", r.Resource, s.Objects))
				}
			}
		}
		fmt.Fprintf(out, "etcd at revision %d: %d objects under %s\n", rep.Revision, n, id)
		if n == 0 {
			return nil
		}
		if force {
			fmt.Fprintf(out, "removing anyway (--force): those objects no longer decrypt until the key is put back\n")
			return nil
		}
		return checkFailure{fmt.Sprintf("not removing %s: %d objects are stored under it (%s); rewrite them first (kmsctl rewrite), or --force",
			id, n, strings.Join(where, ", "))}
	}
	id, err := keyFileEditor(cmd).RemoveKey(path, name, inUse)
	if err != nil {
		var cf checkFailure
		if errors.As(err, &cf) {
			return cf
		}
		return err
	}
	fmt.Fprintf(out, "removed key %s from %s; reload each plugin (SIGHUP)\n", id, path)
	return nil
}
