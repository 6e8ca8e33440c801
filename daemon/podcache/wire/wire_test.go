package wire

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRead: a line up to the limit, newline or EOF ending it; one byte
// more is refused before it is decoded.
func TestRead(t *testing.T) {
	const limit = 40
	pad := func(n int) string { // a request line of exactly n bytes
		s := `{"v":1,"name":"`
		return s + strings.Repeat("x", n-len(s)-2) + `"}`
	}
	tests := []struct {
		name, in string
		wantErr  string
	}{
		{"at the limit", pad(limit) + "\n", ""},
		{"at the limit, EOF", pad(limit), ""},
		{"one byte over", pad(limit+1) + "\n", "line too long"},
		{"far over, no newline", strings.Repeat("x", 10*limit), "line too long"},
		{"empty", "", "EOF"},
		{"not JSON", "hello\n", "decode"},
		{"only the first line", pad(limit) + "\n" + "garbage", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r Request
			err := Read(strings.NewReader(tc.in), limit, &r)
			if tc.wantErr == "" {
				if err != nil || r.Version != 1 {
					t.Errorf("%+v, %v", r, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %v, want %q", err, tc.wantErr)
			}
			if tc.wantErr == "line too long" && !errors.Is(err, ErrTooLong) {
				t.Errorf("%v is not ErrTooLong", err)
			}
		})
	}
}

// peer serves one behaviour on a unix socket in a fresh directory: each
// connection gets the request line read, then serve(conn).
func peer(t *testing.T, serve func(c net.Conn)) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "wire")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "s.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { close(done); ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var req Request
				if err := Read(c, MaxRequest, &req); err != nil || req != (Request{Version: Version, Namespace: "ns", Name: "web", UID: "u"}) {
					t.Errorf("request %+v, %v", req, err)
				}
				serve(c)
				<-done // hold the connection open until the test ends
			}()
		}
	}()
	return socket
}

// TestAsk: the client's side of every way an exchange can go; whatever
// the peer does, Ask returns by its deadline.
func TestAsk(t *testing.T) {
	const timeout = 300 * time.Millisecond
	line := func(s string) func(net.Conn) { return func(c net.Conn) { _, _ = c.Write([]byte(s)) } }
	tests := []struct {
		name    string
		serve   func(net.Conn) // nil: no one listens
		want    Response
		wantErr string
	}{
		{"answer", line(`{"v":1,"found":true,"annotations":{"a":"b"}}` + "\n"), Response{Version: 1, Found: true, Annotations: map[string]string{"a": "b"}}, ""},
		{"answer in pieces", func(c net.Conn) {
			for _, p := range []string{`{"v":1,"fo`, `und":false,"reason":"r"}`, "\n"} {
				_, _ = c.Write([]byte(p))
				time.Sleep(20 * time.Millisecond)
			}
		}, Response{Version: 1, Reason: "r"}, ""},
		{"answer, then the peer closes", func(c net.Conn) {
			_, _ = c.Write([]byte(`{"v":1,"found":false}`))
			c.(*net.UnixConn).CloseWrite()
		}, Response{Version: 1}, ""},
		{"no answer", func(net.Conn) {}, Response{}, "read answer: i/o timeout"},
		{"an answer that never ends", func(c net.Conn) {
			for i := 0; i < 100; i++ {
				if _, err := c.Write([]byte(" ")); err != nil {
					return
				}
				time.Sleep(10 * time.Millisecond)
			}
		}, Response{}, "read answer: i/o timeout"},
		{"oversized answer", line(`{"v":1,"reason":"` + strings.Repeat("x", MaxResponse) + `"}` + "\n"), Response{}, "read answer: line too long"},
		{"another version", line(`{"v":2,"found":true}` + "\n"), Response{}, "answer of protocol version 2, want 1"},
		{"not JSON", line("nope\n"), Response{}, "read answer: decode"},
		{"no one listening", nil, Response{}, "connect: no such file or directory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			socket := "/nonexistent/s.sock"
			if tc.serve != nil {
				socket = peer(t, tc.serve)
			}
			start := time.Now()
			resp, err := Ask(socket, Request{Version: 7, Namespace: "ns", Name: "web", UID: "u"}, timeout)
			if took := time.Since(start); took > timeout+200*time.Millisecond {
				t.Errorf("took %v, timeout %v", took, timeout)
			}
			if tc.wantErr == "" {
				if err != nil || fmt.Sprint(resp) != fmt.Sprint(tc.want) {
					t.Errorf("%+v, %v; want %+v", resp, err, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %v, want %q", err, tc.wantErr)
			}
			if strings.Contains(tc.wantErr, "timeout") && !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("%v is not os.ErrDeadlineExceeded", err)
			}
		})
	}
}
