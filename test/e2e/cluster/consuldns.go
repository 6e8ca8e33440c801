package cluster

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// Consul DNS as the official chart lays it out: Service consul/consul-dns,
// port 53 (UDP and TCP) to the Consul agents' DNS port. The chart selects
// its agent pods; here the one client agent is a host process on the node
// address, so the Service has no selector and one EndpointSlice names it,
// on this node: with internalTrafficPolicy Local, a pod's DNS goes to its
// own node's agent, as each node's would on a cluster of many. meshlet's
// chart reads this Service (consul.dns.service, default consul/consul-dns)
// when pods' DNS goes to Consul (dns.enableRedirection).
// In ConsulNamespace, beside the auth method's reviewer (consulauth.go).
const ConsulDNSService = "consul-dns"

func consulDNSObjects() (*corev1.Namespace, *corev1.Service, *discoveryv1.EndpointSlice) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ConsulNamespace}}
	labels := map[string]string{"app": "consul", "component": "dns"}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: ConsulDNSService, Namespace: ConsulNamespace, Labels: labels},
		Spec: corev1.ServiceSpec{
			InternalTrafficPolicy: ptr.To(corev1.ServiceInternalTrafficPolicyLocal),
			Ports: []corev1.ServicePort{
				{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString("dns-tcp")},
				{Name: "dns-udp", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromString("dns-udp")},
			}},
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: ConsulDNSService + "-" + NodeName, Namespace: ConsulNamespace,
			Labels: map[string]string{discoveryv1.LabelServiceName: ConsulDNSService, discoveryv1.LabelManagedBy: "meshlet-local-cluster"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{NodeIP}, NodeName: ptr.To(NodeName),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("dns-tcp"), Port: ptr.To[int32](consulClientDNS), Protocol: ptr.To(corev1.ProtocolTCP)},
			{Name: ptr.To("dns-udp"), Port: ptr.To[int32](consulClientDNS), Protocol: ptr.To(corev1.ProtocolUDP)},
		},
	}
	return ns, svc, slice
}

// createConsulDNS creates the Consul DNS Service before meshlet is
// installed, as the official chart's would exist by then.
func (c *Cluster) createConsulDNS(ctx context.Context) error {
	cs, err := c.Clientset()
	if err != nil {
		return err
	}
	ns, svc, slice := consulDNSObjects()
	for _, o := range []struct {
		what   string
		create func() error
	}{
		{"Namespace", func() error { _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); return err }},
		{"Service", func() error {
			_, err := cs.CoreV1().Services(ConsulNamespace).Create(ctx, svc, metav1.CreateOptions{})
			return err
		}},
		{"EndpointSlice", func() error {
			_, err := cs.DiscoveryV1().EndpointSlices(ConsulNamespace).Create(ctx, slice, metav1.CreateOptions{})
			return err
		}},
	} {
		if err := o.create(); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create the Consul DNS %s: %w", o.what, err)
		}
	}
	return nil
}
