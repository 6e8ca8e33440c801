package agent

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/kubeclient/kubeclienttest"
)

// reportOf is a login failure report of shop/<name> with UID uid.
func reportOf(name, uid string) contract.SidecarProblem {
	return contract.SidecarProblem{Namespace: "shop", Pod: name, UID: uid, Reason: contract.ProblemLoginFailed,
		Message: "login to Consul auth method k8s: Unexpected response code: 403 (rpc error making call: Permission denied)"}
}

// TestJudgeProblem: a report becomes an Event only when it comes from
// the pod's own IP, for the pod of that UID, injected, not in the host's
// network.
func TestJudgeProblem(t *testing.T) {
	pod := injected("web-1", "u1", true) // IP 10.244.0.7
	dual := pod.DeepCopy()
	dual.Status.PodIPs = []corev1.PodIP{{IP: "10.244.0.7"}, {IP: "fd00::7"}}
	host := pod.DeepCopy()
	host.Spec.HostNetwork = true
	plain := pod.DeepCopy()
	plain.Annotations = nil
	noIP := pod.DeepCopy()
	noIP.Status.PodIP = ""
	at := netip.MustParseAddr
	for _, c := range []struct {
		name   string
		pod    *corev1.Pod
		remote netip.Addr
		report contract.SidecarProblem
		code   int
		why    string
	}{
		{"its own", pod, at("10.244.0.7"), reportOf("web-1", "u1"), http.StatusAccepted, ""},
		{"its own, v4 in v6", pod, at("::ffff:10.244.0.7"), reportOf("web-1", "u1"), http.StatusAccepted, ""},
		{"its own, second family", dual, at("fd00::7"), reportOf("web-1", "u1"), http.StatusAccepted, ""},
		{"not on this node", nil, at("10.244.0.7"), reportOf("web-1", "u1"), http.StatusNotFound, "no pod shop/web-1 on this node"},
		{"another pod's IP", pod, at("10.244.0.8"), reportOf("web-1", "u1"), http.StatusForbidden, "the report comes from 10.244.0.8, not from pod shop/web-1's IP"},
		{"the node", pod, at("192.168.1.10"), reportOf("web-1", "u1"), http.StatusForbidden, "not from pod shop/web-1's IP"},
		{"no IP yet", noIP, at("10.244.0.7"), reportOf("web-1", "u1"), http.StatusForbidden, "not from pod shop/web-1's IP"},
		{"no remote", pod, netip.Addr{}, reportOf("web-1", "u1"), http.StatusForbidden, "not from pod shop/web-1's IP"},
		{"host network", host, at("10.244.0.7"), reportOf("web-1", "u1"), http.StatusForbidden, "pod shop/web-1 is in the host's network"},
		{"an older pod of the name", pod, at("10.244.0.7"), reportOf("web-1", "u0"), http.StatusNotFound, "pod shop/web-1 on this node has another UID than u0"},
		{"not injected", plain, at("10.244.0.7"), reportOf("web-1", "u1"), http.StatusForbidden, "pod shop/web-1 is not injected by meshlet"},
	} {
		v := judgeProblem(c.pod, c.remote, c.report)
		if v.code != c.code || !strings.Contains(v.why, c.why) || (c.why == "") != (v.why == "") {
			t.Errorf("%s: %d %q, want %d %q", c.name, v.code, v.why, c.code, c.why)
		}
		if want := map[int]string{http.StatusAccepted: problemRecorded, http.StatusForbidden: problemForbidden, http.StatusNotFound: problemUnknownPod}[c.code]; v.result != want {
			t.Errorf("%s: result %q, want %q", c.name, v.result, want)
		}
	}
}

// TestProblemEventsCoverContract: every reason a sidecar may report has
// its Event.
func TestProblemEventsCoverContract(t *testing.T) {
	for _, r := range contract.ProblemReasons() {
		if e := problemEvents[r]; !strings.HasPrefix(e.reason, "Meshlet") || e.lead == "" {
			t.Errorf("reason %s: Event %+v", r, e)
		}
	}
}

