// Package nodeagenttest stands in for the node agent's end of meshlet-cni's
// socket (cni/nodeagent) in tests: a unix socket whose connections the
// test answers as it likes, and the socket files a node agent leaves
// behind. The protocol's tests, the plugin's and the node agent's pod
// cache's share it. It imports only the standard library, so that the
// protocol's own tests can use it.
package nodeagenttest

import (
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// Dir is a fresh directory, removed when the test ends, short enough for
// a socket path in it: one is at most 108 bytes, and t.TempDir's, named
// after the test, may be longer.
func Dir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nodeagent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// socketIn is socket, or a path in a fresh Dir if socket is "".
func socketIn(t testing.TB, socket string) string {
	if socket == "" {
		socket = filepath.Join(Dir(t), "s.sock")
	}
	return socket
}

// Serve listens on socket (a path in a fresh Dir if "") and hands each
// connection to serve, with done, which closes when the test ends; it
// returns the socket. A connection stays open until then whatever serve
// does, so a silent fake stays silent instead of closing. At the end
// Serve closes the listener and every connection and waits for its
// goroutines: a client still blocked on a connection is let go, and
// nothing of the fake outlives the test.
func Serve(t testing.TB, socket string, serve func(c net.Conn, done <-chan struct{})) string {
	t.Helper()
	socket = socketIn(t, socket)
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	var (
		done   = make(chan struct{})
		wg     sync.WaitGroup
		mu     sync.Mutex
		conns  []net.Conn
		closed bool
	)
	t.Cleanup(func() {
		close(done)
		ln.Close()
		mu.Lock()
		closed = true
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if closed {
				mu.Unlock()
				c.Close()
				return
			}
			conns = append(conns, c)
			wg.Add(1)
			mu.Unlock()
			go func() {
				defer wg.Done()
				defer c.Close()
				serve(c, done)
				<-done
			}()
		}
	}()
	return socket
}

// Stale leaves at socket (a path in a fresh Dir if "") the socket file of
// a listener that has closed, as a node agent that died leaves it; it
// returns the socket. Connecting to it is refused.
func Stale(t testing.TB, socket string) string {
	t.Helper()
	socket = socketIn(t, socket)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	return socket
}
