package plugin

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/tap"
)

// PeerLimits bound what the peers of the socket can make the plugin hold in memory. Any
// process that may open the socket is a peer; without them, one connection opening HTTP/2
// streams that never send their request holds ~16 KiB per stream, forever (gRPC's keepalive
// does not help: such a peer answers pings). The zero value takes DefaultPeerLimits.
type PeerLimits struct {
	// MaxConnections is the number of open connections. At the cap a new connection evicts
	// one: first a connection that has not yet sent HTTP/2's preface (the oldest), else the
	// one that has read nothing for longest. So silent connections can never lock a real
	// client (kube-apiserver) out.
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

// DefaultPeerLimits hold the plugin's memory to about 64 MiB of streams in the worst case
// (128 connections of 32 streams of ~16 KiB), under the static pod's 256 MiB limit.
var DefaultPeerLimits = PeerLimits{MaxConnections: 128, MaxStreams: 32, RequestTimeout: 30 * time.Second, HandshakeTimeout: 5 * time.Second}

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

// serverOptions are the gRPC options that enforce p, but MaxConnections (connLimiter).
func (p PeerLimits) serverOptions() []grpc.ServerOption {
	timeout := p.RequestTimeout
	return []grpc.ServerOption{
		grpc.MaxConcurrentStreams(p.MaxStreams),
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
	max   int
	mu    sync.Mutex
	conns map[*trackedConn]struct{}
}

func newConnLimiter(lis net.Listener, max int) *connLimiter {
	return &connLimiter{Listener: lis, max: max, conns: make(map[*trackedConn]struct{})}
}

func (l *connLimiter) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, limiter: l, accepted: time.Now()}
	tc.lastRead.Store(tc.accepted.UnixNano())
	l.mu.Lock()
	var victim *trackedConn
	if len(l.conns) >= l.max {
		victim = l.victimLocked()
		delete(l.conns, victim)
	}
	l.conns[tc] = struct{}{}
	l.mu.Unlock()
	if victim != nil {
		victim.Conn.Close() // its reader sees the error and gRPC drops the transport
	}
	return tc, nil
}

// victimLocked is the connection to evict: the oldest one without a preface, else the one
// that has read nothing for longest.
func (l *connLimiter) victimLocked() *trackedConn {
	var silent, idle *trackedConn
	for c := range l.conns {
		if !c.prefaced.Load() {
			if silent == nil || c.accepted.Before(silent.accepted) {
				silent = c
			}
		} else if idle == nil || c.lastRead.Load() < idle.lastRead.Load() {
			idle = c
		}
	}
	if silent != nil {
		return silent
	}
	return idle
}

// trackedConn records what the limiter needs to choose whom to evict.
type trackedConn struct {
	net.Conn
	limiter  *connLimiter
	accepted time.Time
	lastRead atomic.Int64 // unix nanoseconds
	read     atomic.Int64 // bytes, until the preface is complete
	prefaced atomic.Bool
	closed   sync.Once
}

func (c *trackedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.lastRead.Store(time.Now().UnixNano())
		if !c.prefaced.Load() && c.read.Add(int64(n)) >= int64(len(http2Preface)) {
			c.prefaced.Store(true)
		}
	}
	return n, err
}

func (c *trackedConn) Close() error {
	c.closed.Do(func() {
		c.limiter.mu.Lock()
		delete(c.limiter.conns, c)
		c.limiter.mu.Unlock()
	})
	return c.Conn.Close()
}
