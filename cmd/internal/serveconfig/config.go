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
	return applyFile(fs, path, "--config", func(name string) (apply, known bool) {
		return true, fs.Lookup(name) != nil && name != "config" && name != "help" && name != "version"
	})
}

// ApplyVaultSettings is ApplyConfigFile for a command that takes serve's --vault-* flags but
// not its others (kmsctl rollout-status): from serve's --config file at path, named by the
// command's flag, it sets the --vault-* flags of fs that the command line left unset, and leaves
// the file's other settings aside (its timeout is serve's, not the command's). A setting serve
// does not know is an error, as for serve.
func ApplyVaultSettings(fs *pflag.FlagSet, path, flag string) error {
	serve := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	all, _ := Backends()
	AddFlags(serve, &Options{}, all)
	return applyFile(fs, path, flag, func(name string) (apply, known bool) {
		known = serve.Lookup(name) != nil && name != "config"
		return known && strings.HasPrefix(name, "vault-") && fs.Lookup(name) != nil, known
	})
}

// applyFile sets flags of fs from the YAML file at path (named by flag): those filter says to
// apply; a setting filter does not know is an error.
func applyFile(fs *pflag.FlagSet, path, flag string, filter func(name string) (apply, known bool)) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%s: %w", flag, err)
	}
	// Nodes keep each value as written: decoded, an unquoted 0660 would be YAML's octal 432,
	// which --socket-mode then reads as 0432.
	var settings map[string]yaml.Node
	if err := yaml.Unmarshal(raw, &settings); err != nil {
		return fmt.Errorf("%s %s: %w", flag, path, err)
	}
	names := make([]string, 0, len(settings))
	for name := range settings {
		names = append(names, name)
	}
	sort.Strings(names)
	var problems []string
	for _, name := range names {
		apply, known := filter(name)
		if !known {
			problems = append(problems, fmt.Sprintf("unknown setting %q (settings are the flags' names without --)", name))
			continue
		}
		f := fs.Lookup(name)
		if !apply || f.Changed {
			continue // another command's setting, or the command line wins
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
		return fmt.Errorf("%s %s: %s", flag, path, strings.Join(problems, "; "))
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
