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
			resp.Reason = "not in the agent's pod cache"
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

// TestHostLookupOrder: runtime annotations, then the agent's pod cache,
// then the API server; any failure or "unknown" of the agent falls
// through to the API server, within the agent's time budget.
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
		name     string
		runtime  bool   // the runtime passes annotations
		agent    string // fakeNodeAgent mode; "" no agent_socket; "absent": no socket file; "refused": a socket no one listens on
		pod, uid string
		wantFrom string // "" with wantErr
		wantErr  string
		wantNil  bool // the annotations are nil (a pod without any)
		// requests the agent and the API server must have seen
		wantAgent, wantAPI int32
		wantLog            []logWant
	}{
		{name: "runtime first, agent not asked", runtime: true, agent: "hit", pod: "web", wantFrom: "runtime"},
		{name: "no agent socket: API", pod: "web", wantFrom: "api", wantAPI: 1},
		{name: "agent hit, API not asked", agent: "hit", pod: "web", uid: "u-1", wantFrom: "agent", wantAgent: 1},
		{name: "agent hit, pod without annotations", agent: "hit-empty", pod: "web", wantFrom: "agent", wantNil: true, wantAgent: 1},
		{name: "agent does not know the pod: API", agent: "unknown", pod: "web", wantFrom: "api", wantAgent: 1, wantAPI: 1,
			wantLog: []logWant{{"INFO", "asking the API server", map[string]string{"err": "pod unknown to the agent: not in the agent's pod cache"}}}},
		{name: "agent does not know, API neither", agent: "unknown", pod: "gone", wantErr: "read annotations from the API server: pod not found", wantAgent: 1, wantAPI: 1},
		{name: "agent not running (no socket): API", agent: "absent", pod: "web", wantFrom: "api", wantAPI: 1,
			wantLog: []logWant{{"WARN", "asking the API server", nil}}},
		{name: "agent crashed (stale socket): API", agent: "refused", pod: "web", wantFrom: "api", wantAPI: 1,
			wantLog: []logWant{{"WARN", "asking the API server", nil}}},
		{name: "agent hangs: API after the timeout", agent: "hang", pod: "web", wantFrom: "api", wantAgent: 1, wantAPI: 1,
			wantLog: []logWant{{"WARN", "asking the API server", nil}}},
		{name: "agent answers garbage: API", agent: "garbage", pod: "web", wantFrom: "api", wantAgent: 1, wantAPI: 1},
		{name: "agent answers another protocol version: API", agent: "version2", pod: "web", wantFrom: "api", wantAgent: 1, wantAPI: 1,
			wantLog: []logWant{{"WARN", "asking the API server", map[string]string{"err": "ask the agent: answer of protocol version 2, want 1"}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			apiCalls.Store(0)
			conf := &NetConf{ConflistEntry: contract.ConflistEntry{Kubeconfig: kubeconfig}, lookupTimeout: 5 * time.Second}
			if tc.runtime {
				conf.RuntimeConfig.PodAnnotations = map[string]string{"from": "runtime"}
			}
			agent := &fakeNodeAgent{mode: tc.agent}
			if tc.agent != "" {
				conf.NodeAgentSocket = filepath.Join(nodeagenttest.Dir(t), "cni.sock")
			}
			switch tc.agent {
			case "", "absent":
			case "refused":
				nodeagenttest.Stale(t, conf.NodeAgentSocket)
			default:
				agent.serve(t, conf.NodeAgentSocket)
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
			agent.mu.Lock()
			reqs := agent.requests
			agent.mu.Unlock()
			if int32(len(reqs)) != tc.wantAgent || apiCalls.Load() != tc.wantAPI {
				t.Errorf("agent asked %d times, API %d; want %d and %d", len(reqs), apiCalls.Load(), tc.wantAgent, tc.wantAPI)
			}
			for _, r := range reqs {
				if !reflect.DeepEqual(r, nodeagent.Request{Version: nodeagent.Version, Kind: nodeagent.KindLookup, Namespace: "ns", Name: tc.pod, UID: tc.uid}) {
					t.Errorf("agent got %+v", r)
				}
			}
			// A hanging agent costs the plugin its budget (250 ms) and no more.
			if took > 2*time.Second {
				t.Errorf("took %v", took)
			}
			if tc.agent == "hang" && took < agentTimeout {
				t.Errorf("gave up on the agent after %v, before its %v budget", took, agentTimeout)
			}
			checkLogs(t, logs.String(), tc.wantLog)
		})
	}
}

// TestCallLookupCarriesUID: the pod UID the runtime passes in CNI_ARGS
// reaches the agent's request, so the agent can refuse an old pod of the
// same name.
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

// TestSandboxUpNotice: the notice carries the pod and its IPs to the
// agent's socket; a refusal or no agent is an error for the caller to
// log; no socket configured sends nothing.
func TestSandboxUpNotice(t *testing.T) {
	for _, tc := range []struct {
		mode, wantErr string
	}{
		{"hit-empty", ""},
		{"unknown", "tell the agent: not in the agent's pod cache"},
		{"absent", "tell the agent: connect to"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			socket := filepath.Join(nodeagenttest.Dir(t), "cni.sock")
			agent := &fakeNodeAgent{mode: tc.mode}
			if tc.mode != "absent" {
				agent.serve(t, socket)
			}
			l := hostLookup{conf: &NetConf{ConflistEntry: contract.ConflistEntry{NodeAgentSocket: socket}}, log: slog.New(slog.DiscardHandler)}
			err := l.sandboxUp("ns", "web", "u-web", []string{"10.244.0.5"})
			if (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("sandboxUp: %v, want %q", err, tc.wantErr)
			}
			agent.mu.Lock()
			defer agent.mu.Unlock()
			want := []nodeagent.Request{{Version: nodeagent.Version, Kind: nodeagent.KindSandbox, Namespace: "ns", Name: "web", UID: "u-web", SandboxIPs: []string{"10.244.0.5"}}}
			if tc.mode == "absent" {
				want = nil
			}
			if !reflect.DeepEqual(agent.requests, want) {
				t.Fatalf("agent got %+v, want %+v", agent.requests, want)
			}
		})
	}
	l := hostLookup{conf: &NetConf{}, log: slog.New(slog.DiscardHandler)}
	if err := l.sandboxUp("ns", "web", "u-web", []string{"10.244.0.5"}); err != nil {
		t.Fatalf("no agent socket configured: %v, want nothing sent", err)
	}
}
