package rewrite

import (
	"context"
	"fmt"
	"time"

	storagemigrationv1 "k8s.io/api/storagemigration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
)

// SourceMigration is Summary.Source of a run through StorageVersionMigrations.
const SourceMigration = "storage-version-migration"

// ViaMigrations has kube-controller-manager's storage version migrator do the rewrite, on
// clusters that run it (Kubernetes 1.37: GA, on by default): one StorageVersionMigration per
// target, created and followed until it succeeds or fails. The controller sends the same
// metadata-only patches Run does; it keeps no checkpoint of ours (a migration interrupted on
// our side goes on in the cluster: follow it with kubectl get storageversionmigrations).
//
// The migration's status says neither how many objects it patched nor which were stale. So
// when one succeeds, its objects are counted with md: the objects of the resource at the
// migration's resourceVersion, which are those it had to migrate (objects created later were
// written under the current key anyway), listed metadata-only a page at a time. That count is
// the resource's Examined; Rewritten and Current stay 0 (not known), and a resource that could
// not be counted (no list permission: the via-SVM role does not grant it) says why in
// NotCounted.
func ViaMigrations(ctx context.Context, cs kubernetes.Interface, md metadata.Interface, targets []Target, poll time.Duration, logf func(string, ...any)) (*Summary, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	start := time.Now()
	sum := &Summary{Source: SourceMigration}
	svms := cs.StoragemigrationV1().StorageVersionMigrations()
	for _, t := range targets {
		m, err := svms.Create(ctx, &storagemigrationv1.StorageVersionMigration{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "kmsctl-rewrite-"},
			Spec:       storagemigrationv1.StorageVersionMigrationSpec{Resource: metav1.GroupResource{Group: t.GVR.Group, Resource: t.GVR.Resource}},
		}, metav1.CreateOptions{})
		if err != nil {
			return sum, fmt.Errorf("%s: creating a StorageVersionMigration: %w", t, err)
		}
		logf("%s: StorageVersionMigration %s created; waiting for kube-controller-manager's migrator", t, m.Name)
		rs := ResourceSummary{Resource: t.String()}
		for {
			if c := apimeta.FindStatusCondition(m.Status.Conditions, string(storagemigrationv1.MigrationSucceeded)); c != nil && c.Status == metav1.ConditionTrue {
				n, err := countAt(ctx, md, t, m.Status.ResourceVersion, logf)
				if err != nil {
					rs.NotCounted = "listing them: " + reason(err)
					logf("%s: StorageVersionMigration %s succeeded; its objects not counted: %s", t, m.Name, rs.NotCounted)
				} else {
					rs.Examined = n
					logf("%s: StorageVersionMigration %s succeeded: %d objects at its resourceVersion %s", t, m.Name, n, m.Status.ResourceVersion)
				}
				break
			}
			if c := apimeta.FindStatusCondition(m.Status.Conditions, string(storagemigrationv1.MigrationFailed)); c != nil && c.Status == metav1.ConditionTrue {
				rs.Failed++
				rs.NotCounted = "the migration failed"
				sum.Failures = append(sum.Failures, Failure{Resource: t.String(), Name: "storageversionmigration/" + m.Name, Reason: c.Message})
				break
			}
			select {
			case <-ctx.Done():
				sum.Resources = append(sum.Resources, rs)
				return sum, fmt.Errorf("%s: waiting for StorageVersionMigration %s (it goes on in the cluster): %w", t, m.Name, ctx.Err())
			case <-time.After(poll):
			}
			if m, err = svms.Get(ctx, m.Name, metav1.GetOptions{}); err != nil {
				sum.Resources = append(sum.Resources, rs)
				return sum, fmt.Errorf("%s: reading StorageVersionMigration: %w", t, err)
			}
		}
		sum.Resources = append(sum.Resources, rs)
	}
	sum.Duration = time.Since(start)
	return sum, nil
}

// countAt counts the objects of t at resourceVersion rv with metadata-only LISTs of
// DefaultPageSize. When rv is "" or etcd has compacted it (410), it counts the objects as they
// are now, and logs so.
func countAt(ctx context.Context, md metadata.Interface, t Target, rv string, logf func(string, ...any)) (int64, error) {
	list := md.Resource(t.GVR)
	if rv == "" {
		logf("%s: the StorageVersionMigration has no resourceVersion: counting the objects as they are now", t)
	}
	for {
		var n int64
		opts := metav1.ListOptions{Limit: DefaultPageSize}
		if rv != "" {
			opts.ResourceVersion, opts.ResourceVersionMatch = rv, metav1.ResourceVersionMatchExact
		}
		for {
			page, err := list.List(ctx, opts)
			if rv != "" && (apierrors.IsResourceExpired(err) || apierrors.IsGone(err)) {
				logf("%s: the StorageVersionMigration's resourceVersion %s is compacted in etcd: counting the objects as they are now", t, rv)
				rv = ""
				break
			}
			if err != nil {
				return 0, err
			}
			n += int64(len(page.Items))
			if page.Continue == "" {
				return n, nil
			}
			opts = metav1.ListOptions{Limit: DefaultPageSize, Continue: page.Continue}
		}
	}
}
