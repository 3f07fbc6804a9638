package serveconfig

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// ApplyConfigFile sets, from the YAML file that --config names, every flag that the command
// line left unset. The file's keys are the flags' names without "--"; values are what the
// flag would take. Secrets have no flags, so they have no place in this file either.
func ApplyConfigFile(fs *pflag.FlagSet) error {
	path, err := fs.GetString("config")
	if err != nil || path == "" {
		return err
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	// Nodes keep each value as written: decoded, an unquoted 0660 would be YAML's octal 432,
	// which --socket-mode then reads as 0432.
	var settings map[string]yaml.Node
	if err := yaml.Unmarshal(raw, &settings); err != nil {
		return fmt.Errorf("--config %s: %w", path, err)
	}
	names := make([]string, 0, len(settings))
	for name := range settings {
		names = append(names, name)
	}
	sort.Strings(names)
	var problems []string
	for _, name := range names {
		f := fs.Lookup(name)
		if f == nil || name == "config" || name == "help" || name == "version" {
			problems = append(problems, fmt.Sprintf("unknown setting %q (settings are the flags' names without --)", name))
			continue
		}
		if f.Changed {
			continue // the command line wins
		}
		value, err := scalar(settings[name])
		if err == nil {
			err = fs.Set(name, value)
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", name, err))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("--config %s: %s", path, strings.Join(problems, "; "))
	}
	return nil
}

// scalar is a YAML value's text as written, for the flag to parse.
func scalar(n yaml.Node) (string, error) {
	if n.Kind != yaml.ScalarNode {
		return "", errors.New("want a single value (string, number or boolean)")
	}
	if n.Tag == "!!null" {
		return "", nil
	}
	return n.Value, nil
}

// checkCombination refuses flags that configure a backend other than the chosen one (they
// would be silently ignored, which hides a typo in --backend) and bad operations flags, all in
// one message.
func checkCombination(fs *pflag.FlagSet, chosen string, all []Backend, o OpsOptions) error {
	var foreign []string
	fs.Visit(func(f *pflag.Flag) {
		for _, b := range all {
			if b.Name() != chosen && strings.HasPrefix(f.Name, b.Name()+"-") {
				foreign = append(foreign, "--"+f.Name)
			}
		}
	})
	var problems []string
	if len(foreign) > 0 {
		problems = append(problems, fmt.Sprintf("%s configure another backend than --backend %s", strings.Join(foreign, ", "), chosen))
	}
	problems = append(problems, o.problems()...)
	if len(problems) > 0 {
		return errors.New("invalid configuration: " + strings.Join(problems, "; "))
	}
	return nil
}
