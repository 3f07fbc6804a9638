// Package hostile is a misbehaving peer of the plugin's socket, for the tests and the
// measurements of docs/security.md: it opens HTTP/2 streams whose request never arrives, and
// connections that never speak.
package hostile

import (
	"bytes"
	"fmt"
	"net"
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
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for i := 0; i < n; i++ {
		buf.Reset()
		for _, h := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", method},
			{":authority", "localhost"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
			enc.WriteField(hpack.HeaderField{Name: h[0], Value: h[1]})
		}
		if err := p.framer.WriteHeaders(http2.HeadersFrameParam{StreamID: p.next, BlockFragment: buf.Bytes(), EndHeaders: true}); err != nil {
			return err
		}
		p.next += 2
	}
	return nil
}

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
