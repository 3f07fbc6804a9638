package plugin

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/tap"
)

// PeerLimits bound what the peers of the socket can make the plugin hold in memory. Any
// process that may open the socket is a peer; without them, one connection opening HTTP/2
// streams that never send their request holds ~16 KiB per stream, forever (gRPC's keepalive
// does not help: such a peer answers pings). The zero value takes DefaultPeerLimits.
type PeerLimits struct {
	// MaxConnections is the number of open connections. At the cap a new connection evicts
	// one that has no request in flight, chosen by connLimiter.victimLocked: silent ones
	// first, then ones that never completed a request, then the least recently served. So
	// neither silent nor busy-looking connections can lock a real client (kube-apiserver)
	// out, or cut it off in the middle of a request.
	MaxConnections int
	// MaxStreams is the number of concurrent requests on one connection; a client queues the
	// ones beyond it (gRPC's clients do) or has them refused.
	MaxStreams uint32
	// RequestTimeout ends a request that has not finished within it, including one whose
	// message never arrives. Every legitimate request ends well within it: backend calls are
	// bounded by --timeout.
	RequestTimeout time.Duration
	// HandshakeTimeout closes a connection that has not sent HTTP/2's preface within it.
	HandshakeTimeout time.Duration
}

// DefaultPeerLimits with MaxRequestSize hold what peers' unfinished requests can make the
// plugin keep to 96 MiB (64 connections of 32 streams of 48 KiB; HeldBytes), half of the
// static pod's GOMEMLIMIT and well under its 256 MiB limit.
var DefaultPeerLimits = PeerLimits{MaxConnections: 64, MaxStreams: 32, RequestTimeout: 30 * time.Second, HandshakeTimeout: 5 * time.Second}

func (p PeerLimits) withDefaults() PeerLimits {
	d := DefaultPeerLimits
	if p.MaxConnections > 0 {
		d.MaxConnections = p.MaxConnections
	}
	if p.MaxStreams > 0 {
		d.MaxStreams = p.MaxStreams
	}
	if p.RequestTimeout > 0 {
		d.RequestTimeout = p.RequestTimeout
	}
	if p.HandshakeTimeout > 0 {
		d.HandshakeTimeout = p.HandshakeTimeout
	}
	return d
}

// StreamWindow is HTTP/2's flow-control window, for each stream and for each connection, that
// the plugin grants its peers: the smallest gRPC accepts, and fixed. Left unset, gRPC's
// bandwidth estimator grows both to 16 MiB on a peer's say-so (it times its own pings), and a
// stream could then buffer that much before its handler reads it; requests are a few hundred
// bytes.
const StreamWindow = 64 << 10

// streamCost is what an open stream costs the server before any of its message arrives (its
// goroutine, state and timer): 13.6 KiB measured with 2,048 header-only streams
// (docs/operations.md, Hostile socket peers), rounded up.
const streamCost = 16 << 10

// HeldBytes is the most the peers' unfinished requests can make the server hold: every stream
// of every connection at its worst, which is one complete message of maxRequest bytes, decoded,
// and a second one, a few bytes short (a unary handler waits for the end of the stream before
// it runs). A stream reads what arrives as it arrives, up to the announced length, and a
// length above maxRequest is refused before any of its bytes are read.
func (p PeerLimits) HeldBytes(maxRequest int) int64 {
	return int64(p.MaxConnections) * int64(p.MaxStreams) * (streamCost + 2*int64(maxRequest))
}

// serverOptions are the gRPC options that enforce p, but MaxConnections (connLimiter).
func (p PeerLimits) serverOptions() []grpc.ServerOption {
	timeout := p.RequestTimeout
	return []grpc.ServerOption{
		grpc.MaxConcurrentStreams(p.MaxStreams),
		grpc.StaticStreamWindowSize(StreamWindow),
		grpc.StaticConnWindowSize(StreamWindow),
		grpc.ChainUnaryInterceptor(trackRequests),
		// A DATA frame of over 1 KiB gets a buffer of exactly its size: gRPC's pool rounds it up to
		// the next of 4, 16 and 32 KiB, so a message sent in frames of 1,025 bytes held four times
		// its size (docs/operations.md). Requests are a few hundred bytes, in frames below 1 KiB
		// that gRPC never pools, so the pool saved nothing.
		experimental.BufferPool(mem.NopBufferPool{}),
		grpc.ConnectionTimeout(p.HandshakeTimeout),
		// The stream's context, which a request waiting for its message also waits on.
		grpc.InTapHandle(func(ctx context.Context, _ *tap.Info) (context.Context, error) {
			// A client's own deadline within ours (kube-apiserver sends its 3 s timeout) bounds the
			// stream already: no second context and timer per request.
			if d, ok := ctx.Deadline(); ok && time.Until(d) <= timeout {
				return ctx, nil
			}
			// gRPC cancels the stream's context, the parent of this one, when the stream ends or its
			// connection closes, which releases this one and stops its timer: cancel is not needed
			// (holding it in a context.AfterFunc cost 5 allocations and a goroutine per request).
			ctx, cancel := context.WithTimeout(ctx, timeout)
			_ = cancel
			return ctx, nil
		}),
	}
}

