package plugin

import (
	"log/slog"
	"sync"
	"time"

	"github.com/kmsplugin/kms-plugin/internal/textutil"
)

// Bounds on what one failed request may write to the log: request fields come from the
// client, and a client that retries a bad request in a loop must not flood the log.
const (
	maxLoggedField = 256              // bytes of a request field (uid, key id)
	maxLoggedError = 1024             // bytes of an error's text
	repeatWindow   = 10 * time.Second // one line per identical failure and window
	maxFailureKeys = 1024             // distinct failures remembered per window
)

// failureLog logs failed requests, the first of identical ones at once and the repeats as a
// count on the next line after the window.
type failureLog struct {
	log *slog.Logger
	now func() time.Time

	mu     sync.Mutex
	window time.Time         // start of the current window
	seen   map[failure]int64 // repeats suppressed in this window, per failure
	carry  map[failure]int64 // suppressed in the previous window, reported with the next line
	others int64             // distinct failures beyond maxFailureKeys, not logged
}

// failure is what makes two failures identical: not the uid, which differs per request.
type failure struct{ method, code, keyID, err string }

func newFailureLog(log *slog.Logger, now func() time.Time) *failureLog {
	return &failureLog{log: log, now: now, seen: map[failure]int64{}, carry: map[failure]int64{}}
}

func (l *failureLog) failed(method, uid, keyID, code, errText string) {
	f := failure{method, code, textutil.Truncate(keyID, maxLoggedField), textutil.Truncate(errText, maxLoggedError)}
	l.mu.Lock()
	if now := l.now(); now.Sub(l.window) >= repeatWindow {
		l.window, l.carry, l.seen = now, l.seen, map[failure]int64{}
	}
	repeats, logged := l.seen[f]
	switch {
	case logged:
		l.seen[f] = repeats + 1
		l.mu.Unlock()
		return
	case len(l.seen) >= maxFailureKeys:
		l.others++ // the map stays bounded; the count is reported with the next line
		l.mu.Unlock()
		return
	}
	l.seen[f] = 0
	before, others := l.carry[f], l.others
	delete(l.carry, f)
	l.others = 0
	l.mu.Unlock()
	args := []any{"method", method, "uid", textutil.Truncate(uid, maxLoggedField), "key_id", f.keyID, "code", code, "error", f.err}
	if before > 0 {
		args = append(args, "repeated_before", before)
	}
	if others > 0 {
		args = append(args, "other_failures_not_logged", others)
	}
	l.log.Warn("request failed", args...)
}
