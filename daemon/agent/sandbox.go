package agent

import (
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// sandboxHintTTL bounds how long a sandbox notice is kept for a pod that
// kubelet has not yet reported an IP for: long past any sandbox start,
// short enough that notices for sandboxes that never came up (an ADD
// failing later in the chain, a pod deleted at once) do not pile up.
const sandboxHintTTL = 2 * time.Minute

// sandboxHint is the IP meshlet-cni reported for a pod's new sandbox.
type sandboxHint struct {
	uid types.UID
	ip  string
	at  time.Time
}

// SandboxUp takes meshlet-cni's notice (podcache.SandboxSink) that the
// pod's sandbox is redirected and has ips. Kubelet reports the IP only at
// its next status sync, up to a second later; until then Reconcile
// registers the pod at this IP, so its proxy, which serves only once it
// finds its registration, starts that much sooner. The registration's
// check stays critical until the pod is Ready, as always: no traffic is
// routed to an address kubelet has not confirmed running.
func (s *Syncer) SandboxUp(namespace, name, uid string, ips []netip.Addr) {
	if len(ips) == 0 {
		return
	}
	key := namespace + "/" + name
	now := time.Now()
	s.mu.Lock()
	if s.sandboxes == nil {
		s.sandboxes = map[string]sandboxHint{}
	}
	for k, h := range s.sandboxes {
		if now.Sub(h.at) > sandboxHintTTL {
			delete(s.sandboxes, k)
		}
	}
	// The first IP, as kubelet picks the pod's primary IP from the
	// plugin chain's result.
	s.sandboxes[key] = sandboxHint{uid: types.UID(uid), ip: ips[0].String(), at: now}
	s.mu.Unlock()
	s.Requeue(key)
}

// withSandboxIP is the pod as Reconcile registers it, and where its
// address came from: kubelet's status once it has one (the notice is then
// dropped), else the notice for this very pod (same UID; one for a newer
// pod of the name waits for that pod).
func (s *Syncer) withSandboxIP(pod *corev1.Pod) (*corev1.Pod, string) {
	key := pod.Namespace + "/" + pod.Name
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.sandboxes[key]
	switch {
	case !ok:
		return pod, addressFromStatus
	case pod.Status.PodIP != "" && h.uid == pod.UID, time.Since(h.at) > sandboxHintTTL:
		delete(s.sandboxes, key)
		return pod, addressFromStatus
	case pod.Status.PodIP != "" || h.uid != pod.UID:
		return pod, addressFromStatus
	}
	// A shallow copy: register.For only reads, and the informer's object
	// must not change.
	cp := *pod
	cp.Status.PodIP = h.ip
	cp.Status.PodIPs = []corev1.PodIP{{IP: h.ip}}
	return &cp, addressFromSandbox
}

// Where a registration's address came from, in the node agent's log.
const (
	addressFromStatus  = "pod status"
	addressFromSandbox = "meshlet-cni"
)
