package repair

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/iptables"
)

// Mode is what the node agent is configured to do about an unprotected pod.
type Mode string

const (
	// ModeAuto deletes a pod that has a controller, which recreates it
	// through the plugin (the app's connections opened without
	// redirection die with it), and repairs a bare pod in place (nothing
	// would recreate it).
	ModeAuto Mode = "auto"
	// ModeRepair repairs every pod in place.
	ModeRepair Mode = "repair"
	// ModeDelete deletes every pod that has a controller; a bare pod is
	// only reported, since deleting it would lose it.
	ModeDelete Mode = "delete"
	// ModeOff reports only: an Event and the metric.
	ModeOff Mode = "off"
)

// ParseMode accepts auto (also ""), repair, delete and off.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.TrimSpace(s)); m {
	case "":
		return ModeAuto, nil
	case ModeAuto, ModeRepair, ModeDelete, ModeOff:
		return m, nil
	}
	return "", fmt.Errorf("repair mode %q: expected auto, repair, delete or off", s)
}

// Action is what to do about one pod.
type Action string

const (
	ActionNone   Action = "none"
	ActionRepair Action = "repair" // apply the rules in the running netns (Repairer.Fix)
	ActionDelete Action = "delete" // delete the pod (the node agent, with Finding.DeleteOptions)
	ActionReport Action = "report" // an Event and the metric, nothing changed
)

// Verdict is what the pod's netns was found to hold.
type Verdict int

const (
	// Unchecked: the netns was not looked at (zero value: nothing is done).
	Unchecked Verdict = iota
	// Protected: the live rules are the ones the redirect config asks for.
	Protected
	// Unprotected: rules are missing or differ.
	Unprotected
	// Invalid: the pod's redirect config does not parse or validate, so
	// what it should have is not known; meshlet-cni would have refused
	// the pod.
	Invalid
)

func (v Verdict) String() string {
	return [...]string{"unchecked", "protected", "unprotected", "invalid"}[v]
}

// Decision is an Action and why.
type Decision struct {
	Action Action
	Why    string
}

// mirrorAnnotation marks a static pod's mirror: kubelet runs the pod from
// a manifest on the node, and the API object only reflects it.
const mirrorAnnotation = "kubernetes.io/config.mirror"

// Decide is what to do about pod, given what its netns holds and the
// configured mode. A pod that is not checked (skipReason) needs nothing,
// whatever the verdict.
func Decide(pod *corev1.Pod, v Verdict, mode Mode) Decision {
	if why := skipReason(pod); why != "" {
		return Decision{ActionNone, why}
	}
	switch v {
	case Protected:
		return Decision{ActionNone, "redirection in place"}
	case Invalid:
		return Decision{ActionReport, "the redirect config is invalid: there is nothing to repair it to"}
	case Unprotected:
	default:
		return Decision{ActionNone, "not checked"}
	}
	if _, mirror := pod.Annotations[mirrorAnnotation]; mirror {
		// Deleting a mirror pod restarts nothing, and the API object may
		// not say what kubelet runs from the manifest.
		return Decision{ActionReport, "a static pod is neither repaired nor deleted"}
	}
	controlled := metav1.GetControllerOfNoCopy(pod) != nil
	switch mode {
	case ModeOff:
		return Decision{ActionReport, "repair mode is off"}
	case ModeRepair:
		return Decision{ActionRepair, "repair mode is repair"}
	case ModeDelete:
		if controlled {
			return Decision{ActionDelete, "repair mode is delete and the pod has a controller"}
		}
		return Decision{ActionReport, "repair mode is delete, but nothing would recreate a pod without a controller"}
	case ModeAuto, "":
		if controlled {
			return Decision{ActionDelete, "the pod has a controller, which recreates it through meshlet-cni"}
		}
		return Decision{ActionRepair, "the pod has no controller: nothing would recreate it"}
	}
	return Decision{ActionReport, fmt.Sprintf("unknown repair mode %q", mode)}
}

// OtherInjector is why a pod injected by another injector (consul-k8s:
// injected, without meshlet's registration) is never checked.
const OtherInjector = "injected by another injector (" + contract.InjectStatus + " without meshlet's registration): meshlet never repairs or deletes it"

// skipReason says why a pod is not checked at all, "" when it is.
func skipReason(pod *corev1.Pod) string {
	switch {
	case pod.Spec.HostNetwork:
		return "host network: meshlet never redirects it"
	case pod.DeletionTimestamp != nil:
		return "being deleted: its DEL may be removing the rules"
	case pod.Status.Phase != corev1.PodRunning && pod.Status.Phase != corev1.PodPending:
		// Pending counts: a pod whose native sidecar waits for its
		// registration has a sandbox, an IP and traffic, yet no Running
		// phase.
		return fmt.Sprintf("phase %s: its containers have stopped", pod.Status.Phase)
	case len(podIPs(pod)) == 0:
		// An IP means the sandbox's CNI ADD, meshlet-cni's part included,
		// has finished: a check cannot race with it.
		return "no pod IP yet: its CNI ADD may still be running"
	case pod.Annotations[contract.InjectStatus] == "":
		return "not injected"
	case contract.InjectedByOther(pod.Annotations):
		// Its rules are consul-k8s' own (or its init container's), which
		// meshlet's exact check would call missing.
		return OtherInjector
	}
	if p, err := iptables.RedirectPlan(pod.Annotations); p == nil && err == nil {
		return "transparent proxy is off for the pod"
	}
	return ""
}

// Families are the IP families the pod has addresses in: those its rules
// were (or should have been) written for, as meshlet-cni does from the
// CNI result.
func Families(pod *corev1.Pod) ([]iptables.Family, error) {
	var v4, v6 bool
	for _, s := range podIPs(pod) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("pod IP %q: %w", s, err)
		}
		if a.Unmap().Is4() {
			v4 = true
		} else {
			v6 = true
		}
	}
	var fams []iptables.Family
	if v4 {
		fams = append(fams, iptables.IPv4)
	}
	if v6 {
		fams = append(fams, iptables.IPv6)
	}
	if fams == nil {
		return nil, fmt.Errorf("pod has no IP")
	}
	return fams, nil
}

// podIPs are status.podIPs, or status.podIP from a kubelet that did not
// fill podIPs.
func podIPs(pod *corev1.Pod) []string {
	var ips []string
	for _, ip := range pod.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	if len(ips) == 0 && pod.Status.PodIP != "" {
		ips = append(ips, pod.Status.PodIP)
	}
	return ips
}
