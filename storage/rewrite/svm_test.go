package rewrite

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	storagemigrationv1 "k8s.io/api/storagemigration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/metadata"
	k8stesting "k8s.io/client-go/testing"
)

// migrator is kube-controller-manager's storage version migrator as the API shows it: a
// created StorageVersionMigration gets a name, and reads back as succeeded at resourceVersion
// rv.
func migrator(rv string) *fake.Clientset {
	cs := fake.NewClientset()
	cs.PrependReactor("create", "storageversionmigrations", func(a k8stesting.Action) (bool, runtime.Object, error) {
		m := a.(k8stesting.CreateAction).GetObject().(*storagemigrationv1.StorageVersionMigration).DeepCopy()
		m.Name = m.GenerateName + "x1"
		return true, m, nil
	})
	cs.PrependReactor("get", "storageversionmigrations", func(a k8stesting.Action) (bool, runtime.Object, error) {
		m := &storagemigrationv1.StorageVersionMigration{ObjectMeta: metav1.ObjectMeta{Name: a.(k8stesting.GetAction).GetName()}}
		m.Status.ResourceVersion = rv
		m.Status.Conditions = []metav1.Condition{{Type: string(storagemigrationv1.MigrationSucceeded), Status: metav1.ConditionTrue}}
		return true, m, nil
	})
	return cs
}

// A succeeded migration's objects are counted at its resourceVersion, a page at a time: the
// summary says how many objects it covered, not 0.
func TestViaMigrationsCountsObjects(t *testing.T) {
	f := newFakeAPI(1234)
	var logs []string
	sum, err := ViaMigrations(t.Context(), migrator("77"), f, []Target{secrets}, 0,
		func(format string, args ...any) { logs = append(logs, fmt.Sprintf(format, args...)) })
	if err != nil {
		t.Fatal(err)
	}
	if r := sum.Resources[0]; r.Examined != 1234 || r.NotCounted != "" || r.Failed != 0 {
		t.Errorf("summary %+v: want the 1234 objects counted", r)
	}
	if len(f.lists) == 0 {
		t.Fatal("the objects were not listed")
	}
	if first := f.lists[0]; first.ResourceVersion != "77" || first.ResourceVersionMatch != metav1.ResourceVersionMatchExact || first.Limit != DefaultPageSize {
		t.Errorf("first LIST %+v: want the migration's resourceVersion, exactly, a page at a time", first)
	}
	if len(f.lists) != 3 {
		t.Errorf("%d LISTs for 1234 objects, want 3 pages", len(f.lists))
	}
	t.Log(strings.Join(logs, "\n"))
}

// When etcd has compacted the migration's resourceVersion, the objects are counted as they
// are now, and the log says so.
func TestViaMigrationsCountsAfterCompaction(t *testing.T) {
	f := newFakeAPI(30)
	f.compacted = "77"
	var logs []string
	sum, err := ViaMigrations(t.Context(), migrator("77"), f, []Target{secrets}, 0,
		func(format string, args ...any) { logs = append(logs, fmt.Sprintf(format, args...)) })
	if err != nil {
		t.Fatal(err)
	}
	if r := sum.Resources[0]; r.Examined != 30 || r.NotCounted != "" {
		t.Errorf("summary %+v: want the 30 objects counted", r)
	}
	if !strings.Contains(strings.Join(logs, "\n"), "compacted") {
		t.Errorf("no log line about the compacted resourceVersion: %q", logs)
	}
}

// refusing is an apiserver that forbids listing: the via-SVM role's rights.
type refusing struct{ metadata.Interface }

func (refusing) Resource(gvr schema.GroupVersionResource) metadata.Getter {
	return refusingGetter{gvr: gvr}
}

type refusingGetter struct {
	metadata.ResourceInterface
	gvr schema.GroupVersionResource
}

func (g refusingGetter) Namespace(string) metadata.ResourceInterface { return g }

func (g refusingGetter) List(context.Context, metav1.ListOptions) (*metav1.PartialObjectMetadataList, error) {
	return nil, apierrors.NewForbidden(g.gvr.GroupResource(), "", errors.New("RBAC: no list"))
}

// Without list on the resource, the summary says the objects are not counted and why,
// instead of a count of 0.
func TestViaMigrationsNotCounted(t *testing.T) {
	sum, err := ViaMigrations(t.Context(), migrator("77"), refusing{}, []Target{secrets}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := sum.Resources[0]; !strings.Contains(r.NotCounted, "Forbidden") || r.Failed != 0 {
		t.Errorf("summary %+v: want the objects not counted, with the apiserver's reason", r)
	}
}
