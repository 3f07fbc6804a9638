// Command kube-apiserver is the real Kubernetes API server, built from its Go module for the
// integration tests. "kube-apiserver kube-controller-manager ..." runs the real
// kube-controller-manager instead (its storage version migrator for kmsctl rewrite --via
// storage-version-migration): one module, one build, the two sharing every package they can.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "kube-controller-manager" {
		os.Args = os.Args[1:]
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	}
	os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
}
