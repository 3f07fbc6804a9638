package plugin

import (
	"encoding/binary"
	"errors"
	"time"
)

// maxSmallFrames is how many DATA frames of under smallFrame bytes one stream may send before
// its end. gRPC clients send a request's message in one frame, then end the stream with an
// empty one (or with the message's frame); a window nearly used up can split a message once
// more.
const (
	maxSmallFrames = 4
	smallFrame     = 1 << 10
)

// errSmallFrames closes a connection that cuts messages into many small DATA frames.
var errSmallFrames = errors.New("peer cut a message into many small DATA frames; connection closed")

// frameGuard follows the HTTP/2 frames a peer sends, by their 9-byte headers, to refuse what no
// client sends: a request's message cut into many small DATA frames. gRPC keeps each DATA frame
// as a buffer of its own until the message is whole, about 100 bytes besides the payload, so a
// message sent a byte a frame can make a stream hold a hundred times its size: 2,048 streams of
// 16 KiB messages sent so held 230 MiB before the request timeout ended them
// (docs/operations.md). It counts, per stream that has not ended, the small DATA
// frames it sent; a stream with more than maxSmallFrames, or more such streams than a
// connection can hold open twice over, closes the connection. A stream the server ended
// (refused, timed out) may never end from the peer's side: its count is forgotten once it is
// older than maxAge, by when the server has ended every stream.
type frameGuard struct {
	hdr     [9]byte
	hdrN    int
	skip    int // bytes of the current frame's payload (or of the preface) still to come
	pending map[uint32]smallFrames
	streams int           // pending may hold this many streams
	maxAge  time.Duration // after which a stream has been ended by the server
}

type smallFrames struct {
	n     int
	since time.Time
}

func newFrameGuard(p PeerLimits) frameGuard {
	return frameGuard{skip: len(http2Preface), streams: 2 * int(p.MaxStreams), maxAge: p.RequestTimeout}
}

// read follows b, the next bytes the peer sent.
func (g *frameGuard) read(b []byte) error {
	for len(b) > 0 {
		if g.skip > 0 {
			n := min(g.skip, len(b))
			g.skip -= n
			b = b[n:]
			continue
		}
		n := copy(g.hdr[g.hdrN:], b)
		g.hdrN += n
		b = b[n:]
		if g.hdrN < len(g.hdr) {
			return nil
		}
		g.hdrN = 0
		length := int(g.hdr[0])<<16 | int(g.hdr[1])<<8 | int(g.hdr[2])
		g.skip = length
		if err := g.frame(g.hdr[3], g.hdr[4], binary.BigEndian.Uint32(g.hdr[5:])&(1<<31-1), length); err != nil {
			return err
		}
	}
	return nil
}

// HTTP/2's frame types and the END_STREAM flag that frameGuard looks at.
const (
	frameData      = 0x0
	frameHeaders   = 0x1
	frameRSTStream = 0x3
	flagEndStream  = 0x1
)

func (g *frameGuard) frame(typ, flags byte, stream uint32, length int) error {
	switch {
	case typ == frameRSTStream, typ == frameHeaders && flags&flagEndStream != 0,
		typ == frameData && flags&flagEndStream != 0:
		delete(g.pending, stream)
		return nil
	case typ != frameData || length == 0 || length >= smallFrame:
		return nil
	}
	if g.pending == nil {
		g.pending = make(map[uint32]smallFrames)
	}
	f, ok := g.pending[stream]
	if !ok {
		f.since = time.Now()
	}
	f.n++
	if f.n > maxSmallFrames {
		return errSmallFrames
	}
	g.pending[stream] = f
	if len(g.pending) > g.streams {
		old := time.Now().Add(-g.maxAge)
		for id, f := range g.pending {
			if f.since.Before(old) {
				delete(g.pending, id)
			}
		}
		if len(g.pending) > g.streams {
			return errSmallFrames
		}
	}
	return nil
}
