package privatefile

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

func TestReadOrStdin(t *testing.T) {
	if b, err := ReadOrStdin("-", strings.NewReader("secret\n")); err != nil || string(b) != "secret\n" {
		t.Fatalf("stdin: %q, %v", b, err)
	}
	for name, in := range map[string]io.Reader{
		"empty":    strings.NewReader(" \n"),
		"too long": bytes.NewReader(make([]byte, MaxSize+1)),
	} {
		if _, err := ReadOrStdin("-", in); err == nil {
			t.Errorf("%s stdin: accepted", name)
		}
	}
}

// A secret read from stdin is checked without a copy (a string of it would stay in memory
// uncleared): ReadOrStdin allocates no more than reading stdin itself does.
func TestReadOrStdinMakesNoCopy(t *testing.T) {
	text := []byte(strings.Repeat("-----BEGIN PRIVATE KEY-----\nAAAA\n", 8))
	read := testing.AllocsPerRun(20, func() {
		b, _ := io.ReadAll(io.LimitReader(bytes.NewReader(text), MaxSize+1))
		clear(b)
	})
	got := testing.AllocsPerRun(20, func() {
		b, err := ReadOrStdin("-", bytes.NewReader(text))
		if err != nil {
			t.Fatal(err)
		}
		clear(b)
	})
	if got > read {
		t.Fatalf("ReadOrStdin makes %v allocations, reading stdin %v: a copy of the secret is left uncleared", got, read)
	}
}
