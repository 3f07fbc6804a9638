package rewrite

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"

	"github.com/kmsplugin/kms-plugin/storage/encryptionconfig"
	"github.com/kmsplugin/kms-plugin/storage/rollout"
	"github.com/kmsplugin/kms-plugin/storage/scan"
)

// The ways a Plan rewrites its objects (Plan.Via).
const (
	// ViaPatch: Run lists and patches every object itself, saving a Checkpoint.
	ViaPatch = "patch"
	// ViaMigration: ViaMigrations has kube-controller-manager's migrator do it.
	ViaMigration = SourceMigration
)

// CheckFailed is an error of a migration that ran and whose result failed a check: the
// apiservers do not all write under the same key, objects were not rewritten, or the
// verifying scan finds stale objects. Every other error of Migrate is one of a migration
// that could not run. (kmsctl exits 3 on the first, 1 on the others.)
type CheckFailed struct{ Msg string }

func (e *CheckFailed) Error() string { return e.Msg }

// Plan is everything a storage migration needs; Migrate carries it out.
type Plan struct {
	// Kube reaches the cluster: discovery, the kube-system namespace, the patches or migrations.
	Kube *rest.Config
	// QPS bounds the requests per second of the patches or migrations; 0: no client-side
	// limit (Parallel bounds the load).
	QPS float32

	// Resources are the resources named by the operator: each must be served.
	Resources []encryptionconfig.GroupResource
	// Config, when set, adds every resource its rules name (those not served are noted), tells
	// the pre-check its plugins' key ids and the etcd source which values are stale.
	// ConfigFile names it in notes.
	Config     *encryptionconfig.Config
	ConfigFile string

	// States reads every apiserver's metrics for the pre-check (States of cmd/kmsctl's
	// --apiservers, or of the kubernetes Service's endpoints: NamedAPIServers says which, for
	// the errors).
	States          func(context.Context) ([]rollout.State, error)
	NamedAPIServers bool
	// Force skips the pre-check.
	Force bool

	// Via is ViaPatch or ViaMigration.
	Via string
	// PageSize and Parallel are Options' (ViaPatch).
	PageSize int64
	Parallel int
	// Checkpoint is the file of the run (ViaPatch); Resume continues the run saved in it.
	Checkpoint string
	Resume     bool

	// Etcd, when set, opens the etcd client of the etcd source and of the verifying scan
	// (it needs Config); Migrate closes it. Root is the key prefix of the apiserver's objects.
	Etcd func(context.Context) (*clientv3.Client, error)
	Root string

	// Log receives notes, events and progress (stderr).
	Log io.Writer
	// Bar draws the progress of ViaPatch as a bar on Log, a terminal; otherwise a line every
	// ProgressInterval.
	Bar              bool
	ProgressInterval time.Duration
	// Report, when set, is given the summary as soon as the rewrite ends (before the
	// verifying scan), also when the rewrite stopped with an error.
	Report func(*Summary) error
}

// Migrate carries out p: it pre-checks that the apiservers all write under the same key
// (unless p.Force), opens the checkpoint (ViaPatch), resolves the targets from p.Resources and
// p.Config, rewrites them via p.Via, reports the summary and, with p.Etcd, scans etcd to
// verify that every target is on its write key. It returns the summary (nil when the
// migration did not start) and an error: *CheckFailed when the migration ran and failed a
// check (objects that failed are listed in it), another when it could not run.
func Migrate(ctx context.Context, p Plan) (*Summary, error) {
	writes, err := preCheck(ctx, p)
	if err != nil {
		return nil, err
	}
	// The checkpoint first: a --resume it refuses ends the run before any work.
	var checkpoint *Checkpoint
	if p.Via == ViaPatch {
		if checkpoint, err = openCheckpoint(ctx, p, writes); err != nil {
			return nil, err
		}
	}

	client := rest.CopyConfig(p.Kube)
	client.QPS, client.Burst = -1, 0
	if p.QPS > 0 {
		client.QPS, client.Burst = p.QPS, max(p.Parallel, int(p.QPS))
	}
	targets, err := resolveTargets(p)
	if err != nil {
		return nil, err
	}
	// With the etcd flags, etcd is read by the patch source and by the verifying scan.
	var etcd *clientv3.Client
	if p.Etcd != nil {
		if etcd, err = p.Etcd(ctx); err != nil {
			return nil, err
		}
		defer etcd.Close()
	}
	var sum *Summary
	notDone := "objects were not rewritten"
	if p.Via == ViaMigration {
		sum, err = viaMigrations(ctx, client, targets, p.Log)
		notDone = "migrations failed"
	} else {
		sum, err = viaPatches(ctx, p, client, targets, etcd, checkpoint)
	}
	if sum != nil && p.Report != nil {
		if err := p.Report(sum); err != nil {
			return sum, err
		}
	}
	if err != nil {
		return sum, err
	}
	if etcd != nil {
		if err := verify(ctx, p, etcd, targets); err != nil {
			return sum, err
		}
	}
	return sum, failuresError(sum.Failures, notDone)
}

