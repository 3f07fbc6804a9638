package rewrite

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kmsplugin/kms-plugin/storage/encryptionconfig"
)

// pageWork is one page to patch: its objects, where the next page starts, and the key of
// its last object (for the checkpoint).
type pageWork struct {
	items    []item
	examined int64
	skipped  int64 // etcd source: values already on the write key
	after    string
	next     string // API source: continue token of the next page; "" after the last
	last     bool
	err      error
}

// consume patches the pages a producer sends, saving the checkpoint after each, until the
// last page or an error.
func (r *runner) consume(ctx context.Context, t Target, rs *ResourceSummary, pages <-chan pageWork) error {
	for p := range pages {
		if p.err != nil {
			return p.err
		}
		rs.Examined += p.examined
		rs.SkippedCurrent += p.skipped
		if r.opts.Progress != nil && p.skipped > 0 {
			r.opts.Progress.Add(p.skipped)
		}
		r.page(ctx, t, p.items, rs)
		if err := ctx.Err(); err != nil {
			return err // the page may be unfinished: not checkpointed
		}
		rs.Pages++
		if cp := r.opts.Checkpoint; cp != nil {
			err := cp.update(t.String(), func(s *ResourceState) {
				s.Pages++
				s.Objects += p.examined
				if p.after != "" {
					s.After = p.after
				}
				s.Continue = p.next
				s.Done = p.last
			})
			if err != nil {
				return err
			}
		}
		if p.last {
			return nil
		}
	}
	return ctx.Err()
}

// run reads pages with next in its own goroutine, so the next page is being read while this
// one is patched (at most two pages are held), and consumes them. next is called until it
// returns the last page or an error, only from that goroutine.
func (r *runner) run(ctx context.Context, t Target, rs *ResourceSummary, next func(context.Context) pageWork) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pages := make(chan pageWork, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(pages)
		for {
			p := next(ctx)
			select {
			case pages <- p:
			case <-ctx.Done():
				return
			}
			if p.err != nil || p.last {
				return
			}
		}
	}()
	err := r.consume(ctx, t, rs, pages)
	cancel()
	for range pages { // let the producer end
	}
	<-done
	return err
}

// resumed fills rs from the checkpoint and returns the resource's saved state (Done when
// it is already finished).
func (r *runner) resumed(t Target, rs *ResourceSummary) ResourceState {
	if r.opts.Checkpoint == nil {
		return ResourceState{}
	}
	st := r.opts.Checkpoint.Resource(t.String())
	rs.ResumedPages = st.Pages
	rs.Resumed = st.Pages > 0 || st.Done
	if st.Done {
		r.opts.Logf("%s: finished in the checkpointed run (%d pages, %d objects)", t, st.Pages, st.Objects)
	} else if st.Pages > 0 {
		r.opts.Logf("%s: resuming after %d finished pages (%d objects), after %q", t, st.Pages, st.Objects, st.After)
	}
	return st
}

// fromAPI lists the resource through the apiserver, metadata only, a page at a time.
//
// A LIST fails as a whole when one object of the page cannot be read (the apiserver answers
// 500 "unable to transform key ..."). Then that page is walked one object per LIST (limit 1
// from the same continue token); the object the apiserver cannot read is reported as failed
// and skipped with a continue token that starts right after its key, and the rest of the page
// is patched.
//
// A continue token expires when etcd compacts the revision it reads at (410 Gone). The
// apiserver's 410 answer then carries a token for the same position at the latest revision,
// which is taken: nothing is listed twice, and objects created meanwhile before that position
// are not listed (they were written under the current key anyway).
func (r *runner) fromAPI(ctx context.Context, t Target, rs *ResourceSummary) error {
	st := r.resumed(t, rs)
	if st.Done {
		return nil
	}
	cont := st.Continue
	if cont == "" && st.After != "" {
		cont = continueAfter(st.After)
	}
	first := true
	return r.run(ctx, t, rs, func(ctx context.Context) pageWork {
		p := r.listPage(ctx, t, &cont, first)
		first = false
		return p
	})
}

