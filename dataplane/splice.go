package dataplane

import (
	"io"
	"net"
	"sync"
)

// halfCloser is a connection whose write side closes alone: TCP and TLS.
type halfCloser interface{ CloseWrite() error }

// splice copies both ways until both sides are done, passing each side's
// end of stream on as a half-close so that request-then-response protocols
// finish; it returns the bytes copied a→b and b→a.
func splice(a, b net.Conn) (ab, ba int64) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ba = pipe(a, b)
	}()
	ab = pipe(b, a)
	wg.Wait()
	a.Close()
	b.Close()
	return ab, ba
}

// pipe copies src to dst, then closes dst's write side (or dst, when it
// cannot half-close).
func pipe(dst, src net.Conn) int64 {
	n, err := io.Copy(dst, src)
	if hc, ok := dst.(halfCloser); ok && err == nil {
		_ = hc.CloseWrite()
	} else {
		// An error on one way ends both: the peer would wait forever.
		dst.Close()
		src.Close()
	}
	return n
}

// reset closes c with a TCP reset rather than a clean end, so that the
// caller sees the failure (no healthy upstream) at once.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}
