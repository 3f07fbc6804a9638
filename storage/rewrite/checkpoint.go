package rewrite

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kmsplugin/kms-plugin/internal/privatefile"
	"github.com/kmsplugin/kms-plugin/storage/rollout"
)

// Checkpoint is the file a run saves after each finished page, from which --resume goes on.
//
// Per resource it holds the number of finished pages and objects, the key (below the
// resource's etcd prefix: "namespace/name", or "name" for a cluster-scoped resource) of the
// last object of the last finished page, and, for the API source, the continue token of the
// next page. Resuming, a run skips finished resources and starts each unfinished one after
// its last finished object: nothing of a finished page is listed or patched again; the objects
// of the page that was in flight when the run stopped are patched again (the apiserver writes
// none of them twice: a current object is not written).
//
// A finished page is only worth skipping on the cluster it was rewritten on, while the
// apiservers still write under the key it was rewritten to: the file records the Cluster,
// and LoadCheckpoint refuses it for another cluster, for other write keys, and once the run
// has finished.
type Checkpoint struct {
	path string

	mu    sync.Mutex
	state checkpointFile
}

type checkpointFile struct {
	Version int     `json:"version"`
	Cluster Cluster `json:"cluster"`
	Source  string  `json:"source"`
	// Finished is when the run ended with every resource done; zero until then.
	Finished  time.Time                 `json:"finished,omitzero"`
	Resources map[string]*ResourceState `json:"resources"`
}

// ResourceState is one resource's progress in a checkpoint.
type ResourceState struct {
	Done     bool   `json:"done,omitempty"`
	Pages    int    `json:"pages"`
	Objects  int64  `json:"objects"`
	After    string `json:"after,omitempty"`
	Continue string `json:"continue,omitempty"`
}

// checkpointVersion 2 added the cluster and the finish time; version 1 files are refused.
const checkpointVersion = 2

// Cluster is what a run rewrites: which cluster, and what its apiservers write under as the
// run starts.
type Cluster struct {
	// Server is the URL the run reached the cluster at. It is told in messages, not compared:
	// one cluster is reached at several (a load balancer, each apiserver).
	Server string `json:"server"`
	// UID is the kube-system namespace's UID: made once with the cluster, it tells one
	// cluster from another.
	UID string `json:"kubeSystemUID"`
	// Writes is what every apiserver wrote under as the run started; nil when not known
	// (--force, with apiservers whose metrics could not be read or that disagreed).
	Writes *Writes `json:"writes"`
}

// Writes is what the apiservers write new objects under, from their metrics: per KMS v2
// provider the hash of the key id its plugin reports (rollout.HashKeyID), and the hashes of
// the EncryptionConfiguration files they run (rollout.HashConfig), which hold the local
// providers' keys. A rotation changes one or the other.
type Writes struct {
	KeyIDs  map[string]string `json:"keyIDs,omitempty"`
	Configs []string          `json:"configs,omitempty"`
}

// WritesOf is what the apiservers of states write under, or nil when that is not known: no
// apiserver, one whose metrics could not be read, or apiservers that write a provider's
// objects under different key ids.
func WritesOf(states []rollout.State) *Writes {
	if len(states) == 0 || len(rollout.Disagreements(states, rollout.Want{})) > 0 {
		return nil
	}
	w := &Writes{KeyIDs: map[string]string{}}
	for _, s := range states {
		for name, pk := range s.Providers {
			w.KeyIDs[name] = pk.WritesWith()
		}
		if s.ConfigHash != "" && !slices.Contains(w.Configs, s.ConfigHash) {
			w.Configs = append(w.Configs, s.ConfigHash)
		}
	}
	sort.Strings(w.Configs)
	return w
}

// Equal reports whether w and o say the same.
func (w *Writes) Equal(o *Writes) bool {
	if w == nil || o == nil {
		return w == o
	}
	return maps.Equal(w.KeyIDs, o.KeyIDs) && slices.Equal(w.Configs, o.Configs)
}

func (w *Writes) String() string {
	if w == nil {
		return "unknown"
	}
	var parts []string
	names := slices.Sorted(maps.Keys(w.KeyIDs))
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("KMS provider %q under key id %s", n, rollout.Short(w.KeyIDs[n])))
	}
	configs := make([]string, len(w.Configs))
	for i, c := range w.Configs {
		configs[i] = rollout.Short(c)
	}
	if len(configs) > 0 {
		parts = append(parts, "EncryptionConfiguration "+strings.Join(configs, ", "))
	}
	if len(parts) == 0 {
		return "no KMS provider and no EncryptionConfiguration"
	}
	return strings.Join(parts, "; ")
}

// ClusterOf identifies the cluster cs reaches at server by its kube-system namespace, with
// what its apiservers write under (nil when not known).
func ClusterOf(ctx context.Context, cs kubernetes.Interface, server string, writes *Writes) (Cluster, error) {
	ns, err := cs.CoreV1().Namespaces().Get(ctx, metav1.NamespaceSystem, metav1.GetOptions{})
	if err != nil {
		return Cluster{}, fmt.Errorf("reading the kube-system namespace, whose UID identifies the cluster in the checkpoint: %s", reason(err))
	}
	return Cluster{Server: server, UID: string(ns.UID), Writes: writes}, nil
}

