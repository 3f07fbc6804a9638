package main

// The flags that several commands share, and what they build: the way to an apiserver
// (kubeFlags: rewrite, rollout-status) and the way to etcd (etcdFlags: scan, rewrite, doctor).

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"

	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kmsplugin/kms-plugin/internal/tlsfiles"
	"github.com/kmsplugin/kms-plugin/storage/rollout"
)

// kubeFlags reach the apiserver: a kubeconfig file and, for the rollout checks, the list of
// apiservers when the kubernetes Service's endpoints are not reachable from here.
type kubeFlags struct {
	kubeconfig string
	context    string
	apiservers []string
}

// add registers the flags, as etcdFlags.add does.
func (k *kubeFlags) add(fs *pflag.FlagSet) {
	fs.StringVar(&k.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
	fs.StringVar(&k.context, "context", "", "kubeconfig context (default: its current context)")
	fs.StringSliceVar(&k.apiservers, "apiservers", nil, "apiserver URLs whose /metrics to check (default: the endpoints of the kubernetes Service)")
}

func (k *kubeFlags) config() (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = k.kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
		&clientcmd.ConfigOverrides{CurrentContext: k.context}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	return cfg, nil
}

// states reads every apiserver's metrics.
func (k *kubeFlags) states(ctx context.Context, cfg *rest.Config) ([]rollout.State, error) {
	endpoints := k.apiservers
	if len(endpoints) == 0 {
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return nil, err
		}
		if endpoints, err = rollout.Endpoints(ctx, cs); err != nil {
			return nil, fmt.Errorf("%w (name the apiservers with --apiservers)", err)
		}
	}
	var out []rollout.State
	for _, e := range endpoints {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		out = append(out, rollout.Read(rctx, cfg, e))
		cancel()
	}
	return out, nil
}

// etcdFlags are the flags that reach etcd, shared by every command that reads it.
type etcdFlags struct {
	endpoints                 []string
	caFile, certFile, keyFile string
}

// add registers the flags; defaultEndpoints is nil where etcd access is optional.
func (e *etcdFlags) add(fs *pflag.FlagSet, defaultEndpoints []string) {
	fs.StringSliceVar(&e.endpoints, "etcd-endpoints", defaultEndpoints, "etcd client URLs (comma-separated)")
	fs.StringVar(&e.caFile, "etcd-cacert", "", "CA bundle that signed etcd's server certificate (kubeadm: /etc/kubernetes/pki/etcd/ca.crt)")
	fs.StringVar(&e.certFile, "etcd-cert", "", "client certificate for etcd (kubeadm: /etc/kubernetes/pki/apiserver-etcd-client.crt)")
	fs.StringVar(&e.keyFile, "etcd-key", "", "client key for etcd (kubeadm: /etc/kubernetes/pki/apiserver-etcd-client.key)")
}

// client connects to etcd; ctx bounds the dial and every request.
func (e *etcdFlags) client(ctx context.Context) (*clientv3.Client, error) {
	tlsConfig, err := etcdTLS(e.caFile, e.certFile, e.keyFile)
	if err != nil {
		return nil, err
	}
	client, err := clientv3.New(clientv3.Config{
		Endpoints: e.endpoints, TLS: tlsConfig, DialTimeout: 10 * time.Second,
		Logger: zap.NewNop(), Context: ctx,
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	return client, nil
}

// etcdTLS builds the client TLS config; none of the files means plain http endpoints.
func etcdTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	if caFile == "" && certFile == "" && keyFile == "" {
		return nil, nil
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("--etcd-cert and --etcd-key go together")
	}
	cfg, err := tlsfiles.Files{CAFile: caFile, CertFile: certFile, KeyFile: keyFile}.Client()
	if err != nil {
		return nil, fmt.Errorf("--etcd-cacert, --etcd-cert, --etcd-key: %w", err)
	}
	return cfg, nil
}
