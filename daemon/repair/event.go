package repair

import (
	"fmt"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Event reasons on the pod.
const (
	// ReasonMissing: the pod ran without its redirection; the message says
	// what was done about it.
	ReasonMissing = "MeshletRedirectionMissing"
	// ReasonFailed: the repair or the deletion failed; the node agent tries
	// again on its next pass.
	ReasonFailed = "MeshletRedirectionRepairFailed"
)

// Event is one Event on the pod, for record.EventRecorder.Event(pod,
// e.Type, e.Reason, e.Message).
type Event struct{ Type, Reason, Message string }

// maxProblem bounds the part of a message that quotes Verify: it lists
// every differing rule, and an Event message is read in kubectl describe.
const maxProblem = 400

// Event is the Event for a finding once its action was carried out;
// result is the repair's or the deletion's error (nil for success, and
// for a report). An ActionNone finding has no Event (the zero Event).
func (f Finding) Event(result error) Event {
	if f.Action == ActionNone || f.Action == "" {
		return Event{}
	}
	var what string
	switch {
	case f.Verdict == Invalid:
		what = fmt.Sprintf("pod runs on node %s with an invalid redirect config, which meshlet-cni would have refused, so its redirection can be neither checked nor repaired: %s", f.Node, truncate(errText(f.Problem)))
	case f.Missing:
		what = fmt.Sprintf("pod started before meshlet-cni was installed on node %s: its network namespace has none of meshlet's redirect rules, so its traffic bypasses the sidecar proxy", f.Node)
	default:
		what = fmt.Sprintf("the redirect rules in the pod's network namespace on node %s differ from its redirect config, so some of its traffic bypasses the sidecar proxy: %s", f.Node, truncate(errText(f.Problem)))
	}
	if result != nil {
		verb := map[Action]string{ActionRepair: "repair in place", ActionDelete: "delete"}[f.Action]
		if verb == "" {
			verb = string(f.Action)
		}
		return Event{corev1.EventTypeWarning, ReasonFailed, fmt.Sprintf("%s; %s failed, retried on the agent's next pass: %v", what, verb, result)}
	}
	var done string
	switch f.Action {
	case ActionDelete:
		done = "deleted so that its controller recreates it with redirection"
	case ActionRepair:
		done = "repaired in place (connections opened before the repair bypass the proxy until they close)"
		if f.Braked {
			done += ", " + f.Why
		}
	default:
		done = "not changed: " + f.Why
	}
	return Event{corev1.EventTypeWarning, ReasonMissing, what + "; " + done}
}

// Outcome is the finding's value of the node agent's metric label
// (meshlet_agent_unprotected_pods_total{action}): repaired, deleted,
// reported, or failed when result (the repair's or the deletion's error)
// is not nil; "" for a pod that needed nothing.
func (f Finding) Outcome(result error) string {
	switch {
	case f.Action == ActionNone || f.Action == "":
		return ""
	case result != nil:
		return "failed"
	}
	return map[Action]string{ActionRepair: "repaired", ActionDelete: "deleted", ActionReport: "reported"}[f.Action]
}

// DeleteOptions are the options for deleting the finding's pod: only that
// pod, not one recreated since under the same name (a StatefulSet's).
func (f Finding) DeleteOptions() metav1.DeleteOptions {
	uid := f.UID
	return metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}
}

func errText(err error) string {
	if err == nil {
		return "unknown"
	}
	return err.Error()
}

func truncate(s string) string {
	if len(s) <= maxProblem {
		return s
	}
	n := maxProblem
	for n > 0 && !utf8.RuneStart(s[n]) {
		n-- // not inside a character
	}
	return s[:n] + "…"
}