// TestSidecarProblemHandler: the endpoint takes a POSTed report of a pod
// in the node agent's cache from that pod's IP, records a Warning Event on
// the pod naming the cause (never a token), counts it and logs it; it
// answers why it refuses any other.
func TestSidecarProblemHandler(t *testing.T) {
	pods := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	if err := pods.Add(injected("web-1", "u1", false)); err != nil {
		t.Fatal(err)
	}
	events := record.NewFakeRecorder(10)
	logs := &syncBuffer{}
	h := &sidecarProblems{pods: corelisters.NewPodLister(pods), events: events,
		metrics: NewMetrics(prometheus.NewRegistry()), log: slog.New(slog.NewTextHandler(logs, nil))}
	const ok = `{"namespace":"shop","pod":"web-1","uid":"u1","reason":"LoginFailed","message":"login to Consul auth method k8s: Unexpected response code: 403 (rpc error making call: Permission denied)"}`
	for _, c := range []struct {
		name, method, body, remote string
		code                       int
		answer                     string
	}{
		{"GET", http.MethodGet, "", "10.244.0.7:40000", http.StatusMethodNotAllowed, "POST a sidecar problem report"},
		{"not JSON", http.MethodPost, "login failed", "10.244.0.7:40000", http.StatusBadRequest, "sidecar problem: invalid character"},
		{"no UID", http.MethodPost, strings.Replace(ok, `"uid":"u1",`, "", 1), "10.244.0.7:40000", http.StatusBadRequest, "uid is empty"},
		{"unknown reason", http.MethodPost, strings.Replace(ok, "LoginFailed", "OutOfMemory", 1), "10.244.0.7:40000", http.StatusBadRequest, `reason "OutOfMemory" is not one of [LoginFailed]`},
		{"too large", http.MethodPost, strings.Replace(ok, "Permission", strings.Repeat("x", contract.SidecarProblemMaxBytes), 1), "10.244.0.7:40000", http.StatusBadRequest, "request body too large"},
		{"unknown pod", http.MethodPost, strings.Replace(ok, "web-1", "web-2", 1), "10.244.0.7:40000", http.StatusNotFound, "no pod shop/web-2 on this node"},
		{"from another pod", http.MethodPost, ok, "10.244.0.9:40000", http.StatusForbidden, "the report comes from 10.244.0.9, not from pod shop/web-1's IP"},
		{"its own", http.MethodPost, strings.Replace(ok, "k8s:", "k8s: bearer eyJhbGciOiJFUzI1NiJ9.eyJzYSI6IndlYiJ9.c2ln:", 1), "10.244.0.7:40000", http.StatusAccepted, ""},
	} {
		req := httptest.NewRequest(c.method, contract.SidecarProblemPath, strings.NewReader(c.body))
		req.RemoteAddr = c.remote
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != c.code || !strings.Contains(rec.Body.String(), c.answer) {
			t.Errorf("%s: %d %q, want %d %q", c.name, rec.Code, rec.Body.String(), c.code, c.answer)
		}
	}
	if len(events.Events) != 1 {
		t.Fatalf("%d Events, want the accepted report's", len(events.Events))
	}
	want := "Warning MeshletLoginFailed the sidecar serves nothing until its Consul login succeeds: login to Consul auth method k8s: bearer [redacted token]: Unexpected response code: 403 (rpc error making call: Permission denied)"
	if got := <-events.Events; got != want {
		t.Errorf("Event\n %q\nwant\n %q", got, want)
	}
	for result, want := range map[string]float64{problemRecorded: 1, problemForbidden: 1, problemUnknownPod: 1} {
		if got := testutil.ToFloat64(h.metrics.sidecarProblems.WithLabelValues("LoginFailed", result)); got != want {
			t.Errorf("meshlet_agent_sidecar_problems_total{reason=LoginFailed,result=%s} = %v, want %v", result, got, want)
		}
	}
	if got := testutil.ToFloat64(h.metrics.sidecarProblems.WithLabelValues("unknown", problemBadRequest)); got != 4 {
		t.Errorf("bad requests counted %v, want 4", got)
	}
	if out := logs.String(); !strings.Contains(out, `level=WARN msg="sidecar problem" pod=shop/web-1 reason=LoginFailed`) || strings.Contains(out, "eyJ") {
		t.Errorf("want the recorded problem logged with its pod, and no token; logs:\n%s", out)
	}
}

// TestSidecarProblemServed: the node agent's HTTP server takes a report at
// contract.SidecarProblemPath from its pod cache, checking the address the
// report really came from.
func TestSidecarProblemServed(t *testing.T) {
	consul, err := capi.NewClient(&capi.Config{Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{NodeName: "node-1", Workers: 1, ResyncInterval: time.Second, IptablesMode: "legacy", Repair: RepairConfig{Disabled: true}},
		kubeclienttest.FromClientset(fake.NewClientset()), consul, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	events := record.NewFakeRecorder(10)
	a.events = events
	pod := injected("web-1", "u1", false)
	pod.Status.PodIP = "127.0.0.1" // where this test's requests come from
	if err := a.inf.podInf.GetStore().Add(pod); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- a.serveHTTP(ctx, ln) }()
	defer func() { cancel(); <-served }()

	url := "http://" + ln.Addr().String() + contract.SidecarProblemPath
	for uid, want := range map[string]int{"u1": http.StatusAccepted, "u0": http.StatusNotFound} {
		body := `{"namespace":"shop","pod":"web-1","uid":"` + uid + `","reason":"LoginFailed","message":"403 (Permission denied)"}`
		resp, err := http.Post(url, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("report of UID %s: %s, want %d", uid, resp.Status, want)
		}
	}
	select {
	case e := <-events.Events:
		if !strings.HasPrefix(e, "Warning MeshletLoginFailed ") || !strings.HasSuffix(e, ": 403 (Permission denied)") {
			t.Errorf("Event %q", e)
		}
	default:
		t.Error("no Event for the accepted report")
	}
}
