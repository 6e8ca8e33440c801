package cni

import (
	"bytes"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/meshlet/meshlet/cni/nodeagent"
	"github.com/meshlet/meshlet/cni/nodeagent/nodeagenttest"
	"github.com/meshlet/meshlet/contract"
)

// fakeNodeAgent is the node agent's pod cache as the plugin sees it: a
// unix socket answering as its mode says, recording each request.
type fakeNodeAgent struct {
	mode     string // hit, hit-empty, unknown, hang, garbage, version2
	mu       sync.Mutex
	requests []nodeagent.Request
}

func (a *fakeNodeAgent) serve(t *testing.T, socket string) {
	nodeagenttest.Serve(t, socket, func(c net.Conn, done <-chan struct{}) {
		var req nodeagent.Request
		if err := nodeagent.Read(c, nodeagent.MaxRequest, &req); err != nil {
			select {
			case <-done: // closed by the fake's cleanup
			default:
				t.Errorf("fake node agent: %v", err)
			}
			return
		}
		a.mu.Lock()
		a.requests = append(a.requests, req)
		a.mu.Unlock()
		resp := nodeagent.Response{Version: nodeagent.Version}
		switch a.mode {
		case "hit":
			resp.Found, resp.Annotations = true, map[string]string{"from": "agent"}
		case "hit-empty":
			resp.Found = true
		case "unknown":
			resp.Reason = "not in the node agent's pod cache"
		case "hang":
			return // the connection stays open, unanswered, until the test ends
		case "garbage":
			_, _ = c.Write([]byte("<html>\n"))
			return
		case "version2":
			resp.Version, resp.Found, resp.Annotations = 2, true, map[string]string{"from": "agent"}
		}
		_ = nodeagent.Write(c, resp)
	})
}

// TestHostLookupOrder: runtime annotations, then the node agent's pod
// cache, then the API server; any failure or "unknown" of the node agent
// falls through to the API server, within the node agent's time budget.
func TestHostLookupOrder(t *testing.T) {
	var apiCalls atomic.Int32
	srv, _ := apiServer(t, func(w http.ResponseWriter, r *http.Request) {
		apiCalls.Add(1)
		if r.URL.Path == "/api/v1/namespaces/ns/pods/web" {
			_, _ = w.Write([]byte(`{"metadata":{"annotations":{"from":"api"}}}`))
			return
		}
		w.WriteHeader(http.StatusNotFound)
	})
	kubeconfig := fakeAPIKubeconfig(t, srv)
	tests := []struct {
		name      string
		runtime   bool   // the runtime passes annotations
		nodeAgent string // fakeNodeAgent mode; "" no agent_socket; "absent": no socket file; "refused": a socket no one listens on
		pod, uid  string
		wantFrom  string // "" with wantErr
		wantErr   string
		wantNil   bool // the annotations are nil (a pod without any)
		// requests the node agent and the API server must have seen
		wantNodeAgent, wantAPI int32
		wantLog                []logWant
	}{
		{name: "runtime first, node agent not asked", runtime: true, nodeAgent: "hit", pod: "web", wantFrom: "runtime"},
		{name: "no node agent socket: API", pod: "web", wantFrom: "api", wantAPI: 1},
		{name: "node agent hit, API not asked", nodeAgent: "hit", pod: "web", uid: "u-1", wantFrom: "agent", wantNodeAgent: 1},
		{name: "node agent hit, pod without annotations", nodeAgent: "hit-empty", pod: "web", wantFrom: "agent", wantNil: true, wantNodeAgent: 1},
		{name: "node agent does not know the pod: API", nodeAgent: "unknown", pod: "web", wantFrom: "api", wantNodeAgent: 1, wantAPI: 1,
			wantLog: []logWant{{"INFO", "asking the API server", map[string]string{"err": "pod unknown to the node agent: not in the node agent's pod cache"}}}},
		{name: "node agent does not know, API neither", nodeAgent: "unknown", pod: "gone", wantErr: "read annotations from the API server: pod not found", wantNodeAgent: 1, wantAPI: 1},
		{name: "node agent not running (no socket): API", nodeAgent: "absent", pod: "web", wantFrom: "api", wantAPI: 1,
			wantLog: []logWant{{"WARN", "asking the API server", nil}}},
		{name: "node agent crashed (stale socket): API", nodeAgent: "refused", pod: "web", wantFrom: "api", wantAPI: 1,
			wantLog: []logWant{{"WARN", "asking the API server", nil}}},
		{name: "node agent hangs: API after the timeout", nodeAgent: "hang", pod: "web", wantFrom: "api", wantNodeAgent: 1, wantAPI: 1,
			wantLog: []logWant{{"WARN", "asking the API server", nil}}},
		{name: "node agent answers garbage: API", nodeAgent: "garbage", pod: "web", wantFrom: "api", wantNodeAgent: 1, wantAPI: 1},
		{name: "node agent answers another protocol version: API", nodeAgent: "version2", pod: "web", wantFrom: "api", wantNodeAgent: 1, wantAPI: 1,
			wantLog: []logWant{{"WARN", "asking the API server", map[string]string{"err": "ask the node agent: answer of protocol version 2, want 1"}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			apiCalls.Store(0)
			conf := &NetConf{ConflistEntry: contract.ConflistEntry{Kubeconfig: kubeconfig}, lookupTimeout: 5 * time.Second}
			if tc.runtime {
				conf.RuntimeConfig.PodAnnotations = map[string]string{"from": "runtime"}
			}
			fake := &fakeNodeAgent{mode: tc.nodeAgent}
			if tc.nodeAgent != "" {
				conf.NodeAgentSocket = filepath.Join(nodeagenttest.Dir(t), "cni.sock")
			}
			switch tc.nodeAgent {
			case "", "absent":
			case "refused":
				nodeagenttest.Stale(t, conf.NodeAgentSocket)
			default:
				fake.serve(t, conf.NodeAgentSocket)
			}
			var logs bytes.Buffer
			l := hostLookup{conf: conf, uid: tc.uid, log: slog.New(slog.NewJSONHandler(&logs, nil))}

			start := time.Now()
			ann, from, err := l.annotations("ns", tc.pod)
			took := time.Since(start)

			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("error %v, want %q", err, tc.wantErr)
				}
			} else if err != nil || from != tc.wantFrom || (ann == nil) != tc.wantNil || (!tc.wantNil && ann["from"] != tc.wantFrom) {
				t.Errorf("%v from %q, %v; want the %s's", ann, from, err, tc.wantFrom)
			}
			fake.mu.Lock()
			reqs := fake.requests
			fake.mu.Unlock()
			if int32(len(reqs)) != tc.wantNodeAgent || apiCalls.Load() != tc.wantAPI {
				t.Errorf("node agent asked %d times, API %d; want %d and %d", len(reqs), apiCalls.Load(), tc.wantNodeAgent, tc.wantAPI)
			}
			for _, r := range reqs {
				if !reflect.DeepEqual(r, nodeagent.Request{Version: nodeagent.Version, Kind: nodeagent.KindLookup, Namespace: "ns", Name: tc.pod, UID: tc.uid}) {
					t.Errorf("node agent got %+v", r)
				}
			}
			// A hanging node agent costs the plugin its budget and no more.
			if took > 2*time.Second {
				t.Errorf("took %v", took)
			}
			if tc.nodeAgent == "hang" && took < nodeAgentTimeout {
				t.Errorf("gave up on the node agent after %v, before its %v budget", took, nodeAgentTimeout)
			}
			checkLogs(t, logs.String(), tc.wantLog)
		})
	}
}

