package dataplane

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/meshlet/meshlet/contract"
)

// reportTimeout bounds one report: the node agent is on the pod's own
// node, and a report that hangs must not keep its goroutine for long.
const reportTimeout = 2 * time.Second

// nodeAgentReporter reports problems of the sidecar's own pod to its
// node's node agent (contract.SidecarProblemPath), which records each as
// an Event on the pod: the pod's ServiceAccount, which the sidecar runs
// as, may not create Events. Each distinct problem is reported once, and
// again if it comes back after recovered. A report runs beside its
// caller, never holding it up; one the node agent did not take is sent
// again at the caller's next failure. A nil reporter reports nothing.
type nodeAgentReporter struct {
	url    string
	client *http.Client
	pod    contract.SidecarProblem // the pod's namespace, name and UID
	log    *slog.Logger

	mu      sync.Mutex
	sending bool
	// gen is bumped by recovered: a report that was under way then does
	// not count for the failures that follow.
	gen      int
	reported map[contract.ProblemReason]string // the message the node agent took, by reason
	warned   string                            // the message whose delivery failure was logged last
}

// newNodeAgentReporter reports to the node agent at addr (host:port) for
// the pod the downward-API environment names; nil when addr is empty or
// the environment names no pod (then it says so).
func newNodeAgentReporter(addr string, log *slog.Logger) *nodeAgentReporter {
	if addr == "" {
		return nil
	}
	pod := contract.SidecarProblem{Namespace: os.Getenv(contract.EnvPodNamespace),
		Pod: os.Getenv(contract.EnvPodName), UID: os.Getenv(contract.EnvPodUID)}
	if pod.Namespace == "" || pod.Pod == "" || pod.UID == "" {
		log.Warn("problems are not reported to the node agent: the pod's namespace, name or UID is not in the environment",
			"env", []string{contract.EnvPodNamespace, contract.EnvPodName, contract.EnvPodUID})
		return nil
	}
	return &nodeAgentReporter{url: "http://" + addr + contract.SidecarProblemPath,
		client: &http.Client{Timeout: reportTimeout}, pod: pod,
		log: log.With("node_agent", addr), reported: map[contract.ProblemReason]string{}}
}

// failed reports the problem reason with its cause, unless the node agent
// already took this one or a report is under way.
func (r *nodeAgentReporter) failed(reason contract.ProblemReason, cause string) {
	if r == nil {
		return
	}
	p := r.pod
	p.Reason, p.Message = reason, contract.ProblemMessage(cause)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sending || r.reported[reason] == p.Message {
		return
	}
	r.sending = true
	go r.send(p, r.gen)
}

// recovered forgets what was reported for reason: the same problem,
// should it come back, is reported again.
func (r *nodeAgentReporter) recovered(reason contract.ProblemReason) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.reported, reason)
	r.warned = ""
	r.gen++
}

func (r *nodeAgentReporter) send(p contract.SidecarProblem, gen int) {
	code, err := r.post(p)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sending = false
	// A report the node agent found bad would be refused again: it counts
	// as done. Anything else (not reachable, the pod not yet in its cache
	// or without its IP there) may pass at the next failure.
	done := err == nil || code == http.StatusBadRequest
	if done && gen == r.gen {
		r.reported[p.Reason] = p.Message
	}
	log := r.log.With("reason", p.Reason, "pod", p.Namespace+"/"+p.Pod)
	switch {
	case err == nil:
		log.Info("reported the problem to the node agent, which records it as an Event on the pod")
	case r.warned != p.Message:
		r.warned = p.Message
		log.Warn("the node agent did not take the problem's report; it is sent again at the next failure", "problem", p.Message, "err", err)
	}
}

// post sends p, returning the node agent's status code and, unless it is
// 202 Accepted, an error with its answer.
func (r *nodeAgentReporter) post(p contract.SidecarProblem) (int, error) {
	body, err := json.Marshal(p)
	if err != nil {
		return 0, fmt.Errorf("encode the report: %w", err)
	}
	resp, err := r.client.Post(r.url, "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("report to the node agent: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusAccepted {
		return resp.StatusCode, nil
	}
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	return resp.StatusCode, fmt.Errorf("report to the node agent: %s: %s", resp.Status, strings.TrimSpace(string(answer)))
}
