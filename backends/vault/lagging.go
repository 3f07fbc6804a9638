package vault

// laggingView reports whether state is an older view of the key this backend already follows:
// its latest version is below the adopted one and was created before the adopted version (or
// has the creation time the adopted view lists for it), so it is the same key, not a deleted and
// recreated one, whose versions are all created later. A replica behind a load balancer that has
// not caught up with a rotation answers so, for as many checks as it lags; taking its view would
// move the key id back (a flip-flop the apiserver sees as a rotation) and make the newer versions
// look unknown to Wrap and Unwrap. Such a view is ignored: the key id and the versions known stay
// as they are.
//
// The reference is the view in which the adopted version was latest, not the last view seen:
// that may be a recreated key's first view (whose second sighting must be adopted, not ignored),
// and after min_decryption_version is raised it no longer lists the versions a lagging replica
// still reports. Called with k.mu held.
func (k *KEK) laggingView(state *keyState) bool {
	adopted, ref := k.adoption.adopted, k.adoptedView
	if ref == nil || adopted.lineage == "" || state.latest.version >= adopted.version {
		return false
	}
	created := state.created[state.latest.version]
	refCreated, known := ref.created[state.latest.version]
	if created >= ref.created[adopted.version] && (!known || created != refCreated) {
		return false
	}
	k.cfg.Log.Warn("vault transit key: a check saw an older version of the key (a lagging replica?); keeping the key id",
		"key_id", adopted.String(), "seen", state.latest.String())
	return true
}
