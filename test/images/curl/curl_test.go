package main

import (
	"bufio"
	"bytes"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// serve accepts connections on loopback and hands each to handle.
func serve(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return ln.Addr().String()
}

func readRequest(c net.Conn) {
	_, _ = http.ReadRequest(bufio.NewReader(c))
}

func respond(status int, body string) func(net.Conn) {
	return func(c net.Conn) {
		defer c.Close()
		readRequest(c)
		resp := http.Response{StatusCode: status, ProtoMajor: 1, ProtoMinor: 1, ContentLength: int64(len(body)),
			Body: http.NoBody, Header: http.Header{}}
		if body != "" {
			resp.Body = ioNopCloser{strings.NewReader(body)}
		}
		_ = resp.Write(c)
	}
}

type ioNopCloser struct{ *strings.Reader }

func (ioNopCloser) Close() error { return nil }

func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestExitCodes(t *testing.T) {
	ok := serve(t, respond(200, "hello world\n"))
	notFound := serve(t, respond(404, "nope"))
	empty := serve(t, func(c net.Conn) { readRequest(c); c.Close() })
	reset := serve(t, func(c net.Conn) {
		readRequest(c)
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	})
	hang := serve(t, func(c net.Conn) { readRequest(c); time.Sleep(3 * time.Second); c.Close() })
	tests := []struct {
		name     string
		args     []string
		code     int
		stdout   string
		stderrIn string
	}{
		{"ok", []string{"-s", "http://" + ok + "/"}, 0, "hello world\n", ""},
		{"no scheme", []string{"-s", ok}, 0, "hello world\n", ""},
		{"write-out", []string{"-s", "-o", "/dev/null", "-w", "%{http_code}", "http://" + ok}, 0, "200", ""},
		{"404 without -f", []string{"-s", "http://" + notFound}, 0, "nope", ""},
		{"404 with -f", []string{"-sSf", "http://" + notFound}, 22, "", "(22) The requested URL returned error: 404"},
		{"refused", []string{"-sS", "http://" + closedPort(t)}, 7, "", "(7) Failed to connect"},
		{"empty reply", []string{"-sS", "http://" + empty}, 52, "", "(52) Empty reply from server"},
		{"reset", []string{"-sS", "http://" + reset}, 56, "", "(56) Recv failure: Connection reset by peer"},
		{"timeout", []string{"-sS", "-m", "0.3", "http://" + hang}, 28, "", "(28) Operation timed out"},
		{"silent hides errors", []string{"-s", "http://" + empty}, 52, "", ""},
		{"unknown option", []string{"--frobnicate", "http://" + ok}, 2, "", "option --frobnicate: is unknown"},
		{"bad max-time", []string{"-m", "soon", "http://" + ok}, 2, "", `expected a number of seconds, got "soon"`},
		{"https unsupported", []string{"https://" + ok}, 1, "", "(1) Protocol"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := run(tc.args, &out, &errOut)
			if code != tc.code {
				t.Fatalf("exit %d, want %d (stderr %q)", code, tc.code, errOut.String())
			}
			if out.String() != tc.stdout {
				t.Errorf("stdout %q, want %q", out.String(), tc.stdout)
			}
			if tc.stderrIn == "" && errOut.Len() > 0 {
				t.Errorf("stderr %q, want none", errOut.String())
			}
			if !strings.Contains(errOut.String(), tc.stderrIn) {
				t.Errorf("stderr %q, want it to contain %q", errOut.String(), tc.stderrIn)
			}
		})
	}
}
