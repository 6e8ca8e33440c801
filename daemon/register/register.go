// Package register turns an injected pod into the registrations its
// node's Consul client agent must hold: the service instance and its
// sidecar proxy. For is a pure function of the pod and the Kubernetes
// Services that select it; Register writes its result to the Consul
// agent, for the node agent and for the proxy's tests.
package register

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	capi "github.com/hashicorp/consul/api"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/meshlet/meshlet/contract"
)

// healthCheckTTL is never reached: the node agent sets the check from the
// pod's Ready condition (contract.HealthCheckSuffix).
const healthCheckTTL = "100000h"

// ErrNotInjected: the pod carries no registration annotation.
var ErrNotInjected = errors.New("pod is not injected")

// firstAppContainer is the name of the pod's first container that is not
// a sidecar the webhook added; "" when there is none.
func firstAppContainer(pod *corev1.Pod) string {
	for _, c := range pod.Spec.Containers {
		if !slices.Contains(contract.SidecarContainers, c.Name) {
			return c.Name
		}
	}
	return ""
}

// ErrNoIP: the pod has no IP yet; it is registered once it has one.
var ErrNoIP = errors.New("pod has no IP yet")

// Registrations are one pod's service and proxy.
type Registrations struct {
	Service, Proxy *capi.AgentServiceRegistration
	// Note, when set, is worth telling the pod's owner: how the service
	// got a name the pod did not give (an Event says it).
	Note string `json:",omitempty"`
}

// For is what the node's Consul agent must hold for pod. services are the
// Kubernetes Services of the pod's namespace; those whose selector matches
// the pod name the service when the connect-service annotation does not.
func For(pod *corev1.Pod, services []*corev1.Service) (Registrations, error) {
	raw, ok := pod.Annotations[contract.RegistrationKey]
	if !ok {
		return Registrations{}, ErrNotInjected
	}
	reg, err := contract.DecodeRegistration(raw)
	if err != nil {
		// DecodeRegistration's error names the annotation already.
		return Registrations{}, err
	}
	if pod.Status.PodIP == "" {
		return Registrations{}, ErrNoIP
	}
	selecting := Selecting(pod, services)
	name := reg.Service
	from := "its " + contract.Service + " annotation"
	var note string
	if name == "" {
		from = "the Kubernetes Service selecting it"
		switch len(selecting) {
		case 0:
			// The older Consul documentation's walkthrough: bare pods, the
			// service named after the pod's first container.
			app := firstAppContainer(pod)
			if app == "" {
				return Registrations{}, fmt.Errorf("no Kubernetes Service selects the pod, it has no %s annotation and no container of its own to name the service after: give it one or the other", contract.Service)
			}
			name, from = app, "its first container's name"
			note = fmt.Sprintf("no Kubernetes Service selects the pod and it has no %s annotation: registered as service %q, its first container's name; give it a Service or the annotation to choose the name", contract.Service, name)
		case 1:
			name = selecting[0].Name
		default:
			names := make([]string, len(selecting))
			for i, s := range selecting {
				names[i] = s.Name
			}
			return Registrations{}, fmt.Errorf("the Services %s all select the pod: pick one with the %s annotation", strings.Join(names, ", "), contract.Service)
		}
	}
	if err := checkIdentity(pod, name, from, reg.AuthMethod); err != nil {
		return Registrations{}, err
	}
	svcID := contract.ServiceID(pod.Namespace, pod.Name)
	meta := map[string]string{}
	for k, v := range reg.Meta {
		meta[k] = v
	}
	meta[contract.MetaNamespace], meta[contract.MetaPodName], meta[contract.MetaPodUID], meta[contract.MetaManagedBy] = pod.Namespace, pod.Name, string(pod.UID), contract.ManagedBy

	status := capi.HealthCritical
	if podReady(pod) {
		status = capi.HealthPassing
	}
	service := &capi.AgentServiceRegistration{
		ID: svcID, Name: name, Address: pod.Status.PodIP, Port: reg.Port,
		Tags: reg.Tags, Meta: meta, Namespace: reg.ConsulNamespace,
		Check: &capi.AgentServiceCheck{CheckID: svcID + contract.HealthCheckSuffix, Name: "Kubernetes Health Check",
			TTL: healthCheckTTL, Status: status, Notes: "The pod's Ready condition, set by meshlet's node agent."},
	}
	proxy := &capi.AgentServiceRegistration{
		Kind: capi.ServiceKindConnectProxy, ID: contract.ProxyID(pod.Namespace, pod.Name),
		Name: name + "-sidecar-proxy", Address: pod.Status.PodIP, Port: contract.ProxyInboundPort,
		Tags: reg.Tags, Meta: meta, Namespace: reg.ConsulNamespace,
		Proxy: &capi.AgentServiceConnectProxyConfig{
			DestinationServiceName: name, DestinationServiceID: svcID,
			LocalServiceAddress: "127.0.0.1", LocalServicePort: reg.Port,
			Upstreams: upstreams(reg.Upstreams),
		},
		// The proxy is as healthy as its app: an unready pod leaves its
		// upstreams' endpoints.
		Checks: capi.AgentServiceChecks{{CheckID: contract.ProxyID(pod.Namespace, pod.Name) + "/alias",
			Name: "Destination alias", AliasService: svcID}},
	}
	if reg.TransparentProxy {
		proxy.Proxy.Mode = capi.ProxyModeTransparent
		proxy.Proxy.TransparentProxy = &capi.TransparentProxyConfig{OutboundListenerPort: contract.ProxyOutboundPort}
		if v := virtual(name, selecting); v != nil {
			proxy.TaggedAddresses = map[string]capi.ServiceAddress{"virtual": *v}
		}
	}
	for _, e := range reg.ExposePaths {
		proxy.Proxy.Expose.Paths = append(proxy.Proxy.Expose.Paths, capi.ExposePath{
			ListenerPort: e.ListenerPort, Path: e.Path, LocalPathPort: e.LocalPathPort, Protocol: "http"})
	}
	if m := reg.Metrics; m != nil {
		proxy.Proxy.Config = map[string]any{"envoy_prometheus_bind_addr": fmt.Sprintf("0.0.0.0:%d", m.ScrapePort)}
	}
	return Registrations{Service: service, Proxy: proxy, Note: note}, nil
}

