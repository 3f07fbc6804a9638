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
	// Window is the stream flow-control window the server's SETTINGS grant (0: not announced,
	// HTTP/2's default of 65,535 bytes).
	Window uint32
	// Pings counts the PINGs the server sent while Ended read (gRPC's bandwidth estimator
	// sends one when data arrives, unless the server's windows are fixed).
	Pings int
	next  uint32
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
		if v, ok := s.Value(http2.SettingInitialWindowSize); ok {
			p.Window = v
		}
		p.framer.WriteSettingsAck()
	}
	return p, nil
}

// OpenStreams sends n requests' headers for method and never their message.
func (p *Peer) OpenStreams(n int, method string) error {
	return p.OpenRequests(n, Request{Method: method})
}

// Request is what OpenRequests sends on each stream.
type Request struct {
	Method string
	// Size is the length the gRPC message announces (0: the headers alone); the message stops
	// Short bytes before its end, so the server holds what arrived while it waits for the rest.
	Size, Short int
	// Frame is the largest DATA frame to send the message in (0: 16 KiB, HTTP/2's default).
	Frame int
	// AfterOne sends a complete message of Size bytes (a valid Decrypt request) before that
	// unfinished one: a unary server decodes the first, then waits for the stream's end.
	AfterOne bool
}

// OpenRequests sends n requests as r says. It does not wait for window updates: what one
// stream sends must fit the server's stream window (64 KiB for the plugin).
func (p *Peer) OpenRequests(n int, r Request) error {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	var body []byte
	if r.AfterOne && r.Size > 0 {
		body = append(body, grpcMessage(r.Size, r.Size)...)
	}
	if r.Size > 0 {
		body = append(body, grpcMessage(r.Size, r.Size-r.Short)...)
	}
	frame := maxFrame
	if r.Frame > 0 {
		frame = min(r.Frame, maxFrame)
	}
	for i := 0; i < n; i++ {
		buf.Reset()
		for _, h := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", r.Method},
			{":authority", "localhost"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
			enc.WriteField(hpack.HeaderField{Name: h[0], Value: h[1]})
		}
		if err := p.framer.WriteHeaders(http2.HeadersFrameParam{StreamID: p.next, BlockFragment: buf.Bytes(), EndHeaders: true}); err != nil {
			return err
		}
		for rest := body; len(rest) > 0; {
			chunk := rest[:min(len(rest), frame)]
			if err := p.framer.WriteData(p.next, false, chunk); err != nil {
				return err
			}
			rest = rest[len(chunk):]
		}
		p.next += 2
	}
	return nil
}

// grpcMessage is gRPC's 5-byte prefix announcing size bytes, then the first sent of them: a
// protobuf whose field 1 (a Decrypt request's ciphertext) fills the message.
func grpcMessage(size, sent int) []byte {
	m := make([]byte, 5+size)
	binary.BigEndian.PutUint32(m[1:5], uint32(size))
	for n := 1; ; n++ { // n: the length's own length
		if field := binary.AppendUvarint([]byte{0x0a}, uint64(size-1-n)); len(field) == 1+n {
			copy(m[5:], field)
			break
		}
	}
	return m[:5+sent]
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
				p.Pings++
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

// StartBusy opens conns busy connections, then returns; until ctx ends, they nudge and one
// more is opened every interval. Wait then closes them all.
func StartBusy(ctx context.Context, socket string, conns int, every time.Duration) *Busy {
	b := &Busy{done: make(chan struct{})}
	var live []*Peer
	for range conns {
		live = b.dial(socket, live)
	}
	go b.run(ctx, socket, live, every)
	return b
}

func (b *Busy) dial(socket string, live []*Peer) []*Peer {
	p, err := Dial(socket)
	if err != nil {
		return live
	}
	b.mu.Lock()
	b.opened++
	b.mu.Unlock()
	return append(live, p)
}

func (b *Busy) run(ctx context.Context, socket string, live []*Peer, every time.Duration) {
	defer close(b.done)
	defer func() {
		for _, p := range live {
			p.Close()
		}
	}()
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
		live = b.dial(socket, kept)
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
