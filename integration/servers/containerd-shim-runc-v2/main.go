// Command containerd-shim-runc-v2 is containerd's runc shim, from the same containerd module
// version as ../containerd. containerd finds it beside its own binary (build.sh links both into
// one directory) and the shim re-executes itself, so it is a binary of its own.
package main

import (
	"context"

	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/manager"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/task/plugin"
	"github.com/containerd/containerd/v2/pkg/shim"
)

func main() {
	shim.RunShim(context.Background(), manager.NewShimManager("io.containerd.runc.v2"))
}
