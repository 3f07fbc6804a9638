package rewrite

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/metadata"

	"github.com/kmsplugin/kms-plugin/integration/harness"
	"github.com/kmsplugin/kms-plugin/storage/encryptionconfig"
	"github.com/kmsplugin/kms-plugin/storage/scan"
)

// fakeAPI is an apiserver's list and patch semantics for one namespaced resource, kept in
// key order: continue tokens in the apiserver's format, a metadata patch that must carry the
// current resourceVersion, a write (new resourceVersion) only for stale objects, LISTs that
// fail as a whole on an unreadable object, and tokens that expire.
type fakeAPI struct {
	metadata.Interface // unused methods
	mu                 sync.Mutex
	rv                 int64
	objs               map[string]*fakeObj // "ns/name"
	unreadable         map[string]bool
	expired            map[string]bool // continue tokens that answer 410
	// conflictOnce makes the first patch of these objects meet a concurrent update.
	conflictOnce map[string]bool
	deleteBefore map[string]bool // deleted just before their first patch
	compacted    string          // a resourceVersion etcd has compacted: a LIST at it answers 410
	lists        []metav1.ListOptions
	patched      map[string]int
}

type fakeObj struct {
	rv    int64
	stale bool
}

func newFakeAPI(n int) *fakeAPI {
	f := &fakeAPI{objs: map[string]*fakeObj{}, unreadable: map[string]bool{}, expired: map[string]bool{},
		conflictOnce: map[string]bool{}, deleteBefore: map[string]bool{}, patched: map[string]int{}}
	for i := range n {
		f.rv++
		f.objs[fmt.Sprintf("ns/obj-%03d", i)] = &fakeObj{rv: f.rv, stale: true}
	}
	return f
}

func (f *fakeAPI) Resource(schema.GroupVersionResource) metadata.Getter { return fakeGetter{f: f} }

type fakeGetter struct {
	metadata.ResourceInterface
	f  *fakeAPI
	ns string
}

func (g fakeGetter) Namespace(ns string) metadata.ResourceInterface {
	return fakeGetter{f: g.f, ns: ns}
}

func token(start string) string {
	b, _ := json.Marshal(map[string]any{"v": "meta.k8s.io/v1", "rv": 7, "start": start})
	return base64.RawURLEncoding.EncodeToString(b)
}

func (g fakeGetter) List(_ context.Context, opts metav1.ListOptions) (*metav1.PartialObjectMetadataList, error) {
	f := g.f
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lists = append(f.lists, opts)
	if opts.ResourceVersion != "" && opts.ResourceVersion == f.compacted {
		return nil, apierrors.NewResourceExpired("too old resource version: " + opts.ResourceVersion)
	}
	if f.expired[opts.Continue] {
		st := apierrors.NewResourceExpired("The provided continue parameter is too old")
		var tok struct{ Start string }
		b, _ := base64.RawURLEncoding.DecodeString(opts.Continue)
		_ = json.Unmarshal(b, &tok)
		st.ErrStatus.ListMeta.Continue = token(tok.Start) + "fresh"
		return nil, st
	}
	start := ""
	if opts.Continue != "" {
		var tok struct{ Start string }
		b, err := base64.RawURLEncoding.DecodeString(strings.TrimSuffix(opts.Continue, "fresh"))
		if err != nil || json.Unmarshal(b, &tok) != nil {
			return nil, apierrors.NewBadRequest("invalid continue token")
		}
		start = tok.Start
	}
	var keys []string
	for k := range f.objs {
		if k >= start {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	out := &metav1.PartialObjectMetadataList{}
	for i, k := range keys {
		if opts.Limit > 0 && int64(i) == opts.Limit {
			out.Continue = token(keys[i-1] + "\x00")
			rest := int64(len(keys) - i)
			out.RemainingItemCount = &rest
			break
		}
		if f.unreadable[k] {
			// As kube-apiserver 1.37 answers.
			return nil, &apierrors.StatusError{ErrStatus: metav1.Status{Status: metav1.StatusFailure, Code: 500, Reason: "StorageReadError",
				Message: "failed to read one or more secrets from the storage: StorageError: corrupt object, Code: 7, Key: /registry/secrets/" + k +
					", ResourceVersion: 0, AdditionalErrorMsg: data from the storage is not transformable revision=0: no matching prefix"}}
		}
		ns, name, _ := strings.Cut(k, "/")
		out.Items = append(out.Items, metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: name, ResourceVersion: strconv.FormatInt(f.objs[k].rv, 10)}})
	}
	return out, nil
}

