package podcache

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/meshlet/meshlet/cni/nodeagent"
	"github.com/meshlet/meshlet/cni/nodeagent/nodeagenttest"
)

// informer stands in for the node agent's pod informer: an indexer the
// server reads through ListerLookup, as the node agent's does.
type informer struct{ cache.Indexer }

func newInformer(pods ...*corev1.Pod) informer {
	i := informer{cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})}
	for _, p := range pods {
		i.add(p)
	}
	return i
}

func (i informer) add(p *corev1.Pod) {
	if err := i.Indexer.Add(p); err != nil {
		panic(err)
	}
}

func (i informer) lookup() Lookup { return ListerLookup{Lister: corelisters.NewPodLister(i.Indexer)} }

func pod(namespace, name, uid string, ann map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, UID: types.UID(uid), Annotations: ann}}
}

// testServer serves lookup on a socket in a fresh directory until the
// test ends, and returns it with its metrics and the socket path.
func testServer(t testing.TB, lookup Lookup, wait time.Duration, configure ...func(*Server)) (*Server, *Metrics) {
	t.Helper()
	s := New(filepath.Join(nodeagenttest.Dir(t), "run", "cni.sock"), lookup)
	s.Wait = wait
	for _, f := range configure {
		f(s)
	}
	s.Metrics = NewMetrics(prometheus.NewRegistry())
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, s.Metrics
}

func ask(t *testing.T, socket string, req nodeagent.Request) nodeagent.Response {
	t.Helper()
	resp, err := nodeagent.Ask(socket, req, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func count(m *Metrics, result string) int {
	return int(testutil.ToFloat64(m.requests.WithLabelValues(result)))
}

var injected = map[string]string{"consul.hashicorp.com/connect-inject-status": "injected"}

func TestAnswers(t *testing.T) {
	gone := pod("ns", "leaving", "u-old", injected)
	gone.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	inf := newInformer(pod("ns", "web", "u-web", injected), pod("ns", "plain", "u-plain", nil), gone)
	s, m := testServer(t, inf.lookup(), 50*time.Millisecond)
	tests := []struct {
		name       string
		req        nodeagent.Request
		wantFound  bool
		wantAnn    map[string]string
		wantReason string
		wantResult string
	}{
		{"hit", nodeagent.Request{Kind: nodeagent.KindLookup, Namespace: "ns", Name: "web"}, true, injected, "", resultHit},
		{"hit with UID", nodeagent.Request{Kind: nodeagent.KindLookup, Namespace: "ns", Name: "web", UID: "u-web"}, true, injected, "", resultHit},
		{"hit, no annotations", nodeagent.Request{Kind: nodeagent.KindLookup, Namespace: "ns", Name: "plain"}, true, nil, "", resultHit},
		{"miss", nodeagent.Request{Kind: nodeagent.KindLookup, Namespace: "ns", Name: "nope"}, false, nil, "not in the node agent's pod cache", resultMiss},
		{"other namespace", nodeagent.Request{Kind: nodeagent.KindLookup, Namespace: "other", Name: "web"}, false, nil, "not in the node agent's pod cache", resultMiss},
		{"UID mismatch: an old pod of the name", nodeagent.Request{Kind: nodeagent.KindLookup, Namespace: "ns", Name: "web", UID: "u-new"}, false, nil, "another pod of that name (uid u-web, asked for u-new)", resultUIDMismatch},
		{"terminating, no UID", nodeagent.Request{Kind: nodeagent.KindLookup, Namespace: "ns", Name: "leaving"}, false, nil, "terminating", resultTerminating},
		{"terminating, its UID", nodeagent.Request{Kind: nodeagent.KindLookup, Namespace: "ns", Name: "leaving", UID: "u-old"}, true, injected, "", resultHit},
		{"no name", nodeagent.Request{Kind: nodeagent.KindLookup, Namespace: "ns"}, false, nil, "bad request: namespace and name are required", resultBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := count(m, tc.wantResult)
			resp := ask(t, s.Socket(), tc.req)
			if resp.Found != tc.wantFound || !equal(resp.Annotations, tc.wantAnn) || !strings.Contains(resp.Reason, tc.wantReason) || resp.Version != nodeagent.Version {
				t.Errorf("answer %+v, want found %v, annotations %v, reason %q", resp, tc.wantFound, tc.wantAnn, tc.wantReason)
			}
			if tc.wantFound && resp.Reason != "" {
				t.Errorf("a hit with a reason: %q", resp.Reason)
			}
			if got := count(m, tc.wantResult); got != before+1 {
				t.Errorf("%s counted %d times, want %d", tc.wantResult, got, before+1)
			}
		})
	}
	if n := testutil.CollectAndCount(m.duration); n != 1 {
		t.Errorf("duration histogram: %d series", n)
	}
}

func equal(a, b map[string]string) bool { return fmt.Sprint(a) == fmt.Sprint(b) }

// sink records the sandbox notices the server hands on.
type sink struct {
	mu  sync.Mutex
	got []string
}

func (k *sink) SandboxUp(namespace, name, uid string, ips []netip.Addr) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.got = append(k.got, fmt.Sprintf("%s/%s %s %v", namespace, name, uid, ips))
}