// Selecting are the Services whose selector matches the pod, sorted by
// name. A Service without a selector selects nothing.
func Selecting(pod *corev1.Pod, services []*corev1.Service) []*corev1.Service {
	var out []*corev1.Service
	for _, s := range services {
		if s.Namespace != pod.Namespace || len(s.Spec.Selector) == 0 {
			continue
		}
		if labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(pod.Labels)) {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b *corev1.Service) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// virtual is the address transparent proxies dial for the service: the
// ClusterIP of the selecting Service of the same name (consul-k8s' rule),
// else of the only selecting Service.
func virtual(name string, selecting []*corev1.Service) *capi.ServiceAddress {
	var pick *corev1.Service
	for _, s := range selecting {
		if s.Name == name {
			pick = s
		}
	}
	if pick == nil && len(selecting) == 1 {
		pick = selecting[0]
	}
	if pick == nil || pick.Spec.ClusterIP == "" || pick.Spec.ClusterIP == corev1.ClusterIPNone || len(pick.Spec.Ports) == 0 {
		return nil
	}
	return &capi.ServiceAddress{Address: pick.Spec.ClusterIP, Port: int(pick.Spec.Ports[0].Port)}
}

func upstreams(ups []contract.Upstream) []capi.Upstream {
	var out []capi.Upstream
	for _, u := range ups {
		c := capi.Upstream{DestinationType: capi.UpstreamDestTypeService, DestinationName: u.Name,
			DestinationNamespace: u.Namespace, Datacenter: u.Datacenter, LocalBindPort: u.LocalPort}
		if u.PreparedQuery {
			c.DestinationType = capi.UpstreamDestTypePreparedQuery
		}
		out = append(out, c)
	}
	return out
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
