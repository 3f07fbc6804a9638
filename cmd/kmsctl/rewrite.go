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
	"golang.org/x/term"

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

// runRewrite turns the flags into a rewrite.Plan, carries it out, and prints its summary.
func runRewrite(cmd *cobra.Command, o rewriteOptions) error {
	if o.output != "table" && o.output != "json" {
		return fmt.Errorf("--output %q: want table or json", o.output)
	}
	if o.via != rewrite.ViaPatch && o.via != rewrite.ViaMigration {
		return fmt.Errorf("--via %q: want patch or storage-version-migration", o.via)
	}
	if o.via != rewrite.ViaPatch && o.resume {
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
	f, isFile := stderr.(*os.File)
	p := rewrite.Plan{
		Kube:             kcfg,
		QPS:              o.qps,
		ConfigFile:       o.configFile,
		States:           func(ctx context.Context) ([]rollout.State, error) { return o.kube.states(ctx, kcfg) },
		NamedAPIServers:  len(o.kube.apiservers) > 0,
		Force:            o.force,
		Via:              o.via,
		PageSize:         o.pageSize,
		Parallel:         o.parallel,
		Checkpoint:       o.checkpoint,
		Resume:           o.resume,
		Root:             o.root,
		Log:              stderr,
		Bar:              isFile && term.IsTerminal(int(f.Fd())),
		ProgressInterval: o.progressInterval,
		Report:           func(sum *rewrite.Summary) error { return writeSummary(cmd.OutOrStdout(), o.output, sum) },
	}
	for _, r := range o.resources {
		p.Resources = append(p.Resources, encryptionconfig.ParseGroupResource(strings.TrimSpace(r)))
	}
	if o.configFile != "" {
		if p.Config, err = encryptionconfig.Load(o.configFile); err != nil {
			return err
		}
		defer p.Config.Close()
	}
	if useEtcd {
		p.Etcd = o.etcd.client
	}
	_, err = rewrite.Migrate(ctx, p)
	var failed *rewrite.CheckFailed
	if errors.As(err, &failed) {
		return checkFailure{err.Error()} // exit 3: it ran, and failed a check
	}
	return err
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
