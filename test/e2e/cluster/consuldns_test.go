package cluster

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestConsulDNSObjects: the selectorless Service reaches the client agent
// only if kube-proxy pairs each of its ports with the EndpointSlice's port
// of the same name and protocol, and its Local policy only if the endpoint
// is on this node.
func TestConsulDNSObjects(t *testing.T) {
	_, svc, slice := consulDNSObjects()
	if svc.Spec.Selector != nil {
		t.Errorf("selector %v: the agent is no pod", svc.Spec.Selector)
	}
	for _, want := range []corev1.Protocol{corev1.ProtocolUDP, corev1.ProtocolTCP} {
		found := false
		for _, p := range svc.Spec.Ports {
			if p.Port != 53 || p.Protocol != want {
				continue
			}
			for _, sp := range slice.Ports {
				if *sp.Name == p.Name && *sp.Protocol == want && *sp.Port == consulClientDNS {
					found = true
				}
			}
		}
		if !found {
			t.Errorf("no port 53/%s paired with the agent's DNS port %d: service %+v, slice %+v", want, consulClientDNS, svc.Spec.Ports, slice.Ports)
		}
	}
	if ep := slice.Endpoints; len(ep) != 1 || ep[0].Addresses[0] != NodeIP || *ep[0].NodeName != NodeName || !*ep[0].Conditions.Ready {
		t.Errorf("endpoints %+v: want the agent at %s on %s, ready", ep, NodeIP, NodeName)
	}
	if slice.Labels["kubernetes.io/service-name"] != svc.Name || slice.Namespace != svc.Namespace {
		t.Errorf("slice %s/%s labels %v: not the Service %s/%s's", slice.Namespace, slice.Name, slice.Labels, svc.Namespace, svc.Name)
	}
}
