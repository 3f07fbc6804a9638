package main

import (
	"fmt"
	"syscall"
)

// disableCoreDumps sets RLIMIT_CORE to 0 (soft and hard): a crash must not write the
// process's memory, with its keys and DEKs, to a core file.
func disableCoreDumps() error {
	if err := syscall.Setrlimit(syscall.RLIMIT_CORE, &syscall.Rlimit{Cur: 0, Max: 0}); err != nil {
		return fmt.Errorf("disabling core dumps (RLIMIT_CORE 0): %w", err)
	}
	return nil
}
