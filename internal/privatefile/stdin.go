package privatefile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// ReadOrStdin reads a secret from path under the Secret rule, or from stdin when path is "-"
// (so that it need not lie on the node's disk at all). Stdin is bounded like a file, and empty
// stdin is an error. The caller clears what it gets.
func ReadOrStdin(path string, stdin io.Reader) ([]byte, error) {
	if path != "-" {
		return Read(path)
	}
	b, err := io.ReadAll(io.LimitReader(stdin, MaxSize+1))
	if err == nil && len(b) > MaxSize {
		err = fmt.Errorf("stdin holds more than %d bytes", MaxSize)
	}
	if err == nil && len(bytes.TrimSpace(b)) == 0 { // no string copy of the secret left uncleared
		err = errors.New("stdin is empty")
	}
	if err != nil {
		clear(b)
		return nil, err
	}
	return b, nil
}
