package localaes

// publishedKeys holds the fingerprints (as in key ids) of every 32-byte secret that this
// repository's docs and examples show. Anyone can read those, so a key file holding one is
// refused rather than trusted. TestEveryPublishedKeyIsListed scans docs/, deploy/ and
// README.md, so that a new example key cannot slip in unlisted.
var publishedKeys = map[string]string{
	"cc87daf159ab7df7": "deploy/static-pod/encryption-config-from-aescbc-step*.yaml (REPLACE-ME-with-32-random-bytes!)",
}
