// Package doctor checks, before (or beside) a running plugin, what the plugin needs to serve:
// a usable socket path, private credential files, and for Vault a reachable unsealed server, a
// working login, a token with exactly the needed capabilities, a safely configured transit key
// that still decrypts every version in use, and a working encrypt/decrypt round trip. Each
// check is one Result; `kmsctl doctor` prints them one per line.
package doctor

import (
	"fmt"
	"io"
	"strings"
)

// Status is a check's outcome.
type Status int

const (
	OK   Status = iota
	Warn        // works, but is riskier or broader than it should be
	Fail        // the plugin cannot serve, or serves unsafely
)

func (s Status) String() string {
	switch s {
	case OK:
		return "ok"
	case Warn:
		return "warn"
	}
	return "FAIL"
}

// Result is one check: what was checked, what was found and why it matters, and how to fix it.
type Result struct {
	Status Status
	Check  string // short name: "socket", "vault login", ...
	Detail string
	Fix    string // empty when there is nothing to do
}

func (r Result) String() string {
	s := fmt.Sprintf("%-4s  %-20s %s", r.Status, r.Check, oneLine(r.Detail))
	if r.Fix != "" {
		s += " -- fix: " + oneLine(r.Fix)
	}
	return s
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// Report is every check's result, in the order they ran.
type Report []Result

// Failed reports how many checks failed.
func (r Report) Failed() int {
	n := 0
	for _, res := range r {
		if res.Status == Fail {
			n++
		}
	}
	return n
}

// Find returns the results of the named check.
func (r Report) Find(check string) []Result {
	var out []Result
	for _, res := range r {
		if res.Check == check {
			out = append(out, res)
		}
	}
	return out
}

// Write prints one line per check.
func (r Report) Write(w io.Writer) error {
	for _, res := range r {
		if _, err := fmt.Fprintln(w, res); err != nil {
			return err
		}
	}
	return nil
}

func ok(check, format string, args ...any) Result {
	return Result{Status: OK, Check: check, Detail: fmt.Sprintf(format, args...)}
}

func warn(check, fix, format string, args ...any) Result {
	return Result{Status: Warn, Check: check, Detail: fmt.Sprintf(format, args...), Fix: fix}
}

func fail(check, fix, format string, args ...any) Result {
	return Result{Status: Fail, Check: check, Detail: fmt.Sprintf(format, args...), Fix: fix}
}
