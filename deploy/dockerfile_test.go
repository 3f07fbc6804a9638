package deploy_test

import (
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

// instruction is one Dockerfile instruction: its keyword, flags (--from=...) and arguments.
type instruction struct {
	cmd   string
	flags []string
	args  []string
	json  bool // exec form: ENTRYPOINT ["..."]
}

// stages parses ../Dockerfile with BuildKit's own parser into its stages' instructions, and
// the defaults of the ARGs before the first FROM.
func stages(t *testing.T) ([][]instruction, map[string]string) {
	t.Helper()
	raw, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	res, err := parser.Parse(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	if len(res.Warnings) > 0 {
		t.Errorf("Dockerfile warnings: %v", res.Warnings)
	}
	var out [][]instruction
	args := map[string]string{}
	for _, n := range res.AST.Children {
		in := instruction{cmd: strings.ToUpper(n.Value), flags: n.Flags, json: n.Attributes["json"]}
		for a := n.Next; a != nil; a = a.Next {
			in.args = append(in.args, a.Value)
		}
		if in.cmd == "FROM" {
			out = append(out, nil)
		}
		if len(out) == 0 {
			if in.cmd == "ARG" && len(in.args) == 1 {
				if name, def, ok := strings.Cut(in.args[0], "="); ok {
					args[name] = def
				}
			}
			continue // ARG before the first FROM
		}
		out[len(out)-1] = append(out[len(out)-1], in)
	}
	return out, args
}

func TestDockerfile(t *testing.T) {
	st, args := stages(t)
	if len(st) != 2 {
		t.Fatalf("%d stages, want a build stage and a final stage", len(st))
	}
	build, final := st[0], st[1]

	// The build stage runs the one build script, so the image gets the flags a hand build gets.
	if from := build[0].args; len(from) != 3 || !strings.EqualFold(from[1], "AS") || from[2] != "build" {
		t.Errorf("build stage: FROM %v, want FROM <go image> AS build", from)
	}
	var runsScript bool
	for _, in := range build {
		if in.cmd == "RUN" && strings.Contains(strings.Join(in.args, " "), "scripts/build.sh /out/kms-plugin") {
			runsScript = true
		}
	}
	if !runsScript {
		t.Error("the build stage does not run scripts/build.sh /out/kms-plugin")
	}

	// The final stage: a base without a shell, only the binary copied in, no RUN (a RUN needs
	// a shell), a nonroot user, an exec-form entrypoint.
	// The bases are build arguments (the tests pass local ones: no registry here) whose
	// defaults are the published images.
	if from := build[0].args[0]; from != "${BUILD_IMAGE}" || args["BUILD_IMAGE"] != "golang:${GO_VERSION}" {
		t.Errorf("build stage FROM %s, BUILD_IMAGE default %q: want ${BUILD_IMAGE}, default golang:${GO_VERSION}", from, args["BUILD_IMAGE"])
	}
	if final[0].args[0] != "${BASE_IMAGE}" {
		t.Errorf("final stage FROM %s, want ${BASE_IMAGE}", final[0].args[0])
	}
	base := args["BASE_IMAGE"]
	if base != "scratch" && !regexp.MustCompile(`^gcr\.io/distroless/static(-debian\d+)?:nonroot$`).MatchString(base) {
		t.Errorf("final base %s: want distroless static nonroot or scratch", base)
	}
	// The commit is an argument too: .git is not in the build context.
	var passesCommit bool
	for _, in := range build {
		if in.cmd == "RUN" && strings.Contains(strings.Join(in.args, " "), "COMMIT=${COMMIT}") {
			passesCommit = true
		}
	}
	if !passesCommit {
		t.Error("the build stage does not pass COMMIT to scripts/build.sh")
	}
	var copies, users, entrypoints int
	for _, in := range final[1:] {
		switch in.cmd {
		case "COPY":
			copies++
			if !slices.Equal(in.flags, []string{"--from=build"}) || !slices.Equal(in.args, []string{"/out/kms-plugin", "/kms-plugin"}) {
				t.Errorf("final stage: COPY %v %v, want only the binary from the build stage", in.flags, in.args)
			}
		case "USER":
			users++
			if in.args[0] == "0" || strings.HasPrefix(in.args[0], "root") || strings.HasPrefix(in.args[0], "0:") {
				t.Errorf("final stage runs as %s", in.args[0])
			}
		case "ENTRYPOINT":
			entrypoints++
			if !in.json || !slices.Equal(in.args, []string{"/kms-plugin"}) {
				t.Errorf(`ENTRYPOINT %v (exec form %v), want ["/kms-plugin"]`, in.args, in.json)
			}
		default:
			t.Errorf("final stage: unexpected %s %v", in.cmd, in.args)
		}
	}
	if copies != 1 || users != 1 || entrypoints != 1 {
		t.Errorf("final stage: %d COPY, %d USER, %d ENTRYPOINT; want one each", copies, users, entrypoints)
	}
}

// The flags the image is built with are the script's, and the script's are the ones promised.
func TestBuildScriptFlags(t *testing.T) {
	raw, err := os.ReadFile("../scripts/build.sh")
	if err != nil {
		t.Fatal(err)
	}
	script := string(raw)
	for _, want := range []string{"CGO_ENABLED=0 go build", "-tags grpcnotrace", "-trimpath", "-buildvcs=false", `-ldflags "-s -w -X main.version=${version} -X main.commit=${commit}"`, `"./cmd/$2"`, "command=${2:-kms-plugin}"} {
		if !strings.Contains(script, want) {
			t.Errorf("scripts/build.sh lacks %q", want)
		}
	}
	if n := strings.Count(script, "go build"); n != 1 {
		t.Errorf("scripts/build.sh has %d go builds, want one", n)
	}
}

// The binary the Dockerfile builds runs alone in an empty root filesystem, as it does in the
// image: static, nothing loaded from the filesystem, version baked in.
func TestBuildRunsInEmptyRoot(t *testing.T) {
	out := filepath.Join(t.TempDir(), "kms-plugin")
	build := exec.Command("bash", "../scripts/build.sh", out)
	build.Env = append(os.Environ(), "VERSION=v9.8.7-test")
	if msg, err := build.CombinedOutput(); err != nil {
		t.Fatalf("scripts/build.sh: %v\n%s", err, msg)
	}
	bin, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range bin.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("the binary is dynamically linked (%v)", p.Type)
		}
	}
	if syms, _ := bin.Symbols(); len(syms) > 0 {
		t.Errorf("the binary keeps %d symbols: -s -w did not apply", len(syms))
	}
	bin.Close()

	// An empty root holding only the binary, at the path the image puts it.
	root := t.TempDir()
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "kms-plugin"), raw, 0o755); err != nil {
		t.Fatal(err)
	}
	command := func(args ...string) *exec.Cmd {
		cmd := exec.Command("/kms-plugin", args...)
		cmd.Env = []string{} // the image sets none
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
		if os.Geteuid() != 0 { // an unprivileged user chroots in a user namespace of its own
			cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWUSER
			cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Geteuid(), Size: 1}}
			cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getegid(), Size: 1}}
		}
		return cmd
	}
	if msg, err := command("--version").CombinedOutput(); err != nil || !strings.HasPrefix(string(msg), "kms-plugin version v9.8.7-test (commit ") {
		t.Errorf("--version: %v, printed %q", err, msg)
	}
	// The embedded default creates its key and serves with only the kernel's randomness, not
	// /dev or /etc.
	logFile, err := os.Create(filepath.Join(t.TempDir(), "serve.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	serve := command("--listen=/run/kmsplugin/kms.sock", "--health-addr=")
	serve.Stdout, serve.Stderr = logFile, logFile
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	defer serve.Process.Kill()
	log := func() string { b, _ := os.ReadFile(logFile.Name()); return string(b) }
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(log(), "serving KMS v2") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	serve.Process.Signal(syscall.SIGTERM)
	serve.Wait()
	if !strings.Contains(log(), "serving KMS v2") || !strings.Contains(log(), "CREATED A NEW KEY") {
		t.Fatalf("serve in the empty root:\n%s", log())
	}
	if info, err := os.Stat(filepath.Join(root, "var/lib/kms-plugin/keys.yaml")); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("key file in the empty root: %v, %v", info, err)
	}
}