// resolveTargets finds the resources p names, by discovery: every one of p.Resources (an
// error names those not served), then those of p.Config's rules not named yet (those not
// served are noted).
func resolveTargets(p Plan) ([]Target, error) {
	dc, err := discovery.NewDiscoveryClientForConfig(p.Kube)
	if err != nil {
		return nil, err
	}
	targets, missing, err := Resolve(dc, p.Resources)
	if err != nil {
		return nil, err
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("--resources: not served by the apiserver (or not listable and patchable): %s", strings.Join(missing, ", "))
	}
	if p.Config != nil {
		more, missing, err := Resolve(dc, ConfigResources(p.Config))
		if err != nil {
			return nil, err
		}
		for _, m := range missing {
			fmt.Fprintf(p.Log, "note: %s, named by %s, is not served by the apiserver: nothing to rewrite\n", m, p.ConfigFile)
		}
		for _, t := range more {
			if !containsTarget(targets, t) {
				targets = append(targets, t)
			}
		}
	}
	return targets, nil
}

// openCheckpoint identifies the cluster and loads the checkpoint to resume (refused unless it
// was made on this cluster, for what the apiservers write under now, and is unfinished), or
// starts a fresh one.
func openCheckpoint(ctx context.Context, p Plan, writes *Writes) (*Checkpoint, error) {
	cs, err := kubernetes.NewForConfig(p.Kube)
	if err != nil {
		return nil, err
	}
	cluster, err := ClusterOf(ctx, cs, p.Kube.Host, writes)
	if err != nil {
		return nil, err
	}
	if p.Resume {
		return LoadCheckpoint(p.Checkpoint, cluster)
	}
	return NewCheckpoint(p.Checkpoint, cluster), nil
}

// viaPatches is Via patch: Run lists and patches every object itself, from the API or, when
// etcd is set, from etcd, saving its progress in cp.
func viaPatches(ctx context.Context, p Plan, client *rest.Config, targets []Target, etcd *clientv3.Client, cp *Checkpoint) (*Summary, error) {
	mc, err := metadata.NewForConfig(client)
	if err != nil {
		return nil, err
	}
	opts := Options{Client: mc, Targets: targets, PageSize: p.PageSize, Parallel: p.Parallel, Root: p.Root,
		Checkpoint: cp, Logf: logTo(p.Log)}
	if etcd != nil {
		judge, err := scan.NewJudge(ctx, p.Config)
		if err != nil {
			return nil, err
		}
		opts.Etcd, opts.Judge = etcd, judge
	}
	var finish func()
	if p.Bar {
		bar := NewBar(p.Log)
		opts.Progress, finish = bar, bar.Finish
	} else {
		lines := NewLines(p.Log, p.ProgressInterval)
		opts.Progress, finish = lines, lines.Finish
	}
	sum, err := Run(ctx, opts)
	finish()
	if err != nil {
		if ctx.Err() != nil {
			return sum, fmt.Errorf("interrupted: %w; finished pages are saved in %s: run again with --resume", err, p.Checkpoint)
		}
		return sum, fmt.Errorf("%w; finished pages are saved in %s: run again with --resume", err, p.Checkpoint)
	}
	return sum, nil
}

// viaMigrations is Via storage-version-migration: kube-controller-manager's storage version
// migrator does the work; ViaMigrations creates its StorageVersionMigrations and follows them.
func viaMigrations(ctx context.Context, client *rest.Config, targets []Target, log io.Writer) (*Summary, error) {
	cs, err := kubernetes.NewForConfig(client)
	if err != nil {
		return nil, err
	}
	md, err := metadata.NewForConfig(client)
	if err != nil {
		return nil, err
	}
	return ViaMigrations(ctx, cs, md, targets, 2*time.Second, logTo(log))
}

