// Package rewrite is the storage migration: it makes kube-apiserver write every object of some
// resources again, so that each is stored under the current write provider and key.
//
// For each object it sends a metadata-only JSON merge patch that carries the object's
// resourceVersion ({"metadata":{"resourceVersion":"..."}}), as Kubernetes' own
// StorageVersionMigrator does. Such a patch changes nothing, and the apiserver writes the
// object back to etcd only when it was read with a non-first provider or under another KMS
// key id (k8s.io/apiserver pkg/storage/etcd3/store.go GuaranteedUpdate): a current object costs
// a read, a stale one is re-encrypted. Objects are listed with metadata-only requests
// (PartialObjectMetadataList) and patched with metadata-only answers, so no Secret content
// crosses the wire in either direction.
//
// Two sources of work:
//   - the API (the default): every object is listed a page at a time and patched.
//   - etcd (Options.Etcd): the resource's keys are read a page at a time straight from etcd,
//     each value's storage is classified as scan does, and only the objects not on the write
//     key are patched, with their etcd mod revision as resourceVersion.
//
// Memory is bounded by the page size, never by the number of objects.
package rewrite

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/metadata"

	"github.com/kmsplugin/kms-plugin/storage/encryptionconfig"
	"github.com/kmsplugin/kms-plugin/storage/scan"
)

// Defaults of Options.
const (
	DefaultPageSize = 500
	DefaultParallel = 8
	// maxAttempts bounds the patches of one object that keeps changing under us.
	maxAttempts = 5
)

// Target is one resource to rewrite, as discovery resolved it.
type Target struct {
	GVR        schema.GroupVersionResource
	Namespaced bool
}

// GroupResource is the target's name in an EncryptionConfiguration's form.
func (t Target) GroupResource() encryptionconfig.GroupResource {
	return encryptionconfig.GroupResource{Group: t.GVR.Group, Resource: t.GVR.Resource}
}

func (t Target) String() string { return t.GroupResource().String() }

// Options set what Run does.
type Options struct {
	// Client lists and patches; built with the rate limit (--qps) the operator chose.
	Client  metadata.Interface
	Targets []Target
	// PageSize is the number of objects per LIST (or etcd range) request; DefaultPageSize if 0.
	PageSize int64
	// Parallel is the number of patches in flight; DefaultParallel if 0.
	Parallel int

	// Etcd, when set, switches to the etcd source: only objects not on their write key, as
	// Judge tells from the raw values under Root, are patched.
	Etcd  clientv3.KV
	Judge *scan.Judge
	Root  string // etcd key prefix of the apiserver's objects; scan.DefaultRoot if empty; "/" added if missing

	// Checkpoint, when set, is saved after each finished page, and marked finished when every
	// target is done; a Checkpoint loaded from a previous run's file resumes it.
	Checkpoint *Checkpoint
	// Progress is told about every object handled; nil for none.
	Progress Progress
	// Logf reports events worth a line (fallbacks, restarts); nil for none.
	Logf func(format string, args ...any)
}

// Progress hears about the work as it goes. Calls come from several goroutines.
type Progress interface {
	// Expect adds n to the number of objects expected (an estimate: the apiserver's
	// remainingItemCount, or the number of keys in etcd).
	Expect(n int64)
	// Add counts n objects handled, however they ended.
	Add(n int64)
}

// Summary is what a run did, per resource and in total.
type Summary struct {
	Source    string            `json:"source"` // "api", "etcd" or SourceMigration
	Resources []ResourceSummary `json:"resources"`
	Failures  []Failure         `json:"failures,omitempty"`
	Duration  time.Duration     `json:"-"`
}

