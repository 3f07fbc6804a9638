package vault

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/kmsplugin/kms-plugin/dek"
)

// Transit decrypts are coalesced: while a decrypt request is in flight, the ones that arrive
// wait and go together in the next transit batch_input request, so that a cold-cache burst
// (an apiserver filling its watch cache after a restart) costs a few round trips, not one per
// seed. A lone request goes at once, alone: batching adds no latency at low load, and at most
// one round trip under load.
const (
	// maxBatch bounds one batch request's items (and so its size and Vault's work per request).
	maxBatch = 128
	// maxBatchesInFlight bounds the batch requests under way at once.
	maxBatchesInFlight = 4
)

// batcher coalesces concurrent transit decrypts.
type batcher struct {
	k *KEK

	mu       sync.Mutex
	inFlight int
	pending  []*batchItem

	requests, items atomic.Uint64 // sent, for the metrics
}

// DecryptBatches returns how many transit decrypt requests batching has sent and how many
// Unwraps they carried: their ratio is the mean batch size.
func (k *KEK) DecryptBatches() (requests, items uint64) {
	return k.decrypts.requests.Load(), k.decrypts.items.Load()
}

type batchItem struct {
	ctx        context.Context
	ciphertext string // transit's "vault:vN:..." form
	assocData  string // base64 associated_data, "" for none (keyState.bound)
	done       chan struct{}
	plaintext  []byte
	err        error
}

// decrypt asks Vault to decrypt one transit ciphertext (with associated data assocData, base64,
// unless ""), batched with concurrent ones.
func (b *batcher) decrypt(ctx context.Context, ciphertext, assocData string) ([]byte, error) {
	item := &batchItem{ctx: ctx, ciphertext: ciphertext, assocData: assocData, done: make(chan struct{})}
	b.mu.Lock()
	b.pending = append(b.pending, item)
	if b.inFlight < maxBatchesInFlight {
		b.inFlight++
		batch := b.takeLocked()
		b.mu.Unlock()
		go b.run(batch)
	} else {
		b.mu.Unlock()
	}
	select {
	case <-item.done:
		return item.plaintext, item.err
	case <-ctx.Done():
		return nil, classify("decrypt with "+b.k.decryptPath(), ctx.Err())
	}
}

// takeLocked removes the next batch from the queue.
func (b *batcher) takeLocked() []*batchItem {
	n := min(len(b.pending), maxBatch)
	batch := b.pending[:n:n]
	b.pending = b.pending[n:]
	return batch
}

// run sends batches until the queue is empty.
func (b *batcher) run(batch []*batchItem) {
	for {
		b.send(batch)
		b.mu.Lock()
		if len(b.pending) == 0 {
			b.inFlight--
			b.mu.Unlock()
			return
		}
		batch = b.takeLocked()
		b.mu.Unlock()
	}
}

// decryptPath is transit's decrypt endpoint for the key.
func (k *KEK) decryptPath() string { return k.cfg.Mount + "/decrypt/" + k.cfg.Key }

// send makes one request for batch and answers each item.
func (b *batcher) send(batch []*batchItem) {
	live := batch[:0:0]
	for _, it := range batch {
		if it.ctx.Err() == nil { // a caller that gave up is not asked about
			live = append(live, it)
		} else {
			it.err = it.ctx.Err()
			close(it.done)
		}
	}
	if len(live) == 0 {
		return
	}
	ctx, cancel := batchContext(live)
	defer cancel()
	b.requests.Add(1)
	b.items.Add(uint64(len(live)))
	if len(live) == 1 {
		// Alone, the plain request: its error answer names the failure exactly.
		it := live[0]
		it.plaintext, it.err = b.k.decryptOne(ctx, it.ciphertext, it.assocData)
		close(it.done)
		return
	}
	results, err := b.k.decryptBatch(ctx, live)
	if err != nil && !isBadRequest(err) {
		for _, it := range live {
			it.err = err
			close(it.done)
		}
		return
	}
	if err != nil {
		// Every item failed, so Vault answered 400 and vault/api dropped the per-item errors:
		// ask for each alone to say which failed and why.
		for _, it := range live {
			it.plaintext, it.err = b.k.decryptOne(ctx, it.ciphertext, it.assocData)
			close(it.done)
		}
		return
	}
	for i, it := range live {
		it.plaintext, it.err = results[i].plaintext, results[i].err
		close(it.done)
	}
}

