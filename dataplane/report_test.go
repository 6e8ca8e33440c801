package dataplane

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshlet/meshlet/contract"
)

// fakeNodeAgent stands in for the node agent's problem endpoint: it keeps
// each report it is sent and answers with status (202 unless set).
type fakeNodeAgent struct {
	mu      sync.Mutex
	bodies  [][]byte
	paths   []string
	status  int
	arrived chan struct{} // a value per report, when not nil
	hold    chan struct{} // when not nil, each answer waits for it to close
}

// newFakeNodeAgent serves f on 127.0.0.1 until the test ends and returns
// its host:port.
func newFakeNodeAgent(t *testing.T, f *fakeNodeAgent) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.bodies = append(f.bodies, b)
		f.paths = append(f.paths, r.Method+" "+r.URL.Path)
		status := f.status
		f.mu.Unlock()
		if f.arrived != nil {
			f.arrived <- struct{}{}
		}
		if f.hold != nil {
			<-f.hold
		}
		if status == 0 {
			status = http.StatusAccepted
		}
		w.WriteHeader(status)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func (f *fakeNodeAgent) setStatus(code int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status = code
}

// reports decodes the reports received so far, failing the test on one
// the node agent's own decoder would refuse or sent elsewhere than its
// endpoint.
func (f *fakeNodeAgent) reports(t *testing.T) []contract.SidecarProblem {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []contract.SidecarProblem
	for i, b := range f.bodies {
		if want := "POST " + contract.SidecarProblemPath; f.paths[i] != want {
			t.Errorf("report sent as %s, want %s", f.paths[i], want)
		}
		p, err := contract.DecodeSidecarProblem(bytes.NewReader(b))
		if err != nil {
			t.Errorf("report %s: %v", b, err)
		}
		out = append(out, p)
	}
	return out
}

func (f *fakeNodeAgent) raw() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return string(bytes.Join(f.bodies, []byte("\n")))
}

// testReporter is a reporter to addr for pod shop/web-1.
func testReporter(t *testing.T, addr string) (*nodeAgentReporter, *syncBuffer) {
	t.Helper()
	t.Setenv(contract.EnvPodNamespace, "shop")
	t.Setenv(contract.EnvPodName, "web-1")
	t.Setenv(contract.EnvPodUID, "web-1-uid")
	logs := &syncBuffer{}
	r := newNodeAgentReporter(addr, slog.New(slog.NewTextHandler(logs, nil)))
	if r == nil {
		t.Fatal("no reporter for a pod named in the environment")
	}
	return r, logs
}

// settled waits until r has no report under way.
func settled(t *testing.T, r *nodeAgentReporter) {
	t.Helper()
	eventually(t, 10*time.Second, "the report sent", func() error {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.sending {
			return io.ErrNoProgress
		}
		return nil
	})
}

// TestReporterOncePerCause: each distinct cause is reported once, with the
// pod's namespace, name and UID; the same cause again after a recovery is
// reported again; a token in the cause never leaves.
func TestReporterOncePerCause(t *testing.T) {
	f := &fakeNodeAgent{}
	r, logs := testReporter(t, newFakeNodeAgent(t, f))
	const jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzYSI6IndlYiJ9.c2ln"
	steps := []struct {
		cause     string
		recovered bool
		want      int // reports received after the step
	}{
		{cause: "403 (Permission denied)", want: 1},
		{cause: "403 (Permission denied)", want: 1},
		{cause: "403 (Permission denied)", want: 1},
		{cause: "token " + jwt + ": 500 (TokenReview refused)", want: 2},
		{cause: "token " + jwt + ": 500 (TokenReview refused)", want: 2},
		{recovered: true, want: 2},
		{cause: "token " + jwt + ": 500 (TokenReview refused)", want: 3},
	}
	for i, s := range steps {
		if s.recovered {
			r.recovered(contract.ProblemLoginFailed)
		} else {
			r.failed(contract.ProblemLoginFailed, s.cause)
		}
		settled(t, r)
		if got := len(f.reports(t)); got != s.want {
			t.Fatalf("step %d (%+v): %d reports, want %d\n%s", i, s, got, s.want, logs.String())
		}
	}
	got := f.reports(t)
	want := contract.SidecarProblem{Namespace: "shop", Pod: "web-1", UID: "web-1-uid", Reason: contract.ProblemLoginFailed,
		Message: "token [redacted token]: 500 (TokenReview refused)"}
	if got[2] != want {
		t.Errorf("report %+v, want %+v", got[2], want)
	}
	if strings.Contains(f.raw(), "eyJ") {
		t.Errorf("a token was sent to the node agent:\n%s", f.raw())
	}
}