// Counts of one resource. Patched objects are either Rewritten (the apiserver stored them
// again: their resourceVersion changed) or Current (the apiserver found them on the write key
// and wrote nothing).
type ResourceSummary struct {
	Resource string `json:"resource"`
	// Examined counts objects listed from the API, or keys read from etcd.
	Examined  int64 `json:"examined"`
	Rewritten int64 `json:"rewritten"`
	Current   int64 `json:"current"`
	// SkippedCurrent counts etcd values already on the write key, never patched.
	SkippedCurrent int64 `json:"skippedCurrent,omitempty"`
	// Deleted counts objects gone between the listing and their patch.
	Deleted int64 `json:"deleted"`
	// Conflicts counts patches refused because the object had changed; each was read again
	// and patched at its new resourceVersion.
	Conflicts int64 `json:"conflicts"`
	// Failed counts the objects in Summary.Failures, whether a patch or the listing failed.
	Failed int64 `json:"failed"`
	// Pages finished in this run, and pages a resumed run found already finished.
	Pages        int  `json:"pages"`
	ResumedPages int  `json:"resumedPages,omitempty"`
	Resumed      bool `json:"resumed,omitempty"`
	// NotCounted, for a StorageVersionMigration, says why Examined is no count of its objects
	// (their LIST was refused, the migration failed); "" when it is.
	NotCounted string `json:"notCounted,omitempty"`
}

