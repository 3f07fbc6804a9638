package main

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

// applyConfigFile sets, from the YAML file that --config names, every flag that the command
// line left unset. The file's keys are the flags' names without "--"; values are what the
// flag would take. Secrets have no flags, so they have no place in this file either.
func applyConfigFile(fs *pflag.FlagSet) error {
	path, err := fs.GetString("config")
	if err != nil || path == "" {
		return err
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	var settings map[string]any
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

// scalar renders a YAML value as a flag's text.
func scalar(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case bool:
		return strconv.FormatBool(v), nil
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64), nil
	case nil:
		return "", nil
	}
	return "", errors.New("want a single value (string, number or boolean)")
}

// checkCombination refuses flags that configure a backend other than the chosen one (they
// would be silently ignored, which hides a typo in --backend) and bad operations flags, all in
// one message.
func checkCombination(fs *pflag.FlagSet, chosen string, all []backend, o opsOptions) error {
	var foreign []string
	fs.Visit(func(f *pflag.Flag) {
		for _, b := range all {
			if b.name() != chosen && strings.HasPrefix(f.Name, b.name()+"-") {
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
