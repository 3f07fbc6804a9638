package main

import (
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// Every flag that a static-pod manifest passes to the plugin exists, so the manifests cannot
// drift from the CLI (deploy/ checks the rest of them).
func TestStaticPodFlagsExist(t *testing.T) {
	paths, err := filepath.Glob("../../deploy/static-pod/kms-plugin*.yaml")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no plugin manifests: %v", err)
	}
	for _, p := range paths {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var pod corev1.Pod
		if err := yaml.Unmarshal(raw, &pod); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		for _, c := range pod.Spec.Containers {
			if len(c.Command) < 2 || c.Command[0] != "/kms-plugin" {
				t.Errorf("%s: command %v does not run /kms-plugin", p, c.Command)
				continue
			}
			root := newRootCommand()
			cmd, args, err := root.Find(c.Command[1:])
			if err != nil || cmd == root {
				t.Errorf("%s: %v: no such subcommand (%v)", p, c.Command[1], err)
				continue
			}
			if err := cmd.ParseFlags(args); err != nil {
				t.Errorf("%s: %v", p, err)
			}
			if rest := cmd.Flags().Args(); len(rest) > 0 {
				t.Errorf("%s: stray arguments %v", p, rest)
			}
		}
	}
}
