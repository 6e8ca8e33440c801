package agent

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/meshlet/meshlet/contract"
)

// problemEvents are the Event's reason and the start of its message for
// each problem a sidecar may report (TestProblemEventsCoverContract).
var problemEvents = map[contract.ProblemReason]struct{ reason, lead string }{
	contract.ProblemLoginFailed: {"MeshletLoginFailed", "the sidecar serves nothing until its Consul login succeeds: "},
}

// Results of a sidecar's report, the label of
// meshlet_agent_sidecar_problems_total.
const (
	problemRecorded   = "recorded"
	problemBadRequest = "bad_request"
	problemForbidden  = "forbidden"
	problemUnknownPod = "unknown_pod"
)

// problemVerdict is what becomes of a sidecar's report.
type problemVerdict struct {
	code   int    // http.StatusAccepted, or the refusal's status
	result string // problemRecorded, or the refusal's
	why    string // the refusal, for the answer and the log
}

// judgeProblem decides whether report p, received from remote, becomes an
// Event on pod, this node's pod of the report's namespace and name (nil:
// none). Only the pod's own sidecar may put one on it: the request must
// come from the pod's IP, which a pod in the host's network does not have
// to itself. The pod must be the same (its UID: not an older pod of the
// name) and injected, so that no other pod's problems are meshlet's to
// record.
func judgeProblem(pod *corev1.Pod, remote netip.Addr, p contract.SidecarProblem) problemVerdict {
	key := p.Namespace + "/" + p.Pod
	switch {
	case pod == nil:
		return problemVerdict{http.StatusNotFound, problemUnknownPod, fmt.Sprintf("no pod %s on this node", key)}
	case pod.Spec.HostNetwork:
		return problemVerdict{http.StatusForbidden, problemForbidden, fmt.Sprintf("pod %s is in the host's network: a report cannot be told to come from it", key)}
	case !hasIP(pod, remote):
		return problemVerdict{http.StatusForbidden, problemForbidden, fmt.Sprintf("the report comes from %s, not from pod %s's IP", remote, key)}
	case string(pod.UID) != p.UID:
		return problemVerdict{http.StatusNotFound, problemUnknownPod, fmt.Sprintf("pod %s on this node has another UID than %s", key, p.UID)}
	case pod.Annotations[contract.RegistrationKey] == "":
		return problemVerdict{http.StatusForbidden, problemForbidden, fmt.Sprintf("pod %s is not injected by meshlet", key)}
	}
	return problemVerdict{code: http.StatusAccepted, result: problemRecorded}
}

// hasIP says remote is one of the pod's IPs as kubelet reported them.
func hasIP(pod *corev1.Pod, remote netip.Addr) bool {
	ips := []string{pod.Status.PodIP}
	for _, ip := range pod.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	for _, s := range ips {
		if ip, err := netip.ParseAddr(s); err == nil && remote.IsValid() && ip.Unmap() == remote.Unmap() {
			return true
		}
	}
	return false
}

// sidecarProblems serves contract.SidecarProblemPath: a sidecar reports a
// problem of its own pod, which it cannot make an Event of (the pod's
// ServiceAccount, which it runs as, may not create Events), and the node
// agent records the Event for it.
type sidecarProblems struct {
	pods    corelisters.PodLister // this node's
	events  record.EventRecorder
	metrics *Metrics
	log     *slog.Logger
}

func (h *sidecarProblems) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST a sidecar problem report", http.StatusMethodNotAllowed)
		return
	}
	p, err := contract.DecodeSidecarProblem(http.MaxBytesReader(w, r.Body, contract.SidecarProblemMaxBytes))
	if err != nil {
		h.metrics.sidecarProblems.WithLabelValues("unknown", problemBadRequest).Inc()
		h.log.Info("sidecar problem report refused", "remote", r.RemoteAddr, "why", err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	key := p.Namespace + "/" + p.Pod
	// A remote address net/http does not fill in matches no pod.
	remote, _ := netip.ParseAddrPort(r.RemoteAddr)
	pod, err := h.pods.Pods(p.Namespace).Get(p.Pod)
	if err != nil {
		pod = nil // the lister's only error: not in this node's cache
	}
	v := judgeProblem(pod, remote.Addr(), p)
	h.metrics.sidecarProblems.WithLabelValues(string(p.Reason), v.result).Inc()
	if v.code != http.StatusAccepted {
		h.log.Info("sidecar problem report refused", "pod", key, "remote", r.RemoteAddr, "why", v.why)
		http.Error(w, v.why, v.code)
		return
	}
	ev := problemEvents[p.Reason]
	msg := contract.ProblemMessage(ev.lead + p.Message)
	h.log.Warn("sidecar problem", "pod", key, "reason", p.Reason, "problem", msg)
	h.events.Event(pod, corev1.EventTypeWarning, ev.reason, msg)
	w.WriteHeader(http.StatusAccepted)
}