func (g fakeGetter) Get(_ context.Context, name string, _ metav1.GetOptions, _ ...string) (*metav1.PartialObjectMetadata, error) {
	f := g.f
	f.mu.Lock()
	defer f.mu.Unlock()
	o := f.objs[g.ns+"/"+name]
	if o == nil {
		return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "secrets"}, name)
	}
	return &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Namespace: g.ns, Name: name, ResourceVersion: strconv.FormatInt(o.rv, 10)}}, nil
}

func (g fakeGetter) Patch(_ context.Context, name string, pt types.PatchType, data []byte, _ metav1.PatchOptions, _ ...string) (*metav1.PartialObjectMetadata, error) {
	f := g.f
	f.mu.Lock()
	defer f.mu.Unlock()
	key := g.ns + "/" + name
	if pt != types.MergePatchType {
		return nil, apierrors.NewBadRequest("want a merge patch")
	}
	var body struct {
		Metadata map[string]string `json:"metadata"`
	}
	if err := json.Unmarshal(data, &body); err != nil || len(body.Metadata) != 1 || body.Metadata["resourceVersion"] == "" {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("want a patch of the resourceVersion alone, got %s", data))
	}
	if f.deleteBefore[key] {
		delete(f.deleteBefore, key)
		delete(f.objs, key)
	}
	o := f.objs[key]
	if o == nil {
		return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "secrets"}, name)
	}
	if f.conflictOnce[key] {
		delete(f.conflictOnce, key)
		f.rv++
		o.rv, o.stale = f.rv, false // another client's update
	}
	if body.Metadata["resourceVersion"] != strconv.FormatInt(o.rv, 10) {
		return nil, apierrors.NewConflict(schema.GroupResource{Resource: "secrets"}, name, fmt.Errorf("the object has been modified"))
	}
	f.patched[key]++
	if o.stale {
		f.rv++
		o.rv, o.stale = f.rv, false
	}
	return &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Namespace: g.ns, Name: name, ResourceVersion: strconv.FormatInt(o.rv, 10)}}, nil
}

var secrets = Target{GVR: schema.GroupVersionResource{Version: "v1", Resource: "secrets"}, Namespaced: true}

func TestRunPatchesEveryObject(t *testing.T) {
	f := newFakeAPI(25)
	f.objs["ns/obj-003"].stale = false
	f.conflictOnce["ns/obj-007"] = true
	f.deleteBefore["ns/obj-011"] = true
	cp := NewCheckpoint(filepath.Join(t.TempDir(), "cp.json"), clusterA)
	sum, err := Run(t.Context(), Options{Client: f, Targets: []Target{secrets}, PageSize: 10, Parallel: 3, Checkpoint: cp})
	if err != nil {
		t.Fatal(err)
	}
	r := sum.Resources[0]
	// obj-007 was updated by another client (so it is current), obj-003 was current already.
	want := ResourceSummary{Resource: "secrets", Examined: 25, Rewritten: 22, Current: 2, Deleted: 1, Conflicts: 1, Pages: 3}
	if r != want {
		t.Errorf("summary %+v, want %+v", r, want)
	}
	for k, o := range f.objs {
		if o.stale {
			t.Errorf("%s is still stale", k)
		}
	}
	if st := cp.Resource("secrets"); !st.Done || st.Pages != 3 || st.Objects != 25 || st.After != "ns/obj-024" {
		t.Errorf("checkpoint %+v", st)
	}
	for _, l := range f.lists {
		if l.Limit != 10 {
			t.Errorf("listed with limit %d, want the page size", l.Limit)
		}
	}
}

// One object the apiserver cannot read fails its page's LIST: that page is walked one
// object at a time, the object is reported, and everything else is patched.
func TestRunStepsOverUnreadableObject(t *testing.T) {
	f := newFakeAPI(25)
	f.unreadable["ns/obj-013"] = true
	var logs []string
	sum, err := Run(t.Context(), Options{Client: f, Targets: []Target{secrets}, PageSize: 10,
		Logf: func(format string, args ...any) { logs = append(logs, fmt.Sprintf(format, args...)) }})
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Failures) != 1 || sum.Failures[0].Name != "obj-013" || sum.Failures[0].Namespace != "ns" ||
		!strings.Contains(sum.Failures[0].Reason, "corrupt object") {
		t.Fatalf("failures %+v, want obj-013 reported with the apiserver's reason", sum.Failures)
	}
	for k, o := range f.objs {
		if o.stale != (k == "ns/obj-013") {
			t.Errorf("%s stale=%v after the run", k, o.stale)
		}
	}
	if r := sum.Resources[0]; r.Examined != 25 || r.Rewritten != 24 || r.Failed != 1 {
		t.Errorf("summary %+v: want 25 examined, 24 rewritten, 1 failed", r)
	}
	if !strings.Contains(strings.Join(logs, "\n"), "one at a time") {
		t.Errorf("no log line about the fallback: %q", logs)
	}
}