// http2Preface is what a client sends first on every HTTP/2 connection.
const http2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// connLimiter is a listener that holds at most max connections, evicting one for a new one.
type connLimiter struct {
	net.Listener
	peers PeerLimits
	max   int
	mu    sync.Mutex
	conns map[*trackedConn]struct{}
}

func newConnLimiter(lis net.Listener, peers PeerLimits) *connLimiter {
	return &connLimiter{Listener: lis, peers: peers, max: peers.MaxConnections, conns: make(map[*trackedConn]struct{})}
}

func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		tc := &trackedConn{Conn: c, limiter: l, accepted: time.Now(), guard: newFrameGuard(l.peers)}
		l.mu.Lock()
		var victim *trackedConn
		full := len(l.conns) >= l.max
		if full {
			victim = l.victimLocked()
			if victim != nil {
				delete(l.conns, victim)
			}
		}
		if !full || victim != nil {
			l.conns[tc] = struct{}{}
		}
		l.mu.Unlock()
		if victim != nil {
			victim.Conn.Close() // its reader sees the error and gRPC drops the transport
		}
		if full && victim == nil {
			c.Close() // every connection has a request in flight: the newcomer waits for the next try
			continue
		}
		return tc, nil
	}
}

// victimLocked is the connection to evict for a new one, nil when every connection has a
// request in flight (then the newcomer is refused: in-flight requests end within their
// deadline). Never one with a request in flight; of the others:
//  1. the oldest that has not sent HTTP/2's preface;
//  2. else the oldest that has never completed a request;
//  3. else the one whose last completed request is the oldest.
//
// Traffic that is not a served request (pings, window updates, requests that never arrive)
// earns a connection nothing, so a peer that only looks busy goes before any client that was
// served. A newcomer goes only after every connection older than it that has never completed
// a request, which leaves it time to send its first.
func (l *connLimiter) victimLocked() *trackedConn {
	var best *trackedConn
	var bestRank int
	var bestAt int64
	for c := range l.conns {
		if c.inFlight.Load() > 0 {
			continue
		}
		rank, at := 3, c.lastDone.Load() // the rank's order, then the oldest first
		switch {
		case !c.prefaced.Load():
			rank, at = 1, c.accepted.UnixNano()
		case at == 0:
			rank, at = 2, c.accepted.UnixNano()
		}
		if best == nil || rank < bestRank || rank == bestRank && at < bestAt {
			best, bestRank, bestAt = c, rank, at
		}
	}
	return best
}

// trackRequests marks a request's connection busy while its handler runs, and records when
// the connection last completed a request: what victimLocked protects.
func trackRequests(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return handler(ctx, req)
	}
	a, ok := p.Addr.(connAddr)
	if !ok {
		return handler(ctx, req)
	}
	a.conn.inFlight.Add(1)
	resp, err := handler(ctx, req)
	a.conn.lastDone.Store(time.Now().UnixNano())
	a.conn.inFlight.Add(-1)
	return resp, err
}

// connAddr is a tracked connection's remote address, through which gRPC's peer information
// leads a request back to its connection.
type connAddr struct {
	net.Addr
	conn *trackedConn
}

func (a connAddr) Network() string { return "unix" }

func (a connAddr) String() string {
	if a.Addr == nil {
		return ""
	}
	return a.Addr.String()
}

// trackedConn records what the limiter needs to choose whom to evict.
type trackedConn struct {
	net.Conn
	limiter  *connLimiter
	accepted time.Time
	read     atomic.Int64 // bytes, until the preface is complete
	prefaced atomic.Bool
	inFlight atomic.Int32 // requests whose handler runs
	lastDone atomic.Int64 // unix nanoseconds of the last completed request; 0: none yet
	guard    frameGuard   // only Read, on gRPC's one reader of the connection, uses it
	closed   sync.Once
}

func (c *trackedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && !c.prefaced.Load() && c.read.Add(int64(n)) >= int64(len(http2Preface)) {
		c.prefaced.Store(true)
	}
	if n > 0 {
		if gerr := c.guard.read(b[:n]); gerr != nil {
			c.Conn.Close()
			return 0, gerr
		}
	}
	return n, err
}

// RemoteAddr carries the connection to trackRequests.
func (c *trackedConn) RemoteAddr() net.Addr { return connAddr{Addr: c.Conn.RemoteAddr(), conn: c} }

func (c *trackedConn) Close() error {
	c.closed.Do(func() {
		c.limiter.mu.Lock()
		delete(c.limiter.conns, c)
		c.limiter.mu.Unlock()
	})
	return c.Conn.Close()
}
