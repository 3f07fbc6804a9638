// Command containerd is the real containerd 2.x, built from its Go module for the integration
// test that runs deploy/static-pod/ under a real kubelet. "containerd ctr ..." is containerd's
// ctr (to import the locally built images into the k8s.io namespace): one binary, one build.
// The runc shim is a module of its own (../containerd-shim-runc-v2): its task plugin registers
// itself at init and must not be loaded into containerd.
package main

import (
	"context"
	"fmt"
	"os"

	_ "github.com/containerd/containerd/v2/cmd/containerd/builtins"
	"github.com/containerd/containerd/v2/cmd/containerd/command"
	"github.com/containerd/containerd/v2/cmd/ctr/app"
)

func main() {
	ctx := context.Background()
	if len(os.Args) > 1 && os.Args[1] == "ctr" {
		if err := app.New().Run(ctx, os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, "ctr:", err)
			os.Exit(1)
		}
		return
	}
	if err := command.App().Run(ctx, os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "containerd:", err)
		os.Exit(1)
	}
}