// listPage reads the page at *cont and advances *cont to the next one.
func (r *runner) listPage(ctx context.Context, t Target, cont *string, first bool) pageWork {
	list := r.opts.Client.Resource(t.GVR)
	for attempt := 1; ; attempt++ {
		page, err := list.List(ctx, metav1.ListOptions{Limit: r.opts.PageSize, Continue: *cont})
		switch {
		case err == nil:
			p := pageWork{examined: int64(len(page.Items)), next: page.Continue, last: page.Continue == ""}
			for _, o := range page.Items {
				it := item{namespace: o.Namespace, name: o.Name, rv: o.ResourceVersion}
				p.items = append(p.items, it)
				p.after = relKey(t, it)
			}
			if first && r.opts.Progress != nil {
				n := int64(len(page.Items))
				if page.RemainingItemCount != nil {
					n += *page.RemainingItemCount
				}
				r.opts.Progress.Expect(n)
			}
			*cont = page.Continue
			return p
		case apierrors.IsResourceExpired(err) || apierrors.IsGone(err):
			var st apierrors.APIStatus
			if errors.As(err, &st) && st.Status().ListMeta.Continue != "" {
				r.opts.Logf("%s: the continue token expired (etcd compacted its revision): going on from the same object at the latest revision", t)
				*cont = st.Status().ListMeta.Continue
				continue
			}
			return pageWork{err: fmt.Errorf("listing: %s, and the apiserver gave no continue token to go on with", reason(err))}
		case transformFailure(err) != "":
			r.opts.Logf("%s: a page failed to list (%s): listing its objects one at a time", t, reason(err))
			return r.oneByOne(ctx, t, cont)
		case attempt < 4 && retriable(err):
			r.opts.Logf("%s: listing: %s; retrying", t, reason(err))
			if !sleep(ctx, time.Duration(attempt)*time.Second) {
				return pageWork{err: ctx.Err()}
			}
		default:
			return pageWork{err: fmt.Errorf("listing: %s", reason(err))}
		}
	}
}

// oneByOne walks one page's worth of objects from *cont with a LIST of one object each,
// reporting and stepping over every object the apiserver cannot read.
func (r *runner) oneByOne(ctx context.Context, t Target, cont *string) pageWork {
	list := r.opts.Client.Resource(t.GVR)
	var p pageWork
	for int64(len(p.items)) < r.opts.PageSize {
		page, err := list.List(ctx, metav1.ListOptions{Limit: 1, Continue: *cont})
		if err != nil {
			key := transformFailure(err)
			if key == "" {
				return pageWork{err: fmt.Errorf("listing one object at a time: %s", reason(err))}
			}
			it, ok := itemOfKey(t, key)
			if !ok {
				return pageWork{err: fmt.Errorf("listing: %s: cannot tell which object key %q is", reason(err), key)}
			}
			r.fail(t, it, "cannot be read by the apiserver: "+reason(err))
			if r.opts.Progress != nil {
				r.opts.Progress.Add(1)
			}
			p.examined++
			p.after = relKey(t, it)
			*cont = continueAfter(p.after)
			continue
		}
		for _, o := range page.Items {
			it := item{namespace: o.Namespace, name: o.Name, rv: o.ResourceVersion}
			p.items = append(p.items, it)
			p.examined++
			p.after = relKey(t, it)
		}
		*cont = page.Continue
		if page.Continue == "" {
			p.last = true
			break
		}
	}
	p.next = *cont
	return p
}