// TestCallLookupCarriesUID: the pod UID the runtime passes in CNI_ARGS
// reaches the node agent's request, so the node agent can refuse an old
// pod of the same name.
func TestCallLookupCarriesUID(t *testing.T) {
	args := &skel.CmdArgs{Args: podArgs + ";K8S_POD_UID=0b5e-uid", StdinData: []byte(conf("1.0.0", prev))}
	c, err := parseCall(args, true)
	if err != nil {
		t.Fatal(err)
	}
	c.log = slog.New(slog.DiscardHandler)
	if l := c.hostLookup(); l.uid != "0b5e-uid" || l.conf != c.conf || l.log != c.log {
		t.Errorf("lookup %+v", l)
	}
}

// TestSandboxUpNotice: the notice carries the pod and its IPs to the node
// agent's socket; a refusal or no node agent is an error for the caller
// to log; no socket configured sends nothing.
func TestSandboxUpNotice(t *testing.T) {
	for _, tc := range []struct {
		mode, wantErr string
	}{
		{"hit-empty", ""},
		{"unknown", "tell the node agent: not in the node agent's pod cache"},
		{"absent", "tell the node agent: connect to"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			socket := filepath.Join(nodeagenttest.Dir(t), "cni.sock")
			fake := &fakeNodeAgent{mode: tc.mode}
			if tc.mode != "absent" {
				fake.serve(t, socket)
			}
			l := hostLookup{conf: &NetConf{ConflistEntry: contract.ConflistEntry{NodeAgentSocket: socket}}, log: slog.New(slog.DiscardHandler)}
			err := l.sandboxUp("ns", "web", "u-web", []string{"10.244.0.5"})
			if (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("sandboxUp: %v, want %q", err, tc.wantErr)
			}
			fake.mu.Lock()
			defer fake.mu.Unlock()
			want := []nodeagent.Request{{Version: nodeagent.Version, Kind: nodeagent.KindSandbox, Namespace: "ns", Name: "web", UID: "u-web", SandboxIPs: []string{"10.244.0.5"}}}
			if tc.mode == "absent" {
				want = nil
			}
			if !reflect.DeepEqual(fake.requests, want) {
				t.Fatalf("node agent got %+v, want %+v", fake.requests, want)
			}
		})
	}
	l := hostLookup{conf: &NetConf{}, log: slog.New(slog.DiscardHandler)}
	if err := l.sandboxUp("ns", "web", "u-web", []string{"10.244.0.5"}); err != nil {
		t.Fatalf("no node agent socket configured: %v, want nothing sent", err)
	}
}
