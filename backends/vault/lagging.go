package vault

// laggingView reports whether state is an older view of the key this backend already follows:
// its latest version is below the adopted one, and that version has the creation time seen
// before, so it is the same key, not a deleted and recreated one. A replica behind a load
// balancer that has not caught up with a rotation answers so, for as many checks as it lags;
// taking its view would move the key id back (a flip-flop the apiserver sees as a rotation) and
// make the newer versions look unknown to Wrap and Unwrap. Such a view is ignored: the key id and
// the versions known stay as they are. Called with k.mu held.
func (k *KEK) laggingView(state *keyState) bool {
	adopted := k.deb.adopted
	if k.observed == nil || adopted.lineage == "" || state.latest.version >= adopted.version {
		return false
	}
	created, known := k.observed.created[state.latest.version]
	if !known || created != state.created[state.latest.version] {
		return false
	}
	k.cfg.Log.Warn("vault transit key: a check saw an older version of the key (a lagging replica?); keeping the key id",
		"key_id", adopted.String(), "seen", state.latest.String())
	return true
}
