// Package boundaries holds tests that fail when a package reaches across a boundary of the
// design: the data path is cmd/kms-plugin -> plugin -> dek -> backends; the serving side never
// depends on the toolbox (storage/, doctor/, cmd/kmsctl), so the serving binary stays small;
// no production package imports the test layer (internal/testing); and only the command layer
// reads the environment.
package boundaries

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/kmsplugin/kms-plugin/"

// toolbox is what kmsctl carries and the serving side must not: the apiserver's storage
// formats, the preflight, and the commands.
var toolbox = []string{module + "storage", module + "doctor", module + "cmd"}

// forbidden lists, per package directory prefix, the import prefixes it must not use.
var forbidden = map[string][]string{
	"dek/":      append([]string{module + "plugin", module + "backends", module + "integration"}, toolbox...),
	"plugin/":   append([]string{module + "backends", module + "integration"}, toolbox...),
	"backends/": append([]string{module + "plugin", module + "integration"}, toolbox...),
	// The serving side's parts: instrumentation and limits wrap the KEK interface, endpoints
	// know neither; none of them knows the gRPC service.
	"plugin/metrics/":   {module + "plugin", module + "backends"},
	"plugin/limit/":     {module + "plugin", module + "backends"},
	"plugin/endpoints/": {module + "plugin", module + "backends", module + "dek"},
	// The toolbox reads what the plugin writes; it never needs the serving side's code.
	"storage/": {module + "plugin", module + "backends", module + "cmd", module + "doctor", module + "integration"},
}

// testLayer is test and measurement code: only tests, the test layer itself and the programs
// that exist to test (the flood) may import it.
const testLayer = module + "internal/testing/"

// testPrograms may import the test layer although they are not tests.
var testPrograms = []string{"internal/testing/", "cmd/kms-flood/"}

// envReaders are the calls that read the process environment.
var envReaders = map[string]bool{"os.Getenv": true, "os.LookupEnv": true, "os.Environ": true, "syscall.Getenv": true}

func TestImportBoundaries(t *testing.T) {
	for path, file := range sources(t) {
		// Production code never imports test or measurement code (sources skips _test.go).
		if !slices.ContainsFunc(testPrograms, func(p string) bool { return strings.HasPrefix(path, p) }) {
			for _, imp := range file.Imports {
				if p, _ := strconv.Unquote(imp.Path.Value); strings.HasPrefix(p, testLayer) {
					t.Errorf("%s imports %s: production code must not depend on the test layer", path, p)
				}
			}
		}
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

// The serving binary carries what serving needs: no Kubernetes API types, no client-go, no
// etcd client (they are kmsctl's), and none of the toolbox.
func TestServingBinaryDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-tags", "grpcnotrace", module+"cmd/kms-plugin").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 50 {
		t.Fatalf("go list -deps listed %d packages: the listing is broken", len(deps))
	}
	banned := append([]string{"k8s.io/api/", "k8s.io/apimachinery/", "k8s.io/client-go/", "k8s.io/apiserver/", "go.etcd.io/"}, toolbox[:2]...)
	for _, dep := range deps {
		for _, b := range banned {
			if strings.HasPrefix(dep, b) {
				t.Errorf("cmd/kms-plugin depends on %s", dep)
			}
		}
	}
}

// lightTests are packages whose tests start Vault alone, or no server: with their test
// dependencies (go list -deps -test) they must not link what they do not start, here the
// prefixes listed. A test that needs a kube-apiserver or etcd lives in a package of its own
// (backends/vault/k8sauth, integration) that imports integration/harness.
var lightTests = map[string][]string{
	"backends/vault":             {"k8s.io/client-go/", "go.etcd.io/etcd/client/"},
	"integration/harness/vaultd": {"k8s.io/client-go/", "go.etcd.io/etcd/client/"},
	"integration/harness/run":    {"k8s.io/client-go/", "go.etcd.io/etcd/client/", "github.com/hashicorp/vault/"},
}

// The Vault backend's tests, and the harness packages they use, link no Kubernetes or etcd
// client: the harness is split by server so that a package's tests link only the servers
// they start.
func TestLightTestDependencies(t *testing.T) {
	for pkg, banned := range lightTests {
		out, err := exec.Command("go", "list", "-deps", "-test", module+pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps -test %s: %v\n%s", pkg, err, out)
		}
		var deps []string // import paths, without the " [pkg.test]" of a test variant
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			dep, _, _ := strings.Cut(line, " ")
			deps = append(deps, dep)
		}
		tests, _ := filepath.Glob(filepath.Join("..", "..", filepath.FromSlash(pkg), "*_test.go"))
		if !slices.Contains(deps, module+pkg) || (len(tests) > 0 && !slices.Contains(deps, module+pkg+".test")) {
			t.Fatalf("go list -deps -test %s lists neither the package nor its test binary: the listing is broken\n%s", pkg, out)
		}
		for _, dep := range deps {
			for _, b := range banned {
				if strings.HasPrefix(dep, b) {
					t.Errorf("%s's tests depend on %s", pkg, dep)
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
