package rewrite

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"

	"github.com/kmsplugin/kms-plugin/internal/privatefile"
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
type Checkpoint struct {
	path string

	mu    sync.Mutex
	state checkpointFile
}

type checkpointFile struct {
	Version   int                       `json:"version"`
	Source    string                    `json:"source"`
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

const checkpointVersion = 1

// NewCheckpoint starts a fresh checkpoint at path (the file is written at the first page).
func NewCheckpoint(path string) *Checkpoint {
	return &Checkpoint{path: path, state: checkpointFile{Version: checkpointVersion, Resources: map[string]*ResourceState{}}}
}

// LoadCheckpoint reads a previous run's checkpoint at path, to resume it.
func LoadCheckpoint(path string) (*Checkpoint, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("--resume: no checkpoint at %s (a run saves one after its first finished page)", path)
	}
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	c := &Checkpoint{path: path}
	if err := json.Unmarshal(b, &c.state); err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", path, err)
	}
	if c.state.Version != checkpointVersion {
		return nil, fmt.Errorf("checkpoint %s: version %d, want %d", path, c.state.Version, checkpointVersion)
	}
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