// NewCheckpoint starts a fresh checkpoint at path for a run on cluster (the file is written
// when the run begins).
func NewCheckpoint(path string, cluster Cluster) *Checkpoint {
	return &Checkpoint{path: path, state: checkpointFile{Version: checkpointVersion, Cluster: cluster, Resources: map[string]*ResourceState{}}}
}

// LoadCheckpoint reads a previous run's checkpoint at path, to resume it on cluster. The
// file is read as a private file (privatefile.Read: owner-only, as it was written). It is
// refused when it was made on another cluster, when the apiservers write under other keys
// now than when it was made (or either is not known), and when its run finished: in each
// case its finished pages may hold stale objects, and skipping them would leave them so.
func LoadCheckpoint(path string, cluster Cluster) (*Checkpoint, error) {
	b, err := privatefile.Read(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("--resume: no checkpoint at %s (a run saves one after its first finished page)", path)
	}
	if err != nil {
		return nil, fmt.Errorf("--resume: checkpoint: %w", err)
	}
	c := &Checkpoint{path: path}
	if err := json.Unmarshal(b, &c.state); err != nil {
		return nil, fmt.Errorf("--resume: checkpoint %s: %w", path, err)
	}
	fresh := "run without --resume (a fresh run lists every object again; those already on the write key cost one read each)"
	if c.state.Version != checkpointVersion {
		return nil, fmt.Errorf("--resume: checkpoint %s is version %d, this kmsctl reads version %d (which records the cluster and the write key): %s",
			path, c.state.Version, checkpointVersion, fresh)
	}
	saved := c.state.Cluster
	if saved.UID != cluster.UID {
		return nil, fmt.Errorf("--resume: checkpoint %s was made on another cluster (%s, kube-system namespace UID %s), not this one (%s, UID %s): its finished pages say nothing about this cluster's objects; %s",
			path, saved.Server, saved.UID, cluster.Server, cluster.UID, fresh)
	}
	switch {
	case saved.Writes == nil:
		return nil, fmt.Errorf("--resume: checkpoint %s does not record what the apiservers wrote under when its run started (it ran with --force while their metrics could not be read or disagreed), so a rotation since cannot be ruled out; %s", path, fresh)
	case cluster.Writes == nil:
		return nil, fmt.Errorf("--resume: cannot tell what the apiservers write under now (--force, and their metrics could not be read or disagree), so a rotation since checkpoint %s was made cannot be ruled out; %s", path, fresh)
	case !saved.Writes.Equal(cluster.Writes):
		return nil, fmt.Errorf("--resume: checkpoint %s is of a run that rewrote to %s; the apiservers now write %s: after a rotation the objects of its finished pages are stale again; %s",
			path, saved.Writes, cluster.Writes, fresh)
	}
	if !c.state.Finished.IsZero() {
		return nil, fmt.Errorf("--resume: checkpoint %s is of a run that finished at %s: there is nothing to resume; to rewrite again (to retry objects that failed, or after a rotation), %s",
			path, c.state.Finished.Format(time.RFC3339), fresh)
	}
	c.state.Cluster.Server = cluster.Server
	if c.state.Resources == nil {
		c.state.Resources = map[string]*ResourceState{}
	}
	return c, nil
}

// begin checks that a resumed checkpoint was made with the same source, and saves the
// resources of this run.
func (c *Checkpoint) begin(source string, targets []Target) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state.Source != "" && c.state.Source != source {
		return fmt.Errorf("checkpoint %s was made reading from %s, this run reads from %s: run with the same flags, or without --resume", c.path, c.state.Source, source)
	}
	c.state.Source = source
	for _, t := range targets {
		if c.state.Resources[t.String()] == nil {
			c.state.Resources[t.String()] = &ResourceState{}
		}
	}
	return c.saveLocked()
}

// finish records that the run ended with every resource done: the file can no longer be
// resumed.
func (c *Checkpoint) finish() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.state.Finished = time.Now().UTC().Truncate(time.Second)
	return c.saveLocked()
}

// Resource returns a copy of one resource's progress.
func (c *Checkpoint) Resource(name string) ResourceState {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.state.Resources[name]; s != nil {
		return *s
	}
	return ResourceState{}
}

// update changes one resource's progress and saves the file.
func (c *Checkpoint) update(name string, f func(*ResourceState)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.state.Resources[name]
	if s == nil {
		s = &ResourceState{}
		c.state.Resources[name] = s
	}
	f(s)
	return c.saveLocked()
}

// saveLocked writes the file in one synced rename, so a run killed (or a machine crashing) at
// any moment leaves either the previous checkpoint or the new one.
func (c *Checkpoint) saveLocked() error {
	b, err := json.MarshalIndent(c.state, "", "  ")
	if err != nil {
		return err
	}
	if err := privatefile.Write(c.path, append(b, '\n'), true); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	return nil
}
