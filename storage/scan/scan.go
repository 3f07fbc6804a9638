// Package scan reports how the objects in etcd are stored: in plaintext, with which local
// provider and key, or with which KMS provider and key id, per resource, flagging those that
// are not on the key new writes use, and which carry a recovery seal. It reads etcd's raw
// values and decrypts nothing (but, given the recovery private key, every value sealed to it,
// whole); it is the automated form of checking values with etcdctl.
package scan

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/kmsplugin/kms-plugin/storage/encryptionconfig"
	"github.com/kmsplugin/kms-plugin/storage/providers"
)

// DefaultRoot is where kube-apiserver keeps its objects (--etcd-prefix=/registry).
const DefaultRoot = "/registry/"

// DefaultPageSize bounds how many values one etcd request returns, and so scan's memory
// (at most this many values, each at most etcd's request limit, 1.5 MiB by default).
const DefaultPageSize = 256

// Options set what Scan reads.
type Options struct {
	Root     string // key prefix to walk; DefaultRoot if empty; a missing final "/" is added
	PageSize int64  // keys per etcd request; DefaultPageSize if 0
	// Config, if set, tells which storage each resource's new writes get; without it nothing
	// is flagged stale.
	Config *encryptionconfig.Config
	// Recovery, if set, is a plugin that reads with the recovery key alone: each KMS v2 value
	// that carries a seal of it is decrypted whole (its DEK seed, then its data, as the
	// apiserver does), and the report counts which open.
	Recovery kmsapi.KeyManagementServiceClient
	// RecoveryKey is Recovery's key id.
	RecoveryKey string
}

// RecoveryCheck is what a scan with the recovery private key found: of the KMS v2 values, how
// many carry a seal of that key and decrypt whole (DEK seed and data) with it alone.
type RecoveryCheck struct {
	Key      string   `json:"recoveryKey"`
	KMSv2    int      `json:"kmsV2Objects"`
	Opened   int      `json:"opened"`
	Failed   int      `json:"failed"`
	Unsealed int      `json:"notSealedToThisKey"`
	Examples []string `json:"failedExamples,omitempty"` // etcd keys of the first failures and unsealed objects

	readers map[string]*providers.KMSv2 // by provider name: each caches the seeds it opened
}

// maxExamples bounds the etcd keys a RecoveryCheck lists.
const maxExamples = 10

func (c *RecoveryCheck) count(ctx context.Context, client kmsapi.KeyManagementServiceClient, key string, st Storage, value []byte) {
	if st.Class != KMSv2 {
		return
	}
	c.KMSv2++
	example := func() {
		if len(c.Examples) < maxExamples {
			c.Examples = append(c.Examples, key)
		}
	}
	if st.Recovery != c.Key {
		c.Unsealed++
		example()
		return
	}
	// The whole value, through the reader kmsctl decrypt uses: a seed that opens is not yet
	// data that reads (the data's own AES-GCM, bound to the etcd key, must open too).
	r := c.readers[st.Provider]
	if r == nil {
		if c.readers == nil {
			c.readers = map[string]*providers.KMSv2{}
		}
		r = providers.NewKMSv2(st.Provider, client, 0)
		c.readers[st.Provider] = r
	}
	plain, err := r.Decrypt(ctx, value[len(providers.KMSv2Prefix)+len(st.Provider)+1:], []byte(key))
	clear(plain)
	if err != nil {
		c.Failed++
		example()
		return
	}
	c.Opened++
}

// Report is the result of one scan, taken at one etcd revision.
type Report struct {
	Revision  int64  `json:"revision"`
	Root      string `json:"root"`
	Objects   int    `json:"objects"`
	Plaintext int    `json:"plaintext"`
	// Stale counts objects not on their resource's write key; only with a config.
	Stale int `json:"stale"`
	// VaultKubernetesKMS counts KMS v2 objects still in vault-kubernetes-kms's envelope format
	// (Storage.Format), by transit key version ("vault:vN"); none left is the sunset of the
	// plugin's --vault-read-vault-kubernetes-kms.
	VaultKubernetesKMS map[string]int   `json:"vaultKubernetesKMS,omitempty"`
	Checked            bool             `json:"checkedWriteKeys"`
	KMS                []KMSStatus      `json:"kmsProviders,omitempty"`
	Resources          []ResourceReport `json:"resources"`
	Recovery           *RecoveryCheck   `json:"recovery,omitempty"`
}

// ResourceReport counts one resource's objects by storage.
type ResourceReport struct {
	Resource  string `json:"resource"`
	Prefix    string `json:"etcdPrefix"`
	Known     bool   `json:"known"`
	Objects   int    `json:"objects"`
	Plaintext int    `json:"plaintext"`
	Stale     int    `json:"stale"`
	// Write is the storage new writes of this resource get, per the config.
	Write   *Storage       `json:"writeKey,omitempty"`
	Storage []StorageCount `json:"storage"`
}

// StorageCount is how many objects of a resource share one storage.
type StorageCount struct {
	Storage
	Objects int `json:"objects"`
	// Current is true when this is the write key, false when these objects are stale; absent
	// without a config.
	Current *bool `json:"current,omitempty"`
}