// Failure is one object that was not rewritten, and why.
type Failure struct {
	Resource  string `json:"resource"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Reason    string `json:"reason"`
}

func (f Failure) String() string {
	obj := f.Name
	if f.Namespace != "" {
		obj = f.Namespace + "/" + f.Name
	}
	return fmt.Sprintf("%s %s: %s", f.Resource, obj, f.Reason)
}

// Total adds up the resources' counts.
func (s *Summary) Total() ResourceSummary {
	var t ResourceSummary
	for _, r := range s.Resources {
		t.Examined += r.Examined
		t.Rewritten += r.Rewritten
		t.Current += r.Current
		t.SkippedCurrent += r.SkippedCurrent
		t.Deleted += r.Deleted
		t.Conflicts += r.Conflicts
		t.Failed += r.Failed
		t.Pages += r.Pages
		t.ResumedPages += r.ResumedPages
	}
	return t
}

// item is one object to patch. rv is the resourceVersion it was listed at.
type item struct {
	namespace, name, rv string
}

// runner holds one run's state.
type runner struct {
	opts Options

	mu       sync.Mutex
	failures []Failure
}

// Run rewrites every target in turn. It returns the summary, which lists the objects that
// failed, and an error only when it could not go on (a LIST that keeps failing, a checkpoint
// that cannot be saved, ctx done).
func Run(ctx context.Context, opts Options) (*Summary, error) {
	if opts.PageSize <= 0 {
		opts.PageSize = DefaultPageSize
	}
	if opts.Parallel <= 0 {
		opts.Parallel = DefaultParallel
	}
	if opts.Root == "" {
		opts.Root = scan.DefaultRoot
	}
	// As scan.Scan: "/registry" would give resource prefixes like "/registrysecrets/".
	opts.Root = strings.TrimSuffix(opts.Root, "/") + "/"
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.Etcd != nil && opts.Judge == nil {
		return nil, errors.New("rewrite: the etcd source needs a Judge (an EncryptionConfiguration)")
	}
	r := &runner{opts: opts}
	sum := &Summary{Source: "api"}
	if opts.Etcd != nil {
		sum.Source = "etcd"
	}
	if cp := opts.Checkpoint; cp != nil {
		if err := cp.begin(sum.Source, opts.Targets); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	var runErr error
	for _, t := range opts.Targets {
		rs := ResourceSummary{Resource: t.String()}
		before := len(r.failures)
		var err error
		if opts.Etcd != nil {
			err = r.fromEtcd(ctx, t, &rs)
		} else {
			err = r.fromAPI(ctx, t, &rs)
		}
		// Counted from the failures, so that objects that failed while listing (not only
		// patches) are in Failed too. The target's goroutines have all ended here.
		rs.Failed = int64(len(r.failures) - before)
		sum.Resources = append(sum.Resources, rs)
		if err != nil {
			runErr = fmt.Errorf("%s: %w", t, err)
			break
		}
	}
	if cp := opts.Checkpoint; cp != nil && runErr == nil {
		if err := cp.finish(); err != nil {
			runErr = err
		}
	}
	sum.Duration = time.Since(start)
	sum.Failures = r.failures
	sort.Slice(sum.Failures, func(i, j int) bool { return sum.Failures[i].String() < sum.Failures[j].String() })
	return sum, runErr
}

func (r *runner) fail(t Target, it item, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failures = append(r.failures, Failure{Resource: t.String(), Namespace: it.namespace, Name: it.name, Reason: reason})
}

// page patches items with opts.Parallel workers and returns when all are done.
func (r *runner) page(ctx context.Context, t Target, items []item, rs *ResourceSummary) {
	var wg sync.WaitGroup
	work := make(chan item)
	var rewritten, current, deleted, conflicts atomic.Int64 // failures are in r.failures
	for range min(r.opts.Parallel, len(items)) {
		wg.Go(func() {
			for it := range work {
				res, n := r.patch(ctx, t, it)
				conflicts.Add(int64(n))
				switch res {
				case rewrittenObj:
					rewritten.Add(1)
				case currentObj:
					current.Add(1)
				case deletedObj:
					deleted.Add(1)
				}
				if r.opts.Progress != nil {
					r.opts.Progress.Add(1)
				}
			}
		})
	}
	for _, it := range items {
		work <- it
	}
	close(work)
	wg.Wait()
	rs.Rewritten += rewritten.Load()
	rs.Current += current.Load()
	rs.Deleted += deleted.Load()
	rs.Conflicts += conflicts.Load()
}

type outcome int

const (
	failedObj outcome = iota
	rewrittenObj
	currentObj
	deletedObj
)

// patch sends the metadata-only merge patch carrying it.rv. On a conflict (the object
// changed since it was listed) it reads the object's metadata again and patches at the new
// resourceVersion; it returns the outcome and the number of conflicts met.
func (r *runner) patch(ctx context.Context, t Target, it item) (outcome, int) {
	client := r.resource(t, it.namespace)
	rv := it.rv
	conflicts := 0
	for attempt := 1; ; attempt++ {
		body := fmt.Appendf(nil, `{"metadata":{"resourceVersion":%q}}`, rv)
		got, err := client.Patch(ctx, it.name, types.MergePatchType, body, metav1.PatchOptions{})
		switch {
		case err == nil:
			if got.ResourceVersion != rv {
				return rewrittenObj, conflicts
			}
			return currentObj, conflicts
		case apierrors.IsNotFound(err):
			return deletedObj, conflicts
		case apierrors.IsConflict(err) && attempt < maxAttempts:
			conflicts++
			cur, err := client.Get(ctx, it.name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return deletedObj, conflicts
			}
			if err != nil {
				r.fail(t, it, "reading it again after a conflict: "+reason(err))
				return failedObj, conflicts
			}
			rv = cur.ResourceVersion
		default:
			r.fail(t, it, reason(err))
			return failedObj, conflicts
		}
	}
}

func (r *runner) resource(t Target, namespace string) metadata.ResourceInterface {
	c := r.opts.Client.Resource(t.GVR)
	if t.Namespaced {
		return c.Namespace(namespace)
	}
	return c
}

// reason is an API error's message, without client-go's wrapping when there is a status.
func reason(err error) string {
	var st apierrors.APIStatus
	if errors.As(err, &st) {
		s := st.Status()
		return fmt.Sprintf("%s (HTTP %d): %s", s.Reason, s.Code, s.Message)
	}
	return err.Error()
}

// splitKey cuts an object's etcd key below its resource prefix into namespace and name.
func splitKey(t Target, rest string) (item, bool) {
	if !t.Namespaced {
		if rest == "" || strings.Contains(rest, "/") {
			return item{}, false
		}
		return item{name: rest}, true
	}
	ns, name, ok := strings.Cut(rest, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return item{}, false
	}
	return item{namespace: ns, name: name}, true
}
