// Command etcd is the real etcd server, built from its Go module for the integration tests.
// "etcd snapshot ..." is etcdutl's snapshot command (restore, status), for the
// disaster-recovery drill: one binary, one build.
package main

import (
	"os"

	"go.etcd.io/etcd/etcdutl/v3/etcdutl"
	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "snapshot" {
		cmd := etcdutl.NewSnapshotCommand()
		cmd.SetArgs(os.Args[2:])
		if err := cmd.Execute(); err != nil {
			os.Exit(1)
		}
		return
	}
	etcdmain.Main(os.Args)
}
