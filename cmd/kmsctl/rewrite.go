package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/term"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"

	"github.com/kmsplugin/kms-plugin/storage/encryptionconfig"
	"github.com/kmsplugin/kms-plugin/storage/rewrite"
	"github.com/kmsplugin/kms-plugin/storage/rollout"
	"github.com/kmsplugin/kms-plugin/storage/scan"
)

type rewriteOptions struct {
	kube             kubeFlags
	resources        []string
	configFile       string
	pageSize         int64
	parallel         int
	qps              float32
	checkpoint       string
	resume, force    bool
	etcd             etcdFlags
	root, output     string
	progressInterval time.Duration
	via              string
}

func newRewriteCommand() *cobra.Command {
	var o rewriteOptions
	cmd := &cobra.Command{
		Use:   "rewrite",
		Short: "Storage migration: make the apiserver store every object of some resources again, under the current write key",
		Long: `Rewrites every object of the given resources through the apiserver, so that each is stored
under the current write provider and key: the storage migration that ends a rotation or a
migration between providers (docs/rotation.md, docs/migration.md).

Per object it sends a metadata-only JSON merge patch carrying the object's resourceVersion, as
Kubernetes' StorageVersionMigrator does. The apiserver writes the object to etcd again only if
it is stale (read with another provider or key id); current objects cost a read. Objects are
listed metadata-only, a page at a time (--page-size), and patched --parallel at a time: no
Secret content crosses the wire, and memory does not grow with the cluster. On a conflict the
object is read again and patched at its new resourceVersion; objects deleted meanwhile are
skipped. An object the apiserver cannot decrypt fails its whole LIST page: that page is then
listed one object at a time, the object is reported, and the rest goes on.

First it checks, from each apiserver's metrics (found through the kubernetes Service's
EndpointSlices, or --apiservers), that every apiserver writes under the same key id (and, with
--encryption-config and the plugin's socket reachable, under the key id the plugin reports):
rewriting while one apiserver still writes with the old key would leave stale objects. --force
skips the check.

With the etcd flags (as for scan) it reads each resource's values from etcd and patches only
the objects that are not on their write key, then runs a verifying scan.

A checkpoint file is saved after every finished page; --resume continues an interrupted run
from it without redoing finished pages. The checkpoint records the cluster (the kube-system
namespace's UID) and what the apiservers write under (per KMS v2 provider the key id hash, and
the EncryptionConfiguration hashes, from their metrics); --resume refuses a checkpoint of
another cluster, of a run that rewrote to another key (a rotation since), or of a run that
finished: run without --resume then.

With --via storage-version-migration (clusters whose kube-controller-manager runs the storage
version migrator: Kubernetes 1.37 on by default) it creates one StorageVersionMigration per
resource instead and follows each until it succeeds or fails; the controller does the patching.
The pre-check and, with the etcd flags, the verifying scan are the same; there is no checkpoint.
The migrator reports no counts: the summary counts each resource's objects at its migration's
resourceVersion (a metadata-only LIST, which needs list on the resource) and cannot say which
were rewritten and which were already current.

Exit status: 0 when every object was rewritten; 3 when some failed (listed with why), the
apiservers do not all write under the same key, or the verifying scan still finds stale
objects; 1 when it could not run (bad flags, the cluster or the apiservers' metrics
unreachable, a checkpoint --resume refuses).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runRewrite(cmd, o) },
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	o.kube.add(fs)
	fs.StringSliceVar(&o.resources, "resources", nil, "resources to rewrite, e.g. secrets,configmaps,widgets.example.com")
	fs.StringVar(&o.configFile, "encryption-config", "", "the apiservers' EncryptionConfiguration: rewrite every resource its rules name (custom resources and wildcards included), and check the plugins' key ids")
	fs.Int64Var(&o.pageSize, "page-size", rewrite.DefaultPageSize, "objects per LIST request (bounds memory)")
	fs.IntVar(&o.parallel, "parallel", rewrite.DefaultParallel, "patches in flight at once")
	fs.Float32Var(&o.qps, "qps", 0, "requests per second to the apiserver at most (0: no client-side limit, --parallel bounds the load)")
	fs.StringVar(&o.checkpoint, "checkpoint", "kmsctl-rewrite.checkpoint.json", "file saved after each finished page, for --resume")
	fs.BoolVar(&o.resume, "resume", false, "continue the run saved in --checkpoint")
	fs.BoolVar(&o.force, "force", false, "rewrite even if the apiservers do not all write under the same key id")
	o.etcd.add(fs, nil)
	fs.StringVar(&o.root, "prefix", scan.DefaultRoot, "etcd key prefix of the apiserver's objects (with the etcd flags)")
	fs.StringVarP(&o.output, "output", "o", "table", "summary format: table or json")
	fs.DurationVar(&o.progressInterval, "progress-interval", 10*time.Second, "time between progress lines when stderr is not a terminal")
	fs.StringVar(&o.via, "via", "patch", "patch (kmsctl patches every object itself, any Kubernetes version) or storage-version-migration (kube-controller-manager's migrator does, where it runs)")
	return cmd
}

// pluginKeyIDs asks the KMS v2 plugin of every rule's write provider for its key id, over
// its socket; plugins that do not answer are left out (and noted to log).
func pluginKeyIDs(ctx context.Context, cfg *encryptionconfig.Config, log io.Writer) map[string]string {
	out := map[string]string{}
	if cfg == nil {
		return out
	}
	for _, p := range scan.WriteKMSv2Providers(cfg) {
		st, err := scan.QueryStatus(ctx, p)
		if err != nil {
			fmt.Fprintf(log, "note: not checking the apiservers against the plugin of %q: %v\n", p.Name, err)
			continue
		}
		out[p.Name] = st.KeyID
	}
	return out
}

func runRewrite(cmd *cobra.Command, o rewriteOptions) error {
	if o.output != "table" && o.output != "json" {
		return fmt.Errorf("--output %q: want table or json", o.output)
	}
	if o.via != "patch" && o.via != "storage-version-migration" {
		return fmt.Errorf("--via %q: want patch or storage-version-migration", o.via)
	}
	if o.via != "patch" && o.resume {
		return errors.New("--resume: a storage version migration keeps no checkpoint of ours; it goes on in the cluster (kubectl get storageversionmigrations)")
	}
	if len(o.resources) == 0 && o.configFile == "" {
		return errors.New("name the resources: --resources secrets,configmaps,... and/or --encryption-config FILE")
	}
	useEtcd := len(o.etcd.endpoints) > 0
	if useEtcd && o.configFile == "" {
		return errors.New("the etcd flags need --encryption-config: it tells which objects are not on their write key")
	}
	stderr := cmd.ErrOrStderr()
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	kcfg, err := o.kube.config()
	if err != nil {
		return err
	}
	var cfg *encryptionconfig.Config
	var names []encryptionconfig.GroupResource
	for _, r := range o.resources {
		names = append(names, encryptionconfig.ParseGroupResource(strings.TrimSpace(r)))
	}
	if o.configFile != "" {
		if cfg, err = encryptionconfig.Load(o.configFile); err != nil {
			return err
		}
		defer cfg.Close()
	}

	writes, err := preCheck(ctx, o, kcfg, cfg, stderr)
	if err != nil {
		return err
	}
	// The checkpoint first: a --resume it refuses ends the run before any work.
	var checkpoint *rewrite.Checkpoint
	if o.via == "patch" {
		if checkpoint, err = openCheckpoint(ctx, o, kcfg, writes); err != nil {
			return err
		}
	}

	client := rest.CopyConfig(kcfg)
	client.QPS, client.Burst = -1, 0
	if o.qps > 0 {
		client.QPS, client.Burst = o.qps, max(o.parallel, int(o.qps))
	}
	dc, err := discovery.NewDiscoveryClientForConfig(kcfg)
	if err != nil {
		return err
	}
	targets, missing, err := rewrite.Resolve(dc, names)
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		return fmt.Errorf("--resources: not served by the apiserver (or not listable and patchable): %s", strings.Join(missing, ", "))
	}
	if cfg != nil {
		more, missing, err := rewrite.Resolve(dc, rewrite.ConfigResources(cfg))
		if err != nil {
			return err
		}
		for _, m := range missing {
			fmt.Fprintf(stderr, "note: %s, named by %s, is not served by the apiserver: nothing to rewrite\n", m, o.configFile)
		}
		for _, t := range more {
			if !containsTarget(targets, t) {
				targets = append(targets, t)
			}
		}
	}
	// With the etcd flags, etcd is read by the patch source and by the verifying scan.
	var etcd *clientv3.Client
	if useEtcd {
		if etcd, err = o.etcd.client(ctx); err != nil {
			return err
		}
		defer etcd.Close()
	}
	var sum *rewrite.Summary
	notDone := "objects were not rewritten"
	if o.via == "storage-version-migration" {
		sum, err = viaMigrations(ctx, client, targets, stderr)
		notDone = "migrations failed"
	} else {
		sum, err = viaPatches(ctx, o, client, cfg, targets, etcd, checkpoint, stderr)
	}
	if sum != nil {
		if err := writeSummary(cmd.OutOrStdout(), o.output, sum); err != nil {
			return err
		}
	}
	if err != nil {
		return err
	}
	if etcd != nil {
		if err := verify(ctx, o, etcd, cfg, targets, stderr); err != nil {
			return err
		}
	}
	return failuresError(sum.Failures, notDone)
}

// openCheckpoint identifies the cluster and loads the checkpoint to resume (refused unless it
// was made on this cluster, for what the apiservers write under now, and is unfinished), or
// starts a fresh one.
func openCheckpoint(ctx context.Context, o rewriteOptions, kcfg *rest.Config, writes *rewrite.Writes) (*rewrite.Checkpoint, error) {
	cs, err := kubernetes.NewForConfig(kcfg)
	if err != nil {
		return nil, err
	}
	cluster, err := rewrite.ClusterOf(ctx, cs, kcfg.Host, writes)
	if err != nil {
		return nil, err
	}
	if o.resume {
		return rewrite.LoadCheckpoint(o.checkpoint, cluster)
	}
	return rewrite.NewCheckpoint(o.checkpoint, cluster), nil
}

// viaPatches is rewrite --via patch: kmsctl lists and patches every object itself, from the
// API or, when etcd is set, from etcd, saving its progress in cp.
func viaPatches(ctx context.Context, o rewriteOptions, client *rest.Config, cfg *encryptionconfig.Config, targets []rewrite.Target, etcd *clientv3.Client, cp *rewrite.Checkpoint, stderr io.Writer) (*rewrite.Summary, error) {
	mc, err := metadata.NewForConfig(client)
	if err != nil {
		return nil, err
	}
	opts := rewrite.Options{Client: mc, Targets: targets, PageSize: o.pageSize, Parallel: o.parallel, Root: o.root,
		Checkpoint: cp, Logf: func(format string, args ...any) { fmt.Fprintf(stderr, "rewrite: "+format+"\n", args...) }}
	if etcd != nil {
		judge, err := scan.NewJudge(ctx, cfg)
		if err != nil {
			return nil, err
		}
		opts.Etcd, opts.Judge = etcd, judge
	}
	var finish func()
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		bar := rewrite.NewBar(stderr)
		opts.Progress, finish = bar, bar.Finish
	} else {
		lines := rewrite.NewLines(stderr, o.progressInterval)
		opts.Progress, finish = lines, lines.Finish
	}
	sum, err := rewrite.Run(ctx, opts)
	finish()
	if err != nil {
		if ctx.Err() != nil {
			return sum, fmt.Errorf("interrupted: %w; finished pages are saved in %s: run again with --resume", err, o.checkpoint)
		}
		return sum, fmt.Errorf("%w; finished pages are saved in %s: run again with --resume", err, o.checkpoint)
	}
	return sum, nil
}

// failuresError is exit status 3 listing the failures, or nil when there are none.
func failuresError(failures []rewrite.Failure, what string) error {
	if len(failures) == 0 {
		return nil
	}
	lines := make([]string, len(failures))
	for i, f := range failures {
		lines[i] = "  " + f.String()
	}
	return checkFailure{fmt.Sprintf("%d %s:\n%s", len(failures), what, strings.Join(lines, "\n"))}
}

// preCheck refuses to rewrite while the apiservers do not all write under the same key id,
// and returns what they write under, which a checkpoint records. Metrics it cannot read are
// an error (exit 1: the check could not run), apart from apiservers that disagree (exit 3).
// With --force it checks nothing, but still reads the metrics for the checkpoint of --via
// patch, and returns nil when they cannot be read or disagree.
func preCheck(ctx context.Context, o rewriteOptions, kcfg *rest.Config, cfg *encryptionconfig.Config, log io.Writer) (*rewrite.Writes, error) {
	if o.force {
		if o.via != "patch" {
			return nil, nil
		}
		states, err := o.kube.states(ctx, kcfg)
		writes := rewrite.WritesOf(states)
		if err != nil || writes == nil {
			fmt.Fprintln(log, "note: --force, and the apiservers' metrics could not be read or disagree: the checkpoint records no write key, and --resume will refuse it")
		}
		return writes, nil
	}
	states, err := o.kube.states(ctx, kcfg)
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
		if len(o.kube.apiservers) > 0 {
			from = "from --apiservers"
		}
		return nil, fmt.Errorf("not rewriting: the metrics of %d of %d apiservers (%s) are unreachable or refused, so which key they write under is unknown:\n  %s\n"+
			"name apiservers whose /metrics this machine can reach with --apiservers https://HOST:PORT,...; "+
			"a 403 needs the kmsctl-rollout-check role (deploy/rbac/kmsctl-rewrite.yaml); --force skips the check",
			len(unread), len(states), from, strings.Join(unread, "\n  "))
	}
	want := rollout.Want{KeyIDs: pluginKeyIDs(ctx, cfg, log)}
	if bad := rollout.Disagreements(states, want); len(bad) > 0 {
		return nil, checkFailure{fmt.Sprintf("not rewriting: the apiservers do not all write under the current key, so objects rewritten now could stay stale:\n  %s\nwait for them (kmsctl rollout-status), or --force",
			strings.Join(bad, "\n  "))}
	}
	fmt.Fprintf(log, "rewrite: %d apiservers write under the same key ids\n", len(states))
	return rewrite.WritesOf(states), nil
}

// verify scans etcd after an etcd-sourced run: every rewritten resource must be on its write
// key now. Its line goes to log (stderr), so that stdout holds the summary alone (-o json).
func verify(ctx context.Context, o rewriteOptions, kv clientv3.KV, cfg *encryptionconfig.Config, targets []rewrite.Target, log io.Writer) error {
	rep, err := scan.Scan(ctx, kv, scan.Options{Root: o.root, Config: cfg})
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
	fmt.Fprintf(log, "verifying scan at revision %d: %d objects of these resources not on their write key\n", rep.Revision, stale)
	if stale > 0 {
		return checkFailure{fmt.Sprintf("the verifying scan finds %d objects not on their write key (%s): an apiserver wrote under an old key meanwhile? run rewrite again", stale, strings.Join(where, ", "))}
	}
	return nil
}

func containsTarget(ts []rewrite.Target, t rewrite.Target) bool {
	for _, x := range ts {
		if x.GVR.GroupResource() == t.GVR.GroupResource() {
			return true
		}
	}
	return false
}

func writeSummary(w io.Writer, format string, sum *rewrite.Summary) error {
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			*rewrite.Summary
			Seconds float64 `json:"seconds"`
		}{sum, sum.Duration.Seconds()})
	}
	if sum.Source == rewrite.SourceMigration {
		return writeMigrationSummary(w, sum)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RESOURCE\tEXAMINED\tREWRITTEN\tCURRENT\tSKIPPED\tDELETED\tCONFLICTS\tFAILED\tPAGES")
	row := func(r rewrite.ResourceSummary) {
		pages := fmt.Sprint(r.Pages)
		if r.ResumedPages > 0 {
			pages += fmt.Sprintf(" (+%d resumed)", r.ResumedPages)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", r.Resource, r.Examined, r.Rewritten, r.Current,
			r.SkippedCurrent, r.Deleted, r.Conflicts, r.Failed, pages)
	}
	for _, r := range sum.Resources {
		row(r)
	}
	total := sum.Total()
	total.Resource = "total"
	row(total)
	if err := tw.Flush(); err != nil {
		return err
	}
	rate := float64(total.Examined) / max(sum.Duration.Seconds(), 1e-9)
	_, err := fmt.Fprintf(w, "%d objects examined in %s (%.0f/s), reading from %s\n", total.Examined, sum.Duration.Round(time.Millisecond), rate, sum.Source)
	return err
}

// viaMigrations is rewrite --via storage-version-migration: kube-controller-manager's storage
// version migrator does the work; we create its StorageVersionMigrations and follow them.
func viaMigrations(ctx context.Context, client *rest.Config, targets []rewrite.Target, stderr io.Writer) (*rewrite.Summary, error) {
	cs, err := kubernetes.NewForConfig(client)
	if err != nil {
		return nil, err
	}
	md, err := metadata.NewForConfig(client)
	if err != nil {
		return nil, err
	}
	return rewrite.ViaMigrations(ctx, cs, md, targets, 2*time.Second,
		func(format string, args ...any) { fmt.Fprintf(stderr, "rewrite: "+format+"\n", args...) })
}

// writeMigrationSummary is the table of a run through StorageVersionMigrations: per resource
// the objects its migration had to migrate (counted at its resourceVersion) or why they are
// not counted. The migrator does not say which objects it rewrote and which were current, so
// those columns are not printed.
func writeMigrationSummary(w io.Writer, sum *rewrite.Summary) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RESOURCE\tOBJECTS\tFAILED\tNOT COUNTED")
	var notCounted []string
	for _, r := range sum.Resources {
		objects := fmt.Sprint(r.Examined)
		if r.NotCounted != "" {
			objects = "-"
			notCounted = append(notCounted, r.Resource)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", r.Resource, objects, r.Failed, r.NotCounted)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	total := sum.Total()
	msg := fmt.Sprintf("%d objects in %d StorageVersionMigrations, done by kube-controller-manager's migrator in %s (counted at each migration's resourceVersion; the migrator does not say which it rewrote and which were already current)",
		total.Examined, len(sum.Resources), sum.Duration.Round(time.Millisecond))
	if len(notCounted) > 0 {
		msg += "; not counted: " + strings.Join(notCounted, ", ")
	}
	_, err := fmt.Fprintln(w, msg)
	return err
}
