package rewrite

import (
	"context"
	"fmt"
	"time"

	storagemigrationv1 "k8s.io/api/storagemigration/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// ViaMigrations has kube-controller-manager's storage version migrator do the rewrite, on
// clusters that run it (Kubernetes 1.37: GA, on by default): one StorageVersionMigration per
// target, created and followed until it succeeds or fails. The controller sends the same
// metadata-only patches Run does; it keeps no checkpoint of ours (a migration interrupted on
// our side goes on in the cluster: follow it with kubectl get storageversionmigrations).
func ViaMigrations(ctx context.Context, cs kubernetes.Interface, targets []Target, poll time.Duration, logf func(string, ...any)) (*Summary, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	start := time.Now()
	sum := &Summary{Source: "storage-version-migration"}
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
				logf("%s: StorageVersionMigration %s succeeded", t, m.Name)
				break
			}
			if c := apimeta.FindStatusCondition(m.Status.Conditions, string(storagemigrationv1.MigrationFailed)); c != nil && c.Status == metav1.ConditionTrue {
				rs.Failed++
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
