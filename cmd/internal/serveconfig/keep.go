package serveconfig

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/kmsplugin/kms-plugin/internal/privatefile"
	"github.com/kmsplugin/kms-plugin/plugin"
	"github.com/kmsplugin/kms-plugin/plugin/keep"
	"github.com/kmsplugin/kms-plugin/plugin/keep/tpm"
)

// Where --vault-keep-memory keeps its state unless --vault-keep-memory-dir says otherwise.
const (
	// DefaultTmpfsDir is under /run, which systemd and every distribution mount as tmpfs.
	DefaultTmpfsDir = "/run/kms-plugin"
	DefaultTPMDir   = tpm.DefaultDir
)

// keepFlags are the flags of what serve keeps across a restart (docs/vault.md, "Restart
// during an outage").
type keepFlags struct {
	mode, dir, device, pcrs, nvIndex string
}

func (k *keepFlags) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&k.mode, "vault-keep-memory", "off", "vault: keep the key id, last answer, local KEK and DEK cache across a restart, so a plugin restarted during a Vault outage serves for the rest of the grace: off, tmpfs (a restart, not a reboot) or tpm (sealed to the TPM: a reboot too); docs/security.md says what each exposes")
	fs.StringVar(&k.dir, "vault-keep-memory-dir", "", "vault: directory of the kept state (default "+DefaultTmpfsDir+" for tmpfs, which must be on tmpfs; "+DefaultTPMDir+" for tpm)")
	fs.StringVar(&k.device, "vault-tpm-device", tpm.DefaultDevice, "vault: with --vault-keep-memory tpm: the TPM 2.0, a device (the kernel's resource manager) or unix:///path (a software TPM's socket)")
	fs.StringVar(&k.pcrs, "vault-tpm-pcrs", "7", "vault: with --vault-keep-memory tpm: comma-separated SHA-256 PCRs the kept state is sealed to (\"\": none, the TPM alone)")
	fs.StringVar(&k.nvIndex, "vault-tpm-nv-index", fmt.Sprintf("%#x", tpm.DefaultNVIndex), "vault: with --vault-keep-memory tpm: NV index of the counter that makes an erased state stay erased (owner range)")
}

// problems checks the flags alone; grace is --vault-memory-grace.
func (k *keepFlags) problems(fs *pflag.FlagSet, mem plugin.MemoryConfig) error {
	switch k.mode {
	case "off", "tmpfs", "tpm":
	default:
		return fmt.Errorf("--vault-keep-memory %q: want off, tmpfs or tpm", k.mode)
	}
	if k.mode != "tpm" {
		var set []string
		for _, name := range []string{"vault-tpm-device", "vault-tpm-pcrs", "vault-tpm-nv-index"} {
			if fs != nil && fs.Changed(name) {
				set = append(set, "--"+name)
			}
		}
		if len(set) > 0 {
			return fmt.Errorf("%s need --vault-keep-memory tpm (it is %s)", strings.Join(set, ", "), k.mode)
		}
	}
	if k.mode == "off" {
		if fs != nil && fs.Changed("vault-keep-memory-dir") {
			return errors.New("--vault-keep-memory-dir needs --vault-keep-memory tmpfs or tpm")
		}
		return nil
	}
	if mem.Grace <= 0 {
		return fmt.Errorf("--vault-keep-memory %s needs --vault-memory-grace above 0: nothing is served from memory without a grace", k.mode)
	}
	if _, err := k.pcrList(); err != nil {
		return err
	}
	if _, err := k.nv(); err != nil {
		return err
	}
	return nil
}

func (k *keepFlags) pcrList() ([]int, error) {
	var out []int
	for _, f := range strings.Split(k.pcrs, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 0 || n > 23 {
			return nil, fmt.Errorf("--vault-tpm-pcrs %q: want PCR numbers 0 to 23, comma-separated, or \"\"", k.pcrs)
		}
		out = append(out, n)
	}
	return out, nil
}

func (k *keepFlags) nv() (uint32, error) {
	n, err := strconv.ParseUint(k.nvIndex, 0, 32)
	if err != nil {
		return 0, fmt.Errorf("--vault-tpm-nv-index %q: want a number such as 0x01004b50", k.nvIndex)
	}
	return uint32(n), nil
}

// open returns the store the flags choose, or nil for off. A TPM that cannot be opened, or a
// directory that is not tmpfs, stops serve from starting.
func (k *keepFlags) open() (keep.Store, error) {
	switch k.mode {
	case "tmpfs":
		dir := k.dir
		if dir == "" {
			dir = DefaultTmpfsDir
		}
		s, err := keep.NewTmpfs(dir)
		if err != nil {
			return nil, fmt.Errorf("--vault-keep-memory tmpfs: %w", err)
		}
		return s, nil
	case "tpm":
		dir := k.dir
		if dir == "" {
			dir = DefaultTPMDir
		}
		pcrs, _ := k.pcrList()
		nv, _ := k.nv()
		s, err := tpm.Open(tpm.Config{Device: k.device, Dir: dir, PCRs: pcrs, NVIndex: nv})
		if err != nil {
			return nil, fmt.Errorf("--vault-keep-memory tpm: %w", err)
		}
		return s, nil
	}
	return nil, nil
}

// KeepPreflight checks what --vault-keep-memory needs, as serve's start would, without writing
// anything or talking to the TPM (kmsctl doctor): the flags, the state directory (on tmpfs and
// private for tmpfs; not writable by others for tpm) and that the TPM device exists. It
// returns the store it checked ("" when off).
func (b *Vault) KeepPreflight(fs *pflag.FlagSet) (store string, err error) {
	k := &b.keep
	if err := k.problems(fs, b.memory); err != nil || k.mode == "off" {
		return "", err
	}
	dir := k.dir
	switch {
	case dir != "":
	case k.mode == "tmpfs":
		dir = DefaultTmpfsDir
	default:
		dir = DefaultTPMDir
	}
	store = k.mode + " " + dir
	// serve makes a missing directory: judge the nearest one that exists, which it would be in.
	existing := dir
	for {
		if _, err := os.Stat(existing); err == nil || filepath.Dir(existing) == existing {
			break
		}
		existing = filepath.Dir(existing)
	}
	if k.mode == "tmpfs" {
		if err := keep.OnTmpfs(existing); err != nil {
			return store, fmt.Errorf("--vault-keep-memory tmpfs: %w", err)
		}
		if existing == dir {
			if err := keep.PrivateDir(dir); err != nil {
				return store, fmt.Errorf("--vault-keep-memory tmpfs: %w", err)
			}
		}
		return store, nil
	}
	if existing == dir {
		info, err := os.Stat(dir)
		if err == nil && !info.IsDir() {
			err = fmt.Errorf("%s is not a directory", dir)
		}
		if err == nil {
			err = privatefile.JudgeInfo(dir, info, privatefile.Public)
		}
		if err != nil {
			return store, fmt.Errorf("--vault-keep-memory tpm: state directory: %w", err)
		}
	}
	device, socket := strings.CutPrefix(k.device, "unix://")
	info, err := os.Stat(device)
	switch {
	case err != nil:
		return store, fmt.Errorf("--vault-keep-memory tpm: the TPM %s: %w", k.device, err)
	case socket && info.Mode()&os.ModeSocket == 0:
		return store, fmt.Errorf("--vault-keep-memory tpm: %s is not a socket", device)
	case !socket && info.Mode()&os.ModeCharDevice == 0:
		return store, fmt.Errorf("--vault-keep-memory tpm: %s is not a character device", device)
	}
	return store + " (TPM " + k.device + ")", nil
}