// TestReporterRetriesUntilTaken: a report the node agent does not take (it
// does not know the pod yet, or does not answer) is sent again at the next
// failure, and not after it took it; one it finds bad is not sent again.
func TestReporterRetriesUntilTaken(t *testing.T) {
	f := &fakeNodeAgent{status: http.StatusNotFound}
	r, logs := testReporter(t, newFakeNodeAgent(t, f))
	for i, s := range []struct {
		status int // the node agent's answer from this step on
		want   int
	}{
		{http.StatusNotFound, 1}, {http.StatusForbidden, 2}, {http.StatusServiceUnavailable, 3},
		{http.StatusAccepted, 4}, {http.StatusAccepted, 4},
	} {
		f.setStatus(s.status)
		r.failed(contract.ProblemLoginFailed, "403 (Permission denied)")
		settled(t, r)
		if got := len(f.reports(t)); got != s.want {
			t.Fatalf("step %d: %d reports, want %d\n%s", i, got, s.want, logs.String())
		}
	}
	// Logged once per cause, not at each refusal.
	if n := strings.Count(logs.String(), "the node agent did not take"); n != 1 {
		t.Errorf("%d warnings of a report not taken, want 1\n%s", n, logs.String())
	}

	f.setStatus(http.StatusBadRequest)
	r.failed(contract.ProblemLoginFailed, "another cause")
	settled(t, r)
	r.failed(contract.ProblemLoginFailed, "another cause")
	settled(t, r)
	if got := len(f.reports(t)); got != 5 {
		t.Errorf("%d reports, want 5: a report refused as bad is not sent again", got)
	}
}

// TestReporterNeverBlocks: failed returns while the node agent has not
// answered, and a second failure meanwhile sends nothing more.
func TestReporterNeverBlocks(t *testing.T) {
	f := &fakeNodeAgent{arrived: make(chan struct{}, 4), hold: make(chan struct{})}
	r, _ := testReporter(t, newFakeNodeAgent(t, f))
	defer close(f.hold) // before the server's Close, which waits for the answer
	returned := make(chan struct{})
	go func() {
		r.failed(contract.ProblemLoginFailed, "cause one")
		r.failed(contract.ProblemLoginFailed, "cause two")
		close(returned)
	}()
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		t.Fatal("failed waits for the node agent's answer")
	}
	select {
	case <-f.arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the report never arrived")
	}
	if got := len(f.reports(t)); got != 1 {
		t.Errorf("%d reports while the first is unanswered, want 1", got)
	}
}

// TestReporterOff: no address, or no pod in the environment, reports
// nothing, and a nil reporter may be called.
func TestReporterOff(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if r := newNodeAgentReporter("", log); r != nil {
		t.Error("a reporter without an address")
	}
	t.Setenv(contract.EnvPodUID, "")
	if r := newNodeAgentReporter("127.0.0.1:9402", log); r != nil {
		t.Error("a reporter without the pod's UID")
	}
	var r *nodeAgentReporter
	r.failed(contract.ProblemLoginFailed, "x")
	r.recovered(contract.ProblemLoginFailed)
}
