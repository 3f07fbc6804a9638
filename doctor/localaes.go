package doctor

import "github.com/kmsplugin/kms-plugin/backends/localaes"

// LocalAES checks that the key file loads as serve would load it.
func LocalAES(path string) Result {
	const check = "localaes key file"
	b, err := localaes.Open(path)
	if err != nil {
		return fail(check, "fix the file (kmsctl keygen writes a valid one)", "%v", err)
	}
	ids := b.KeyIDs()
	return ok(check, "%s: %d keys, new DEKs wrapped by %s", path, len(ids), ids[0])
}
