package serveconfig

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// GroupedUsage prints the command's usage with its flags in sections: general, one per
// backend (flags named after it), and operations (annotated in operations.go).
func GroupedUsage(all []Backend) func(*cobra.Command) error {
	cobraDefault := (&cobra.Command{}).UsageFunc() // a command without parent has cobra's own
	return func(cmd *cobra.Command) error {
		if cmd.HasParent() && cmd.Name() != "serve" {
			return cobraDefault(cmd) // other subcommands inherit this function from the root
		}
		var b strings.Builder
		fmt.Fprintf(&b, "Usage:\n  %s\n", cmd.UseLine())
		if cmd.HasAvailableSubCommands() {
			fmt.Fprintf(&b, "  %s [command]\n\nCommands:\n", cmd.CommandPath())
			for _, c := range cmd.Commands() {
				if c.IsAvailableCommand() {
					fmt.Fprintf(&b, "  %-10s %s\n", c.Name(), c.Short)
				}
			}
		}
		titles := []string{"general"}
		for _, be := range all {
			titles = append(titles, be.Name())
		}
		titles = append(titles, "recovery", "operations")
		groups := map[string]*pflag.FlagSet{}
		for _, t := range titles {
			groups[t] = pflag.NewFlagSet(t, pflag.ContinueOnError)
			groups[t].SortFlags = false
		}
		cmd.Flags().VisitAll(func(f *pflag.Flag) {
			if f.Hidden {
				return
			}
			groups[flagGroup(f, all)].AddFlag(f)
		})
		for _, t := range titles {
			if !groups[t].HasFlags() {
				continue
			}
			heading := map[string]string{"general": "General flags", "recovery": "Recovery key flags (docs/disaster-recovery.md)", "operations": "Operations flags (endpoints, limits, logs)"}[t]
			if heading == "" {
				heading = fmt.Sprintf("%s backend flags (--backend %s)", t, t)
			}
			fmt.Fprintf(&b, "\n%s:\n%s", heading, groups[t].FlagUsages())
		}
		if cmd.HasAvailableSubCommands() {
			fmt.Fprintf(&b, "\nEvery flag can also be set in the --config file, by its name without --.\nUse \"%s [command] --help\" for more about a command.\n", cmd.CommandPath())
		}
		_, err := fmt.Fprint(cmd.OutOrStderr(), b.String())
		return err
	}
}

func flagGroup(f *pflag.Flag, all []Backend) string {
	if g := f.Annotations[GroupAnnotation]; len(g) == 1 {
		return g[0]
	}
	for _, b := range all {
		if strings.HasPrefix(f.Name, b.Name()+"-") {
			return b.Name()
		}
	}
	return "general"
}