// TestSandboxNotices: a well-formed notice is handed to the sink, pod
// cached or not (it may be on its way), and answered found; a malformed
// one is refused as a bad request and reaches no one.
func TestSandboxNotices(t *testing.T) {
	k := &sink{}
	s, m := testServer(t, newInformer(pod("ns", "web", "u-web", injected)).lookup(), 0, func(s *Server) { s.Sandboxes = k })
	bare, bm := testServer(t, newInformer().lookup(), 0)
	tests := []struct {
		name       string
		srv        *Server
		met        *Metrics
		req        nodeagent.Request
		wantReason string
		wantSink   string
	}{
		{"taken", s, m, nodeagent.Request{Kind: nodeagent.KindSandbox, Namespace: "ns", Name: "web", UID: "u-web", SandboxIPs: []string{"10.244.0.7"}}, "", "ns/web u-web [10.244.0.7]"},
		{"dual stack, pod not cached yet", s, m, nodeagent.Request{Kind: nodeagent.KindSandbox, Namespace: "ns", Name: "new", UID: "u-new", SandboxIPs: []string{"10.244.0.8", "fd00::8"}}, "", "ns/new u-new [10.244.0.8 fd00::8]"},
		{"no uid", s, m, nodeagent.Request{Kind: nodeagent.KindSandbox, Namespace: "ns", Name: "web", SandboxIPs: []string{"10.244.0.7"}}, "bad request: a sandbox notice needs the pod's uid", ""},
		{"not an IP", s, m, nodeagent.Request{Kind: nodeagent.KindSandbox, Namespace: "ns", Name: "web", UID: "u-web", SandboxIPs: []string{"10.244.0.7/24"}}, `bad request: sandbox IP "10.244.0.7/24"`, ""},
		{"three IPs", s, m, nodeagent.Request{Kind: nodeagent.KindSandbox, Namespace: "ns", Name: "web", UID: "u-web", SandboxIPs: []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}}, "bad request: 3 sandbox IPs, expected at most 2", ""},
		{"no name", s, m, nodeagent.Request{Kind: nodeagent.KindSandbox, Namespace: "ns", UID: "u", SandboxIPs: []string{"10.244.0.7"}}, "bad request: namespace and name are required", ""},
		{"a node agent without a sink", bare, bm, nodeagent.Request{Kind: nodeagent.KindSandbox, Namespace: "ns", Name: "web", UID: "u-web", SandboxIPs: []string{"10.244.0.7"}}, "bad request: this node agent takes no sandbox notices", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k.got = nil
			result := resultNotice
			if tc.wantReason != "" {
				result = resultBadRequest
			}
			before := count(tc.met, result)
			resp := ask(t, tc.srv.Socket(), tc.req)
			if resp.Found != (tc.wantReason == "") || !strings.Contains(resp.Reason, tc.wantReason) || resp.Annotations != nil {
				t.Errorf("answer %+v, want found %v, reason %q, no annotations", resp, tc.wantReason == "", tc.wantReason)
			}
			want := []string{}
			if tc.wantSink != "" {
				want = append(want, tc.wantSink)
			}
			if fmt.Sprint(k.got) != fmt.Sprint(want) {
				t.Errorf("sink got %q, want %q", k.got, want)
			}
			if got := count(tc.met, result); got != before+1 {
				t.Errorf("%s counted %d times, want %d", result, got, before+1)
			}
		})
	}
}

