package plugin

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// At the cap, a connection with a request in flight is never evicted, even as the only one
// there is: the newcomer is closed instead. Once the request has ended, the next newcomer
// evicts it.
func TestLimiterNeverEvictsARequestInFlight(t *testing.T) {
	dir, err := os.MkdirTemp("", "kp")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "s.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	l := newConnLimiter(lis, PeerLimits{MaxConnections: 1}.withDefaults())
	accepted := make(chan *trackedConn, 2)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c.(*trackedConn)
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	closed := func(c net.Conn) bool { // by the server, within 5 s
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Read(make([]byte, 1))
		return err == io.EOF
	}

	busy := dial()
	if _, err := busy.Write([]byte(http2Preface)); err != nil {
		t.Fatal(err)
	}
	served := <-accepted
	if _, err := io.ReadFull(served, make([]byte, len(http2Preface))); err != nil {
		t.Fatal(err)
	}
	served.inFlight.Add(1)
	if !closed(dial()) {
		t.Fatal("a newcomer was not closed while the only connection had a request in flight")
	}
	if _, err := busy.Write([]byte("x")); err != nil {
		t.Fatalf("the connection with a request in flight was closed: %v", err)
	}
	if _, err := io.ReadFull(served, make([]byte, 1)); err != nil {
		t.Fatalf("the connection with a request in flight was closed: %v", err)
	}

	served.lastDone.Store(time.Now().UnixNano())
	served.inFlight.Add(-1)
	dial()
	<-accepted
	if !closed(busy) {
		t.Fatal("with its request ended, the connection was not evicted for a newcomer")
	}
}

// The frame guard reads frame headers however the bytes are cut into reads: a stream may send
// maxSmallFrames small DATA frames before its end, not one more; its end, or a reset, starts
// the count anew.
func TestFrameGuardCountsSmallFramesPerStream(t *testing.T) {
	frame := func(typ, flags byte, stream uint32, payload int) []byte {
		f := []byte{byte(payload >> 16), byte(payload >> 8), byte(payload), typ, flags, byte(stream >> 24), byte(stream >> 16), byte(stream >> 8), byte(stream)}
		return append(f, make([]byte, payload)...)
	}
	small := func(stream uint32, n int) []byte {
		var b []byte
		for range n {
			b = append(b, frame(frameData, 0, stream, 7)...)
		}
		return b
	}
	for _, c := range []struct {
		name string
		in   []byte
		fail bool
	}{
		{"at the limit", small(1, maxSmallFrames), false},
		{"one more", small(1, maxSmallFrames+1), true},
		{"large frames are not counted", append(small(1, maxSmallFrames), frame(frameData, 0, 1, smallFrame)...), false},
		{"ended, then a new count", append(append(small(1, maxSmallFrames), frame(frameData, flagEndStream, 1, 0)...), small(1, maxSmallFrames)...), false},
		{"reset, then a new count", append(append(small(1, maxSmallFrames), frame(frameRSTStream, 0, 1, 4)...), small(1, maxSmallFrames)...), false},
		{"streams counted apart", append(small(1, maxSmallFrames), small(3, maxSmallFrames)...), false},
		{"more streams than twice MaxStreams", func() []byte {
			var b []byte
			for s := range uint32(2*DefaultPeerLimits.MaxStreams + 1) {
				b = append(b, small(2*s+1, 1)...)
			}
			return b
		}(), true},
	} {
		in := append([]byte(http2Preface), c.in...)
		for _, step := range []int{1, 5, len(in)} {
			g := newFrameGuard(DefaultPeerLimits)
			var err error
			for rest := in; len(rest) > 0 && err == nil; rest = rest[min(step, len(rest)):] {
				err = g.read(rest[:min(step, len(rest))])
			}
			if (err != nil) != c.fail {
				t.Errorf("%s, read %d bytes at a time: %v", c.name, step, err)
			}
		}
	}
}
