package dataplane

import (
	"net"
	"time"
)

// A sidecar that is a regular container gets SIGTERM at the same moment
// as the app, which may still call out while it stops (a native sidecar
// is stopped only after the app has exited). So the webhook gives such a
// sidecar -linger: after SIGTERM the proxy keeps every listener open while
// the app may still use it.

// lingerPoll is how often linger looks at the app and the connections.
const lingerPoll = 100 * time.Millisecond

// Why linger ended.
const (
	lingerAppGone = "app_gone" // the app's port refuses and no connection is open
	lingerIdle    = "idle"     // no app port, and no connection is open
	lingerTimeout = "timeout"
)

// linger waits until the app is done with the proxy, at most d: until the
// app's port (localApp) refuses connections, which it does once the app
// has exited or closed its listener, and no connection through the proxy
// is open any more, since an app that has closed its listener may still
// be finishing requests that call its upstreams. An app without a port
// (localApp "") is done once no connection is open. It says why it ended.
func linger(d time.Duration, localApp string, open func() int) string {
	deadline := time.Now().Add(d)
	for {
		if open() == 0 {
			if localApp == "" {
				return lingerIdle
			}
			if !answers(localApp) {
				return lingerAppGone
			}
		}
		left := time.Until(deadline)
		if left <= 0 {
			return lingerTimeout
		}
		time.Sleep(min(lingerPoll, left))
	}
}

// answers says whether something accepts connections on addr.
func answers(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, lingerPoll)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// openCount is how many connections the proxy has open.
func (p *Proxy) openCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.open)
}