// TestBadRequests: what a plugin of another version, or anything else
// that is not a request, gets back; each connection is still answered.
func TestBadRequests(t *testing.T) {
	s, m := testServer(t, newInformer().lookup(), 0)
	tests := []struct {
		name, send string
		wantReason string
	}{
		{"garbage", "GET / HTTP/1.1\r\n\r\n", "bad request: decode"},
		{"another version", `{"v":2,"namespace":"ns","name":"web"}` + "\n", "bad request: protocol version 2, this node agent speaks 1"},
		{"no version", `{"namespace":"ns","name":"web"}` + "\n", "bad request: protocol version 0"},
		{"oversized", `{"v":1,"namespace":"` + strings.Repeat("n", nodeagent.MaxRequest) + `","name":"web"}` + "\n", "bad request: line too long: more than 4096 bytes"},
		{"oversized, no newline", strings.Repeat("x", 10*nodeagent.MaxRequest), "line too long"},
		{"closed before a line", "", "bad request: EOF"},
		{"unknown kind", `{"v":1,"kind":"poke","namespace":"ns","name":"web"}` + "\n", `bad request: "kind" is "poke", expected "lookup" or "sandbox"`},
		{"lookup with sandbox IPs", `{"v":1,"kind":"lookup","namespace":"ns","name":"web","uid":"u","sandboxIPs":["10.244.0.7"]}` + "\n",
			`bad request: "kind" "lookup" with "sandboxIPs"`},
		{"sandbox notice without IPs", `{"v":1,"kind":"sandbox","namespace":"ns","name":"web","uid":"u"}` + "\n", `bad request: "kind" "sandbox" without "sandboxIPs"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := count(m, resultBadRequest)
			resp := send(t, s.Socket(), tc.send)
			if resp.Found || !strings.Contains(resp.Reason, tc.wantReason) {
				t.Errorf("answer %+v, want reason %q", resp, tc.wantReason)
			}
			if got := count(m, resultBadRequest); got != before+1 {
				t.Errorf("bad_request counted %d, want %d", got, before+1)
			}
		})
	}
}

// send writes raw to socket as a client would, closes its side and
// returns the answer.
func send(t *testing.T, socket, raw string) nodeagent.Response {
	t.Helper()
	c, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(raw)); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.UnixConn).CloseWrite()
	var resp nodeagent.Response
	if err := nodeagent.Read(c, nodeagent.MaxResponse, &resp); err != nil {
		t.Fatal(err)
	}
	return resp
}

// TestOldPlugin: during a rollout a meshlet-cni that predates the
// request's kind meets this node agent. Its requests, byte for byte as
// it sent them, are answered as before: one with sandbox IPs is a
// sandbox notice, one without a lookup.
func TestOldPlugin(t *testing.T) {
	k := &sink{}
	s, m := testServer(t, newInformer(pod("ns", "web", "u-web", injected)).lookup(), 0, func(s *Server) { s.Sandboxes = k })
	tests := []struct {
		name, send string
		want       nodeagent.Response
		wantResult string
		wantSink   []string
	}{
		{"lookup", `{"v":1,"namespace":"ns","name":"web","uid":"u-web"}` + "\n",
			nodeagent.Response{Version: 1, Found: true, Annotations: injected}, resultHit, nil},
		{"lookup, no uid", `{"v":1,"namespace":"ns","name":"web"}` + "\n",
			nodeagent.Response{Version: 1, Found: true, Annotations: injected}, resultHit, nil},
		{"sandbox notice", `{"v":1,"namespace":"ns","name":"web","uid":"u-web","sandboxIPs":["10.244.0.7"]}` + "\n",
			nodeagent.Response{Version: 1, Found: true}, resultNotice, []string{"ns/web u-web [10.244.0.7]"}},
		{"sandbox notice without uid", `{"v":1,"namespace":"ns","name":"web","sandboxIPs":["10.244.0.7"]}` + "\n",
			nodeagent.Response{Version: 1, Reason: "bad request: a sandbox notice needs the pod's uid"}, resultBadRequest, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k.got = nil
			before := count(m, tc.wantResult)
			if resp := send(t, s.Socket(), tc.send); fmt.Sprint(resp) != fmt.Sprint(tc.want) {
				t.Errorf("answer %+v, want %+v", resp, tc.want)
			}
			if fmt.Sprint(k.got) != fmt.Sprint(tc.wantSink) {
				t.Errorf("sink got %q, want %q", k.got, tc.wantSink)
			}
			if got := count(m, tc.wantResult); got != before+1 {
				t.Errorf("%s counted %d times, want %d", tc.wantResult, got, before+1)
			}
		})
	}
}

// TestSilentClient: a client that connects and sends nothing is cut off
// by the connection's deadline, with an answer.
func TestSilentClient(t *testing.T) {
	s, _ := testServer(t, newInformer().lookup(), 0)
	c, err := net.Dial("unix", s.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	var resp nodeagent.Response
	if err := nodeagent.Read(c, nodeagent.MaxResponse, &resp); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < ioTimeout/2 || took > ioTimeout+2*time.Second || !strings.Contains(resp.Reason, "i/o timeout") {
		t.Errorf("after %v: %+v, want a timeout after about %v", took, resp, ioTimeout)
	}
}

// TestLatePod: a pod that reaches the informer after the request is
// answered, as soon as the node agent notifies, or at the next poll
// without.
func TestLatePod(t *testing.T) {
	for _, tc := range []struct {
		name     string
		notify   bool
		oldFirst bool // an old pod of the name is cached first (UID mismatch), then replaced
	}{
		{"notified", true, false},
		{"polled", false, false},
		{"replaces an old pod of the name, notified", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inf := newInformer()
			if tc.oldFirst {
				inf.add(pod("ns", "web", "u-old", nil))
			}
			s, m := testServer(t, inf.lookup(), 5*time.Second, func(s *Server) {
				if tc.notify {
					s.poll = time.Minute // only Notify can end the wait in time
				}
			})
			h := s.EventHandler()
			added := make(chan time.Time, 1)
			go func() {
				time.Sleep(100 * time.Millisecond)
				p := pod("ns", "web", "u-new", injected)
				if err := inf.Update(p); err != nil { // Update adds as well
					t.Error(err)
				}
				added <- time.Now()
				if tc.notify {
					if tc.oldFirst {
						h.OnUpdate(pod("ns", "web", "u-old", nil), p)
					} else {
						h.OnAdd(p, false)
					}
				}
			}()
			start := time.Now()
			resp := ask(t, s.Socket(), nodeagent.Request{Kind: nodeagent.KindLookup, Namespace: "ns", Name: "web", UID: "u-new"})
			answered := time.Now()
			if !resp.Found || !equal(resp.Annotations, injected) {
				t.Fatalf("answer %+v", resp)
			}
			if answered.Sub(start) < 90*time.Millisecond {
				t.Errorf("answered after %v, before the pod came", answered.Sub(start))
			}
			// Far less than the 5 s wait, and with Notify far less than
			// the minute between polls.
			if after := answered.Sub(<-added); after > time.Second {
				t.Errorf("answered %v after the pod came", after)
			}
			if count(m, resultHit) != 1 {
				t.Errorf("hits %d", count(m, resultHit))
			}
			s.mu.Lock()
			left := len(s.waiters)
			s.mu.Unlock()
			if left != 0 {
				t.Errorf("%d waiters left", left)
			}
		})
	}
}

// TestWaitBounded: a pod that does not come is "unknown" after the wait,
// not later; notifications for other pods do not end the wait.
func TestWaitBounded(t *testing.T) {
	const wait = 150 * time.Millisecond
	s, m := testServer(t, newInformer().lookup(), wait)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
				s.Notify("ns", "other")
			}
		}
	}()
	start := time.Now()
	resp := ask(t, s.Socket(), nodeagent.Request{Kind: nodeagent.KindLookup, Namespace: "ns", Name: "web"})
	took := time.Since(start)
	if resp.Found || took < wait || took > wait+500*time.Millisecond {
		t.Errorf("after %v: %+v; want unknown after about %v", took, resp, wait)
	}
	if count(m, resultMiss) != 1 {
		t.Errorf("misses %d", count(m, resultMiss))
	}
}

// TestConcurrent: many plugins at once (a Deployment scaling up), hits,
// misses and late pods mixed, each answered with its own pod.
func TestConcurrent(t *testing.T) {
	inf := newInformer()
	for i := range 50 {
		inf.add(pod("ns", fmt.Sprintf("p%d", i), fmt.Sprintf("u%d", i), map[string]string{"i": fmt.Sprint(i)}))
	}
	s, m := testServer(t, inf.lookup(), 2*time.Second)
	var wg sync.WaitGroup
	for i := range 100 { // p50..p99 come late
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := nodeagent.Ask(s.Socket(), nodeagent.Request{Kind: nodeagent.KindLookup, Namespace: "ns", Name: fmt.Sprintf("p%d", i), UID: fmt.Sprintf("u%d", i)}, 5*time.Second)
			if err != nil || !resp.Found || resp.Annotations["i"] != fmt.Sprint(i) {
				t.Errorf("p%d: %+v, %v", i, resp, err)
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	for i := 50; i < 100; i++ {
		p := pod("ns", fmt.Sprintf("p%d", i), fmt.Sprintf("u%d", i), map[string]string{"i": fmt.Sprint(i)})
		inf.add(p)
		s.Notify(p.Namespace, p.Name)
	}
	wg.Wait()
	if count(m, resultHit) != 100 {
		t.Errorf("hits %d, want 100", count(m, resultHit))
	}
}

// TestSocketFiles: the directory is created 0750 and the socket is 0600;
// a stale socket (a node agent that crashed) is replaced; a live one's
// socket or a file that is not a socket is left alone and is an error.
func TestSocketFiles(t *testing.T) {
	t.Run("modes", func(t *testing.T) {
		s, _ := testServer(t, newInformer().lookup(), 0)
		for path, want := range map[string]os.FileMode{filepath.Dir(s.Socket()): os.ModeDir | 0o750, s.Socket(): os.ModeSocket | 0o600} {
			if st, err := os.Stat(path); err != nil || st.Mode() != want {
				t.Errorf("%s: %v %v, want %v", path, st.Mode(), err, want)
			}
		}
		if left, _ := filepath.Glob(filepath.Join(filepath.Dir(s.Socket()), ".*")); len(left) != 0 {
			t.Errorf("temporary files left: %v", left)
		}
	})
	t.Run("stale socket replaced", func(t *testing.T) {
		socket := nodeagenttest.Stale(t, "") // the crash: the file stays, no one listens
		s := New(socket, newInformer(pod("ns", "web", "u", injected)).lookup())
		serve(t, s)
		if resp := ask(t, socket, nodeagent.Request{Kind: nodeagent.KindLookup, Namespace: "ns", Name: "web"}); !resp.Found {
			t.Errorf("answer %+v", resp)
		}
	})
	t.Run("live socket kept", func(t *testing.T) {
		socket := filepath.Join(nodeagenttest.Dir(t), "cni.sock")
		ln, err := net.Listen("unix", socket)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		err = New(socket, newInformer().lookup()).Listen()
		if err == nil || !strings.Contains(err.Error(), "another process is serving on it") {
			t.Errorf("Listen: %v", err)
		}
		if _, err := os.Stat(socket); err != nil {
			t.Errorf("the live socket is gone: %v", err)
		}
	})
	t.Run("not a socket", func(t *testing.T) {
		socket := filepath.Join(nodeagenttest.Dir(t), "cni.sock")
		if err := os.WriteFile(socket, []byte("keep"), 0o600); err != nil {
			t.Fatal(err)
		}
		err := New(socket, newInformer().lookup()).Listen()
		if err == nil || !strings.Contains(err.Error(), "exists and is not a socket") {
			t.Errorf("Listen: %v", err)
		}
		if b, _ := os.ReadFile(socket); string(b) != "keep" {
			t.Errorf("the file was touched: %q", b)
		}
	})
}

// serve runs s until the test ends.
func serve(t *testing.T, s *Server) {
	t.Helper()
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// TestShutdown: Serve returns soon after ctx ends, even with a request
// waiting for a pod (it gets "unknown"), and removes its socket, but not
// one another node agent has put there since.
func TestShutdown(t *testing.T) {
	for _, replaced := range []bool{false, true} {
		t.Run(fmt.Sprintf("replaced=%v", replaced), func(t *testing.T) {
			s := New(filepath.Join(nodeagenttest.Dir(t), "cni.sock"), newInformer().lookup())
			s.Wait = time.Minute
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- s.Serve(ctx) }()
			waitFor(t, s.Socket())
			answer := make(chan nodeagent.Response, 1)
			go func() {
				answer <- ask(t, s.Socket(), nodeagent.Request{Kind: nodeagent.KindLookup, Namespace: "ns", Name: "web"})
			}()
			time.Sleep(50 * time.Millisecond) // the request is waiting
			var other net.Listener
			if replaced {
				if err := os.Remove(s.Socket()); err != nil {
					t.Fatal(err)
				}
				var err error
				if other, err = net.Listen("unix", s.Socket()); err != nil {
					t.Fatal(err)
				}
				defer other.Close()
			}
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Serve: %v", err)
				}
			case <-time.After(2 * time.Second):
				t.Fatal("Serve did not return after ctx ended")
			}
			if resp := <-answer; resp.Found || resp.Reason == "" {
				t.Errorf("the waiting request got %+v", resp)
			}
			_, err := os.Stat(s.Socket())
			if replaced && err != nil {
				t.Errorf("the other node agent's socket was removed: %v", err)
			}
			if !replaced && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("socket left: %v", err)
			}
		})
	}
}

func waitFor(t *testing.T, socket string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if c, err := net.Dial("unix", socket); err == nil {
			c.Close()
			return
		}
	}
	t.Fatalf("%s: no one listening", socket)
}

// TestListerLookup: the adapter over the node agent's lister.
func TestListerLookup(t *testing.T) {
	l := newInformer(pod("ns", "web", "u", injected)).lookup()
	if p, ok := l.Pod("ns", "web"); !ok || p.UID != "u" {
		t.Errorf("web: %v %v", p, ok)
	}
	if p, ok := l.Pod("ns", "nope"); ok || p != nil {
		t.Errorf("nope: %v %v", p, ok)
	}
}