// Scan walks every key under opts.Root at a single revision, a page at a time, and counts
// how each value is stored. For the KMS v2 providers of opts.Config it first asks each plugin
// for its current key id; a plugin that does not answer is an error, since without its key id
// scan cannot tell a finished rotation from an unfinished one.
func Scan(ctx context.Context, kv clientv3.KV, opts Options) (*Report, error) {
	if opts.Root == "" {
		opts.Root = DefaultRoot
	}
	// "/registry" is the apiserver's --etcd-prefix as operators write it: without the "/",
	// resource prefixes would come out as "/registrysecrets/".
	opts.Root = strings.TrimSuffix(opts.Root, "/") + "/"
	if opts.PageSize <= 0 {
		opts.PageSize = DefaultPageSize
	}
	rep := &Report{Root: opts.Root, Checked: opts.Config != nil}
	if opts.Recovery != nil {
		rep.Recovery = &RecoveryCheck{Key: opts.RecoveryKey}
	}
	write, err := writeKeys(ctx, opts.Config, rep)
	if err != nil {
		return nil, err
	}
	var known []string
	if opts.Config != nil {
		known = names(opts.Config)
	}

	byPrefix := map[string]*tally{}
	end := clientv3.GetPrefixRangeEnd(opts.Root)
	next := opts.Root
	for {
		getOpts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(opts.PageSize)}
		if rep.Revision != 0 {
			getOpts = append(getOpts, clientv3.WithRev(rep.Revision))
		}
		resp, err := kv.Get(ctx, next, getOpts...)
		if err != nil {
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return nil, fmt.Errorf("reading etcd: %w", err)
			}
			return nil, fmt.Errorf("reading etcd at %s: %w", next, err)
		}
		if rep.Revision == 0 {
			rep.Revision = resp.Header.Revision
		}
		for _, item := range resp.Kvs {
			key := string(item.Key)
			res := encryptionconfig.ResourceOf(opts.Root, key)
			t := byPrefix[res.Prefix]
			if t == nil {
				t = &tally{res: res, counts: map[Storage]int{}}
				if opts.Config != nil {
					w := write(res)
					t.write = &w
				}
				byPrefix[res.Prefix] = t
			}
			st := Classify(item.Value, known)
			t.counts[st]++
			if rep.Recovery != nil {
				rep.Recovery.count(ctx, opts.Recovery, key, st, item.Value)
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		next = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}

	for _, t := range byPrefix {
		rep.Resources = append(rep.Resources, t.report())
	}
	sort.Slice(rep.Resources, func(i, j int) bool { return rep.Resources[i].Prefix < rep.Resources[j].Prefix })
	for _, r := range rep.Resources {
		rep.Objects += r.Objects
		rep.Plaintext += r.Plaintext
		rep.Stale += r.Stale
		for _, c := range r.Storage {
			if c.Format == VaultKubernetesKMS {
				if rep.VaultKubernetesKMS == nil {
					rep.VaultKubernetesKMS = map[string]int{}
				}
				rep.VaultKubernetesKMS[c.Key] += c.Objects
			}
		}
	}
	return rep, nil
}

// writeKeys resolves the write key of every rule's first provider, querying KMS v2 plugins
// once each, and returns the lookup from resource to write key.
func writeKeys(ctx context.Context, cfg *encryptionconfig.Config, rep *Report) (func(encryptionconfig.Resource) Storage, error) {
	if cfg == nil {
		return nil, nil
	}
	keyIDs := map[string]string{} // KMS v2 provider name -> current key id
	for _, p := range WriteKMSv2Providers(cfg) {
		st, err := QueryStatus(ctx, p)
		if err != nil {
			return nil, fmt.Errorf("%w (scan needs the current key id; run it where the plugin's socket is reachable, or without --encryption-config)", err)
		}
		keyIDs[p.Name] = st.KeyID
		rep.KMS = append(rep.KMS, st)
	}
	return func(r encryptionconfig.Resource) Storage {
		w := writeKey(cfg.ProvidersFor(r.GroupResource)[0])
		if w.Class == KMSv2 {
			w.Key = keyIDs[w.Provider]
		}
		return w
	}, nil
}

// WriteKMSv2Providers returns the KMS v2 providers that some rule of cfg writes with (its
// first provider), once each by name, in rule order: the plugins whose current key id new
// writes get.
func WriteKMSv2Providers(cfg *encryptionconfig.Config) []encryptionconfig.Provider {
	var out []encryptionconfig.Provider
	seen := map[string]bool{}
	for _, rule := range cfg.Rules() {
		p := rule.Providers[0]
		if p.Prefix != providers.KMSv2Prefix || seen[p.Name] {
			continue
		}
		seen[p.Name] = true
		out = append(out, p)
	}
	return out
}

type tally struct {
	res    encryptionconfig.Resource
	write  *Storage
	counts map[Storage]int
}

func (t *tally) report() ResourceReport {
	r := ResourceReport{Resource: t.res.String(), Prefix: t.res.Prefix, Known: t.res.Known, Write: t.write}
	for s, n := range t.counts {
		c := StorageCount{Storage: s, Objects: n}
		r.Objects += n
		if s.Class == Plaintext {
			r.Plaintext += n
		}
		if t.write != nil {
			current := isCurrent(s, *t.write)
			c.Current = &current
			if !current {
				r.Stale += n
			}
		}
		r.Storage = append(r.Storage, c)
	}
	sort.Slice(r.Storage, func(i, j int) bool {
		a, b := r.Storage[i], r.Storage[j]
		if a.Class != b.Class {
			return a.Class < b.Class
		}
		if a.Provider != b.Provider {
			return a.Provider < b.Provider
		}
		if a.Key != b.Key {
			return a.Key < b.Key
		}
		if a.Format != b.Format {
			return a.Format < b.Format
		}
		return a.Recovery < b.Recovery
	})
	return r
}

// isCurrent tells whether a value stored as s is on the write key w. KMS v1 values carry no
// key id, so every value of the right v1 provider counts as current.
func isCurrent(s, w Storage) bool {
	if w.Class == KMSv1 {
		return s.Class == KMSv1 && s.Provider == w.Provider
	}
	return s.Class == w.Class && s.Provider == w.Provider && s.Key == w.Key
}
