// Package boundaries holds tests that fail when a package reaches across a boundary of the
// design: the data path is cmd/kms-plugin -> plugin -> dek -> backends, and only the command
// layer reads the environment.
package boundaries

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/kmsplugin/kms-plugin/"

// forbidden lists, per package directory prefix, the import prefixes it must not use.
var forbidden = map[string][]string{
	"dek/":      {module + "plugin", module + "backends", module + "cmd"},
	"plugin/":   {module + "backends", module + "cmd", module + "integration"},
	"backends/": {module + "plugin", module + "cmd", module + "integration"},
	// Operations: instrumentation and limits wrap the KEK interface, endpoints know neither.
	"metrics/":      {module + "plugin", module + "backends", module + "cmd"},
	"backendlimit/": {module + "plugin", module + "backends", module + "cmd"},
	"ops/":          {module + "plugin", module + "backends", module + "dek", module + "cmd"},
}

// envReaders are the calls that read the process environment.
var envReaders = map[string]bool{"os.Getenv": true, "os.LookupEnv": true, "os.Environ": true, "syscall.Getenv": true}

func TestImportBoundaries(t *testing.T) {
	for path, file := range sources(t) {
		for prefix, bad := range forbidden {
			if !strings.HasPrefix(path, prefix) {
				continue
			}
			for _, imp := range file.Imports {
				p, _ := strconv.Unquote(imp.Path.Value)
				for _, b := range bad {
					if strings.HasPrefix(p, b) {
						t.Errorf("%s imports %s: %s must not depend on %s", path, p, strings.TrimSuffix(prefix, "/"), b)
					}
				}
			}
		}
		// Backends must not depend on each other.
		if strings.HasPrefix(path, "backends/") {
			own := module + "backends/" + strings.Split(path, "/")[1]
			for _, imp := range file.Imports {
				p, _ := strconv.Unquote(imp.Path.Value)
				if strings.HasPrefix(p, module+"backends/") && !strings.HasPrefix(p, own) {
					t.Errorf("%s imports another backend, %s", path, p)
				}
			}
		}
	}
}

// Configuration comes from flags, files and the few documented variables that the command
// layer reads; a library reading the environment behind the operator's back is a defect.
func TestOnlyTheCommandLayerReadsTheEnvironment(t *testing.T) {
	for path, file := range sources(t) {
		if strings.HasPrefix(path, "cmd/") || strings.HasPrefix(path, "integration/") {
			continue
		}
		ast.Inspect(file, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if pkg, ok := sel.X.(*ast.Ident); ok && envReaders[pkg.Name+"."+sel.Sel.Name] {
				t.Errorf("%s reads the environment (%s.%s): only cmd/kms-plugin may", path, pkg.Name, sel.Sel.Name)
			}
			return true
		})
	}
}

// sources parses every non-test Go file of the module, keyed by its path from the root.
func sources(t *testing.T) map[string]*ast.File {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found: %v", err)
	}
	files := map[string]*ast.File{}
	fset := token.NewFileSet()
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if d.IsDir() {
			// Nested modules (the real servers' builders) are not part of ours.
			if rel != "." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || fileExists(filepath.Join(p, "go.mod"))) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		files[filepath.ToSlash(rel)] = f
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 5 {
		t.Fatalf("found only %d source files: the walk is broken", len(files))
	}
	return files
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }
