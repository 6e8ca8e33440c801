package nodeagent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshlet/meshlet/cni/nodeagent/nodeagenttest"
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

const (
	// deadline is the timeout of the asks that must give up on the peer.
	deadline = 300 * time.Millisecond
	// roomy is the timeout of the asks that must end on what the peer
	// sent, well before it: a loaded machine must not turn them into
	// timeouts.
	roomy = 10 * time.Second
	// late: how long after its deadline an Ask counts as blocked. Past
	// its deadline Ask only waits for the scheduler (a few ms idle, up
	// to a few hundred under heavy load); every peer here that Ask could
	// block on holds on until the test ends.
	late = time.Second
)

// sent is the request every ask here sends; Ask sets the version.
var sent = Request{Version: 7, Kind: KindLookup, Namespace: "ns", Name: "web", UID: "u"}

// asked is what an Ask returned, and how long it took.
type asked struct {
	resp Response
	err  error
	took time.Duration
}

// ask runs Ask with timeout on a goroutine locked to its thread (whose
// ID goes to tids, if not nil). An Ask still blocked late after its
// deadline fails the test at once, with every goroutine's stack, rather
// than hang it until go test's timeout; the peer's cleanup then lets
// that Ask go.
func ask(t *testing.T, socket string, req Request, timeout time.Duration, tids chan<- int) asked {
	t.Helper()
	done := make(chan asked, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if tids != nil {
			tids <- syscall.Gettid()
		}
		start := time.Now()
		resp, err := Ask(socket, req, timeout)
		done <- asked{resp, err, time.Since(start)}
	}()
	select {
	case r := <-done:
		return r
	case <-time.After(timeout + late):
		buf := make([]byte, 1<<20)
		t.Fatalf("Ask still blocked %v after its %v deadline:\n%s", late, timeout, buf[:runtime.Stack(buf, true)])
		return asked{}
	}
}

// request reads the request line, which must be the one ask sends.
func request(t *testing.T, c net.Conn, done <-chan struct{}) {
	var req Request
	err := Read(c, MaxRequest, &req)
	select {
	case <-done: // closed by the peer's cleanup
		return
	default:
	}
	if want := (Request{Version: Version, Kind: sent.Kind, Namespace: sent.Namespace, Name: sent.Name, UID: sent.UID}); err != nil || !reflect.DeepEqual(req, want) {
		t.Errorf("peer: request %+v, %v; want %+v", req, err, want)
	}
}

// answer is a peer (nodeagenttest.Serve) that reads the request, then
// does serve.
func answer(serve func(c net.Conn, done <-chan struct{})) func(*testing.T) string {
	return func(t *testing.T) string {
		return nodeagenttest.Serve(t, "", func(c net.Conn, done <-chan struct{}) {
			request(t, c, done)
			serve(c, done)
		})
	}
}

// line is a peer that answers s.
func line(s string) func(*testing.T) string {
	return answer(func(c net.Conn, _ <-chan struct{}) { _, _ = c.Write([]byte(s)) })
}

// fullBacklog is a listener with a backlog of 0 that never accepts, its
// queue full already (the kernel queues one connection more than the
// backlog). connect(2) to it waits for room, as it would on a node agent
// that has stopped accepting under load.
func fullBacklog(t *testing.T) string {
	t.Helper()
	socket := filepath.Join(nodeagenttest.Dir(t), "s.sock")
	addr := &syscall.SockaddrUnix{Name: socket}
	ln, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	fds := []int{ln}
	// Closing the listener wakes an Ask still waiting in connect.
	t.Cleanup(func() {
		for _, fd := range fds {
			syscall.Close(fd)
		}
	})
	if err := syscall.Bind(ln, addr); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(ln, 0); err != nil {
		t.Fatal(err)
	}
	for {
		fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		fds = append(fds, fd)
		err = syscall.Connect(fd, addr)
		if err == syscall.EAGAIN {
			return socket
		}
		if err != nil || len(fds) > 100 {
			t.Fatalf("filling the backlog: %d connections, %v", len(fds)-1, err)
		}
	}
}

// boundOnly is a socket file whose socket is bound but not listening.
func boundOnly(t *testing.T) string {
	t.Helper()
	socket := filepath.Join(nodeagenttest.Dir(t), "s.sock")
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: socket}); err != nil {
		t.Fatal(err)
	}
	return socket
}

// stale is the socket file of a listener that has closed (a node agent
// that died without removing it).
func stale(t *testing.T) string { return nodeagenttest.Stale(t, "") }

func regularFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(nodeagenttest.Dir(t), "s.sock")
	if err := os.WriteFile(path, []byte("not a socket\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// sendBuffer is the size of a new socket's send buffer.
func sendBuffer(t *testing.T) int {
	b, err := os.ReadFile("/proc/sys/net/core/wmem_default")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestAsk: the client's side of every way an exchange can go. Whatever
// the peer does, Ask returns by its deadline.
func TestAsk(t *testing.T) {
	big := sent
	big.Name = strings.Repeat("x", 4*sendBuffer(t)) // a write of it blocks until the peer reads
	tests := []struct {
		name    string
		listen  func(*testing.T) string
		req     Request // sent if zero
		timeout time.Duration
		want    Response
		wantErr string // a regexp; "" for none
	}{
		{"answer", line(`{"v":1,"found":true,"annotations":{"a":"b"}}` + "\n"), Request{}, roomy,
			Response{Version: 1, Found: true, Annotations: map[string]string{"a": "b"}}, ""},
		{"answer in pieces", answer(func(c net.Conn, _ <-chan struct{}) {
			for _, p := range []string{`{"v":1,"fo`, `und":false,"reason":"r"}`, "\n"} {
				_, _ = c.Write([]byte(p))
				time.Sleep(20 * time.Millisecond)
			}
		}), Request{}, roomy, Response{Version: 1, Reason: "r"}, ""},
		{"answer, then the peer closes", answer(func(c net.Conn, _ <-chan struct{}) {
			_, _ = c.Write([]byte(`{"v":1,"found":false}`))
			c.(*net.UnixConn).CloseWrite()
		}), Request{}, roomy, Response{Version: 1}, ""},
		{"oversized answer", line(`{"v":1,"reason":"` + strings.Repeat("x", MaxResponse) + `"}` + "\n"), Request{}, roomy,
			Response{}, "^read answer: line too long"},
		{"another version", line(`{"v":2,"found":true}` + "\n"), Request{}, roomy,
			Response{}, "^answer of protocol version 2, want 1$"},
		{"not JSON", line("nope\n"), Request{}, roomy, Response{}, "^read answer: decode"},
		{"half a line, then the peer closes", answer(func(c net.Conn, _ <-chan struct{}) {
			_, _ = c.Write([]byte(`{"v":1,"fo`))
			c.Close()
		}), Request{}, roomy, Response{}, "^read answer: decode: unexpected end of JSON input"},
		{"the peer closes without answering", answer(func(c net.Conn, _ <-chan struct{}) { c.Close() }),
			Request{}, roomy, Response{}, "^read answer: EOF$"},
		{"the peer closes before reading", func(t *testing.T) string {
			return nodeagenttest.Serve(t, "", func(c net.Conn, _ <-chan struct{}) { c.Close() })
		}, Request{}, roomy, Response{}, "^(send request: write: broken pipe|read answer: (read: connection reset by peer|EOF))$"},
		{"no such socket", func(*testing.T) string { return "/nonexistent/s.sock" }, Request{}, roomy,
			Response{}, "connect: no such file or directory$"},
		{"socket bound, not listening", boundOnly, Request{}, roomy, Response{}, "connect: connection refused$"},
		{"stale socket file", stale, Request{}, roomy, Response{}, "connect: connection refused$"},
		{"not a socket", regularFile, Request{}, roomy, Response{}, "connect: connection refused$"},

		// The peer holds on: Ask must give up by its deadline.
		{"no answer", answer(func(net.Conn, <-chan struct{}) {}), Request{}, deadline,
			Response{}, "^read answer: i/o timeout$"},
		{"half a line, then silence", answer(func(c net.Conn, _ <-chan struct{}) { _, _ = c.Write([]byte(`{"v":1,"fo`)) }),
			Request{}, deadline, Response{}, "^read answer: i/o timeout$"},
		{"an answer that never ends", answer(func(c net.Conn, done <-chan struct{}) {
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for {
				if _, err := c.Write([]byte(" ")); err != nil {
					return
				}
				select {
				case <-done:
					return
				case <-tick.C:
				}
			}
		}), Request{}, deadline, Response{}, "^read answer: i/o timeout$"},
		{"the peer never accepts", func(t *testing.T) string {
			socket := filepath.Join(nodeagenttest.Dir(t), "s.sock")
			ln, err := net.Listen("unix", socket)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			return socket
		}, Request{}, deadline, Response{}, "^read answer: i/o timeout$"},
		{"the peer never reads", func(t *testing.T) string {
			return nodeagenttest.Serve(t, "", func(net.Conn, <-chan struct{}) {})
		}, big, deadline, Response{}, "^send request: i/o timeout$"},
		{"listen backlog full", fullBacklog, Request{}, deadline, Response{}, "^connect to .*: i/o timeout$"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := tc.req
			if reflect.DeepEqual(req, Request{}) {
				req = sent
			}
			r := ask(t, tc.listen(t), req, tc.timeout, nil)
			check(t, r, tc.want, tc.wantErr)
		})
	}
}

// check: r is want, or failed as wantErr (a regexp) says; a timeout is
// os.ErrDeadlineExceeded.
func check(t *testing.T, r asked, want Response, wantErr string) {
	t.Helper()
	if wantErr == "" {
		if r.err != nil || fmt.Sprint(r.resp) != fmt.Sprint(want) {
			t.Errorf("%+v, %v; want %+v", r.resp, r.err, want)
		}
		return
	}
	if r.err == nil || !regexp.MustCompile(wantErr).MatchString(r.err.Error()) {
		t.Errorf("error %v, want %q", r.err, wantErr)
	}
	if strings.Contains(wantErr, "timeout") && !errors.Is(r.err, os.ErrDeadlineExceeded) {
		t.Errorf("%v is not os.ErrDeadlineExceeded", r.err)
	}
}

// TestAskInterrupted: signals interrupt Ask's blocking calls every
// millisecond (EINTR: with a socket timeout set, SA_RESTART does not
// restart them). Each retry waits only for what is left before the one
// deadline: a retry that waited the whole timeout again would never end.
func TestAskInterrupted(t *testing.T) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGUSR1) // a handler, so the signal interrupts and is not fatal
	defer signal.Stop(sigs)
	var got atomic.Int64
	go func() {
		for range sigs {
			got.Add(1)
		}
	}()
	tests := []struct {
		name    string
		listen  func(*testing.T) string
		wantErr string
	}{
		{"in read", answer(func(net.Conn, <-chan struct{}) {}), "^read answer: i/o timeout$"},
		{"in connect", fullBacklog, "^connect to .*: i/o timeout$"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			socket := tc.listen(t)
			tids, stop := make(chan int, 1), make(chan struct{})
			defer close(stop)
			var signalled atomic.Int64
			go func() { // the storm, at Ask's thread
				tid := <-tids
				tick := time.NewTicker(time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-stop:
						return
					case <-tick.C:
					}
					if syscall.Tgkill(os.Getpid(), tid, syscall.SIGUSR1) == nil {
						signalled.Add(1)
					}
				}
			}()
			before := got.Load()
			r := ask(t, socket, sent, deadline, tids)
			if n := signalled.Load(); n < 5 {
				t.Errorf("only %d signals sent during the ask", n)
			}
			check(t, r, Response{}, tc.wantErr)
			t.Logf("%v, %d signals handled", r.took, got.Load()-before)
		})
	}
}