// fromEtcd reads the resource's keys and values from etcd a page at a time and sends the
// objects that are not on their write key.
func (r *runner) fromEtcd(ctx context.Context, t Target, rs *ResourceSummary) error {
	st := r.resumed(t, rs)
	if st.Done {
		return nil
	}
	gr := t.GroupResource()
	prefix := encryptionconfig.PrefixOf(r.opts.Root, gr)
	res := encryptionconfig.Resource{GroupResource: gr, Prefix: prefix, Known: true}
	end := clientv3.GetPrefixRangeEnd(prefix)
	start := prefix
	if st.After != "" {
		start = prefix + st.After + "\x00"
	}
	if r.opts.Progress != nil {
		resp, err := r.opts.Etcd.Get(ctx, start, clientv3.WithRange(end), clientv3.WithCountOnly())
		if err != nil {
			return fmt.Errorf("counting keys under %s in etcd: %w", prefix, err)
		}
		r.opts.Progress.Expect(resp.Count)
	}
	next := start
	return r.run(ctx, t, rs, func(ctx context.Context) pageWork {
		var p pageWork
		resp, err := r.opts.Etcd.Get(ctx, next, clientv3.WithRange(end), clientv3.WithLimit(r.opts.PageSize))
		if err != nil {
			p.err = fmt.Errorf("reading etcd at %s: %w", next, err)
			return p
		}
		for _, kv := range resp.Kvs {
			rest := strings.TrimPrefix(string(kv.Key), prefix)
			p.examined++
			p.after = rest
			if _, current := r.opts.Judge.Current(res, kv.Value); current {
				p.skipped++
				continue
			}
			it, ok := splitKey(t, rest)
			if !ok {
				r.fail(t, item{name: string(kv.Key)}, "an etcd key that names no object of this resource")
				continue
			}
			it.rv = strconv.FormatInt(kv.ModRevision, 10)
			p.items = append(p.items, it)
		}
		p.last = !resp.More || len(resp.Kvs) == 0
		if !p.last {
			next = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
		return p
	})
}

// relKey is an object's etcd key below its resource's prefix, the order a LIST returns.
func relKey(t Target, it item) string {
	if t.Namespaced {
		return it.namespace + "/" + it.name
	}
	return it.name
}

// itemOfKey finds the object an apiserver error names by its full etcd key: its last path
// segment (or two, for a namespaced resource), since names hold no "/".
func itemOfKey(t Target, key string) (item, bool) {
	segs := strings.Split(key, "/")
	n := 1
	if t.Namespaced {
		n = 2
	}
	if len(segs) < n+1 {
		return item{}, false
	}
	return splitKey(t, strings.Join(segs[len(segs)-n:], "/"))
}

// continueAfter is a continue token for the list that starts right after the object at
// rel (a key below the resource's prefix), at the latest revision: the form the apiserver
// itself hands out after a compaction (k8s.io/apiserver pkg/storage/continue.go, rv -1).
func continueAfter(rel string) string {
	b, _ := json.Marshal(struct {
		APIVersion      string `json:"v"`
		ResourceVersion int64  `json:"rv"`
		StartKey        string `json:"start"`
	}{"meta.k8s.io/v1", -1, rel + "\x00"})
	return base64.RawURLEncoding.EncodeToString(b)
}

// transformKeys find the etcd key in the apiserver's messages for an object it cannot
// decrypt or decode: 1.37's StorageReadError ("corrupt object, Code: 7, Key: /registry/...,")
// and the older InternalError ("unable to transform key \"/registry/...\"").
var transformKeys = []*regexp.Regexp{
	regexp.MustCompile(`corrupt object, Code: \d+, Key: ([^,\s]+)`),
	regexp.MustCompile(`unable to transform key "([^"]+)"`),
}

// transformFailure returns the etcd key of the object that made a request fail because the
// apiserver could not decrypt or decode it, or "".
func transformFailure(err error) string {
	var st apierrors.APIStatus
	if !errors.As(err, &st) || st.Status().Code != 500 {
		return ""
	}
	for _, re := range transformKeys {
		if m := re.FindStringSubmatch(st.Status().Message); m != nil {
			return m[1]
		}
	}
	return ""
}

func retriable(err error) bool {
	return apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) || apierrors.IsTooManyRequests(err) ||
		apierrors.IsServiceUnavailable(err)
}

func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
