// Command kubelet is the real kubelet, built from the same k8s.io/kubernetes module version as
// kube-apiserver, for the integration test that runs deploy/static-pod/ as static pods.
// The imports are those of k8s.io/kubernetes/cmd/kubelet.
package main

import (
	"context"
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	os.Exit(cli.Run(app.NewKubeletCommand(context.Background())))
}