// Resuming from a checkpoint lists nothing of a finished page; an expired continue token
// goes on with the token of the apiserver's 410 answer.
func TestResumeAfterExpiredToken(t *testing.T) {
	f := newFakeAPI(30)
	path := filepath.Join(t.TempDir(), "cp.json")
	cp := NewCheckpoint(path, clusterA)
	if err := cp.begin("api", []Target{secrets}); err != nil {
		t.Fatal(err)
	}
	saved := token("ns/obj-019\x00")
	if err := cp.update("secrets", func(s *ResourceState) { s.Pages, s.Objects, s.After, s.Continue = 2, 20, "ns/obj-019", saved }); err != nil {
		t.Fatal(err)
	}
	f.expired[saved] = true
	loaded, err := LoadCheckpoint(path, clusterA)
	if err != nil {
		t.Fatal(err)
	}
	var logs []string
	sum, err := Run(t.Context(), Options{Client: f, Targets: []Target{secrets}, PageSize: 10, Checkpoint: loaded,
		Logf: func(format string, args ...any) { logs = append(logs, fmt.Sprintf(format, args...)) }})
	if err != nil {
		t.Fatal(err)
	}
	r := sum.Resources[0]
	if r.Examined != 10 || r.ResumedPages != 2 || !r.Resumed {
		t.Errorf("summary %+v: want the last 10 objects examined after 2 resumed pages", r)
	}
	for k := range f.patched {
		if k < "ns/obj-020" {
			t.Errorf("%s, of a finished page, was patched again", k)
		}
	}
	if !strings.Contains(strings.Join(logs, "\n"), "continue token expired") {
		t.Errorf("no log line about the expired token: %q", logs)
	}
	if st := loaded.Resource("secrets"); !st.Done || st.Pages != 3 {
		t.Errorf("checkpoint after the resumed run: %+v", st)
	}
}

func TestContinueAfterIsTheAPIServersFormat(t *testing.T) {
	b, err := base64.RawURLEncoding.DecodeString(continueAfter("ns/name"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), `{"v":"meta.k8s.io/v1","rv":-1,"start":"ns/name\u0000"}`; got != want {
		t.Errorf("token %s, want %s", got, want)
	}
}

func TestTransformFailureKey(t *testing.T) {
	old := apierrors.NewInternalError(fmt.Errorf("unable to transform key %q: no matching prefix", "/registry/secrets/ns/a"))
	if got := transformFailure(old); got != "/registry/secrets/ns/a" {
		t.Errorf("older message: key %q", got)
	}
	if got := transformFailure(apierrors.NewInternalError(fmt.Errorf("etcd timeout"))); got != "" {
		t.Errorf("an unrelated 500: key %q", got)
	}
}

// The etcd source with a root written as the apiserver's --etcd-prefix ("/registry", no
// final "/") reads the same keys as with "/registry/".
func TestRunFromEtcdRootWithoutSlash(t *testing.T) {
	etcd := harness.StartEtcd(t)
	cfg, err := encryptionconfig.Parse([]byte(`apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources: [{resources: [secrets], providers: [{aescbc: {keys: [{name: new, secret: ` + base64.StdEncoding.EncodeToString(make([]byte, 32)) + `}]}}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	defer cfg.Close()
	judge, err := scan.NewJudge(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeAPI(5)
	for k := range f.objs { // each stored under a key the config no longer writes with
		if _, err := etcd.Client.Put(t.Context(), "/registry/secrets/"+k, "k8s:enc:aescbc:v1:old:x"); err != nil {
			t.Fatal(err)
		}
	}
	sum, err := Run(t.Context(), Options{Client: f, Targets: []Target{secrets}, Etcd: etcd.Client, Judge: judge, Root: "/registry"})
	if err != nil {
		t.Fatal(err)
	}
	if r := sum.Resources[0]; r.Examined != 5 || r.Rewritten != 5 {
		t.Errorf("summary %+v: want the 5 secrets examined and rewritten", r)
	}
}