// batchContext lives as long as the longest-waiting caller: each caller still stops waiting
// at its own deadline.
func batchContext(items []*batchItem) (context.Context, context.CancelFunc) {
	var latest time.Time
	for _, it := range items {
		d, ok := it.ctx.Deadline()
		if !ok {
			return context.WithCancel(context.Background())
		}
		if d.After(latest) {
			latest = d
		}
	}
	return context.WithDeadline(context.Background(), latest)
}

// isBadRequest tells an error answer about the request's content (a 400: bad ciphertext, a
// retired version) from one about Vault or the token.
func isBadRequest(err error) bool {
	for _, kind := range []error{dek.ErrTampered, dek.ErrMalformed, dek.ErrUnknownKey, errBadRequest} {
		if errors.Is(err, kind) {
			return true
		}
	}
	return false
}

type batchResult struct {
	plaintext []byte
	err       error
}

// decryptBatch is one transit decrypt request with batch_input. partial_failure_response_code
// makes Vault answer 200 when some items fail, with each item's error in its result.
func (k *KEK) decryptBatch(ctx context.Context, items []*batchItem) ([]batchResult, error) {
	path := k.decryptPath()
	input := make([]map[string]any, len(items))
	for i, it := range items {
		input[i] = decryptInput(it.ciphertext, it.assocData)
	}
	var secret *api.Secret
	err := k.cfg.Retry.do(ctx, k.cfg.Clock, func(ctx context.Context) (err error) {
		secret, err = k.client.Logical().WriteWithContext(ctx, path, map[string]any{
			"batch_input": input, "partial_failure_response_code": 200,
		})
		return err
	})
	if err != nil {
		return nil, k.requestFailed("decrypt with "+path, err)
	}
	if secret == nil {
		return nil, k.notFound("decrypt with " + path)
	}
	raw, _ := secret.Data["batch_results"].([]any)
	if len(raw) != len(items) {
		return nil, fmt.Errorf("decrypt with %s: vault answered %d batch results for %d items", path, len(raw), len(items))
	}
	out := make([]batchResult, len(items))
	for i, r := range raw {
		m, _ := r.(map[string]any)
		if msg, _ := m["error"].(string); msg != "" {
			out[i].err = fmt.Errorf("%w: decrypt with %s: %s", badRequestKind(msg), path, msg)
			continue
		}
		out[i].plaintext, out[i].err = plaintextOf(path, m)
	}
	return out, nil
}

// plaintextOf decodes a transit decrypt answer's (or batch result's) plaintext.
func plaintextOf(path string, data map[string]any) ([]byte, error) {
	pt, ok := data["plaintext"].(string)
	if !ok || pt == "" {
		return nil, fmt.Errorf("decrypt with %s: vault returned no plaintext", path)
	}
	plain, err := base64.StdEncoding.DecodeString(pt)
	if err != nil {
		return nil, fmt.Errorf("decrypt with %s: vault returned undecodable plaintext", path)
	}
	return plain, nil
}

// decryptInput is one ciphertext to decrypt, as a request body or a batch_input item.
func decryptInput(ciphertext, assocData string) map[string]any {
	in := map[string]any{"ciphertext": ciphertext}
	if assocData != "" {
		in["associated_data"] = assocData
	}
	return in
}

// decryptOne is one transit decrypt request without batch_input.
func (k *KEK) decryptOne(ctx context.Context, ciphertext, assocData string) ([]byte, error) {
	path := k.decryptPath()
	var secret *api.Secret
	err := k.cfg.Retry.do(ctx, k.cfg.Clock, func(ctx context.Context) (err error) {
		secret, err = k.client.Logical().WriteWithContext(ctx, path, decryptInput(ciphertext, assocData))
		return err
	})
	if err != nil {
		return nil, k.requestFailed("decrypt with "+path, err)
	}
	if secret == nil {
		return nil, k.notFound("decrypt with " + path)
	}
	return plaintextOf(path, secret.Data)
}