// logTo is a Logf writing "rewrite: " lines to w.
func logTo(w io.Writer) func(string, ...any) {
	return func(format string, args ...any) { fmt.Fprintf(w, "rewrite: "+format+"\n", args...) }
}

// failuresError is a *CheckFailed listing the failures, or nil when there are none.
func failuresError(failures []Failure, what string) error {
	if len(failures) == 0 {
		return nil
	}
	lines := make([]string, len(failures))
	for i, f := range failures {
		lines[i] = "  " + f.String()
	}
	return &CheckFailed{fmt.Sprintf("%d %s:\n%s", len(failures), what, strings.Join(lines, "\n"))}
}

// preCheck refuses to rewrite while the apiservers do not all write under the same key id,
// and returns what they write under, which a checkpoint records. Metrics it cannot read are
// an error (the check could not run), apart from apiservers that disagree (*CheckFailed).
// With p.Force it checks nothing, but still reads the metrics for the checkpoint of Via
// patch, and returns nil when they cannot be read or disagree.
func preCheck(ctx context.Context, p Plan) (*Writes, error) {
	if p.Force {
		if p.Via != ViaPatch {
			return nil, nil
		}
		states, err := p.States(ctx)
		writes := WritesOf(states)
		if err != nil || writes == nil {
			fmt.Fprintln(p.Log, "note: --force, and the apiservers' metrics could not be read or disagree: the checkpoint records no write key, and --resume will refuse it")
		}
		return writes, nil
	}
	states, err := p.States(ctx)
	if err != nil {
		return nil, fmt.Errorf("checking the apiservers' write keys: %w (--force skips the check)", err)
	}
	var unread []string
	for _, s := range states {
		if s.Err != "" {
			unread = append(unread, fmt.Sprintf("%s: %s", s.Endpoint, s.Err))
		}
	}
	if len(unread) > 0 {
		from := "the kubernetes Service's endpoints"
		if p.NamedAPIServers {
			from = "from --apiservers"
		}
		return nil, fmt.Errorf("not rewriting: the metrics of %d of %d apiservers (%s) are unreachable or refused, so which key they write under is unknown:\n  %s\n"+
			"name apiservers whose /metrics this machine can reach with --apiservers https://HOST:PORT,...; "+
			"a 403 needs the kmsctl-rollout-check role (deploy/rbac/kmsctl-rewrite.yaml); --force skips the check",
			len(unread), len(states), from, strings.Join(unread, "\n  "))
	}
	want := rollout.Want{KeyIDs: scan.PluginKeyIDs(ctx, p.Config, p.Log)}
	if bad := rollout.Disagreements(states, want); len(bad) > 0 {
		return nil, &CheckFailed{fmt.Sprintf("not rewriting: the apiservers do not all write under the current key, so objects rewritten now could stay stale:\n  %s\nwait for them (kmsctl rollout-status), or --force",
			strings.Join(bad, "\n  "))}
	}
	fmt.Fprintf(p.Log, "rewrite: %d apiservers write under the same key ids\n", len(states))
	return WritesOf(states), nil
}

// verify scans etcd after an etcd-sourced run: every rewritten resource must be on its write
// key now. Its line goes to p.Log (stderr), so that stdout holds the summary alone (-o json).
func verify(ctx context.Context, p Plan, kv clientv3.KV, targets []Target) error {
	rep, err := scan.Scan(ctx, kv, scan.Options{Root: p.Root, Config: p.Config})
	if err != nil {
		return fmt.Errorf("verifying scan: %w", err)
	}
	stale := 0
	var where []string
	for _, r := range rep.Resources {
		for _, t := range targets {
			// rep.Root, as Scan completed it, is the root of the prefixes it reports.
			if r.Prefix == encryptionconfig.PrefixOf(rep.Root, t.GroupResource()) && r.Stale > 0 {
				stale += r.Stale
				where = append(where, fmt.Sprintf("%s: %d", t, r.Stale))
			}
		}
	}
	fmt.Fprintf(p.Log, "verifying scan at revision %d: %d objects of these resources not on their write key\n", rep.Revision, stale)
	if stale > 0 {
		return &CheckFailed{fmt.Sprintf("the verifying scan finds %d objects not on their write key (%s): an apiserver wrote under an old key meanwhile? run rewrite again", stale, strings.Join(where, ", "))}
	}
	return nil
}

func containsTarget(ts []Target, t Target) bool {
	for _, x := range ts {
		if x.GVR.GroupResource() == t.GVR.GroupResource() {
			return true
		}
	}
	return false
}
