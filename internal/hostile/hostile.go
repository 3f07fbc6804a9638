// Package hostile is a misbehaving peer of the plugin's socket, for the tests and the
// measurements of docs/security.md: it opens HTTP/2 streams whose request never arrives or
// arrives a few bytes short, connections that never speak, and connections that look busy
// without ever sending a request.
package hostile

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Peer is one raw HTTP/2 connection to a gRPC server.
type Peer struct {
	conn   net.Conn
	framer *http2.Framer
	// MaxStreams is what the server's SETTINGS allow (0: not announced).
	MaxStreams uint32
	next       uint32
}

// Dial connects to a unix socket and exchanges HTTP/2 settings.
func Dial(socket string) (*Peer, error) {
	conn, err := net.DialTimeout("unix", socket, 5*time.Second)
	if err != nil {
		return nil, err
	}
	p := &Peer{conn: conn, framer: http2.NewFramer(conn, conn), next: 1}
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		conn.Close()
		return nil, err
	}
	if err := p.framer.WriteSettings(); err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := p.framer.ReadFrame()
	conn.SetReadDeadline(time.Time{})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("server settings: %w", err)
	}
	if s, ok := f.(*http2.SettingsFrame); ok {
		if v, ok := s.Value(http2.SettingMaxConcurrentStreams); ok {
			p.MaxStreams = v
		}
		p.framer.WriteSettingsAck()
	}
	return p, nil
}

// OpenStreams sends n requests' headers for method and never their message.
func (p *Peer) OpenStreams(n int, method string) error {
	return p.OpenRequests(n, method, 0, 0)
}

// OpenRequests sends n requests for method whose gRPC message announces size bytes and stops
// short bytes before its end, so the server holds what arrived while it waits for the rest.
// size 0 sends the headers alone.
func (p *Peer) OpenRequests(n int, method string, size, short int) error {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	var body []byte
	if size > 0 {
		body = make([]byte, 5+size-short) // gRPC's prefix: not compressed, then the length
		binary.BigEndian.PutUint32(body[1:5], uint32(size))
	}
	for i := 0; i < n; i++ {
		buf.Reset()
		for _, h := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", method},
			{":authority", "localhost"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
			enc.WriteField(hpack.HeaderField{Name: h[0], Value: h[1]})
		}
		if err := p.framer.WriteHeaders(http2.HeadersFrameParam{StreamID: p.next, BlockFragment: buf.Bytes(), EndHeaders: true}); err != nil {
			return err
		}
		for rest := body; len(rest) > 0; {
			chunk := rest[:min(len(rest), maxFrame)]
			if err := p.framer.WriteData(p.next, false, chunk); err != nil {
				return err
			}
			rest = rest[len(chunk):]
		}
		p.next += 2
	}
	return nil
}

// maxFrame is HTTP/2's default (and gRPC's) largest frame payload.
const maxFrame = 16 << 10

// Nudge sends a connection-level WINDOW_UPDATE of one byte: 13 bytes on the wire that make a
// connection look active, which the server neither answers nor counts against the peer (a
// PING would be answered, and gRPC closes connections that ping too often).
func (p *Peer) Nudge() error { return p.framer.WriteWindowUpdate(0, 1) }

// Ended reads frames until every stream opened so far has ended (refused, reset or closed by
// the server) or until deadline, and returns how many ended. It answers pings, as a hostile
// peer that holds streams would.
func (p *Peer) Ended(deadline time.Time) (int, error) {
	opened := int(p.next-1) / 2
	ended := map[uint32]bool{}
	p.conn.SetReadDeadline(deadline)
	defer p.conn.SetReadDeadline(time.Time{})
	for len(ended) < opened {
		f, err := p.framer.ReadFrame()
		if err != nil {
			return len(ended), err
		}
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			ended[f.StreamID] = true
		case *http2.HeadersFrame:
			if f.StreamEnded() {
				ended[f.StreamID] = true
			}
		case *http2.DataFrame:
			if f.StreamEnded() {
				ended[f.StreamID] = true
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				p.framer.WritePing(true, f.Data)
			}
		case *http2.GoAwayFrame:
			return len(ended), fmt.Errorf("server sent GOAWAY: %v", f.ErrCode)
		}
	}
	return len(ended), nil
}

// Close closes the connection.
func (p *Peer) Close() error { return p.conn.Close() }

// Silent opens a connection that never sends a byte.
func Silent(socket string) (net.Conn, error) { return net.DialTimeout("unix", socket, 5*time.Second) }

// Busy is the eviction flood of docs/operations.md: connections that nudge every interval,
// never sending a request, plus one new such connection every interval, so that a server
// choosing whom to evict by recent traffic finds them all busier than a real client waiting on
// a slow answer.
type Busy struct {
	mu      sync.Mutex
	opened  int
	evicted int
	done    chan struct{}
}

// StartBusy holds conns busy connections and adds one every interval until ctx ends; Wait
// then closes them all.
func StartBusy(ctx context.Context, socket string, conns int, every time.Duration) *Busy {
	b := &Busy{done: make(chan struct{})}
	go b.run(ctx, socket, conns, every)
	return b
}

func (b *Busy) run(ctx context.Context, socket string, conns int, every time.Duration) {
	defer close(b.done)
	var live []*Peer
	defer func() {
		for _, p := range live {
			p.Close()
		}
	}()
	dial := func() {
		if p, err := Dial(socket); err == nil {
			live = append(live, p)
			b.mu.Lock()
			b.opened++
			b.mu.Unlock()
		}
	}
	for range conns {
		dial()
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		kept := live[:0]
		for _, p := range live {
			if err := p.Nudge(); err != nil { // closed by the server
				p.Close()
				b.mu.Lock()
				b.evicted++
				b.mu.Unlock()
				continue
			}
			kept = append(kept, p)
		}
		live = kept
		dial()
	}
}

// Wait waits for the flood to end and returns how many connections it opened and how many
// of them the server closed meanwhile.
func (b *Busy) Wait() (opened, closed int) {
	<-b.done
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.opened, b.evicted
}
