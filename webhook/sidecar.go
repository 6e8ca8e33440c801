package webhook

import (
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/meshlet/meshlet/contract"
)

// The sidecar's container names: consul-k8s' Envoy container name, so
// dashboards and scripts that look for it keep working.
const (
	envoySidecarName   = contract.EnvoySidecarName
	consulSidecarName  = contract.ConsulSidecarName
	meshletSidecarName = contract.MeshletSidecarName
)

// isSidecarName: the names are reserved, a pod's own container may not
// take one (validate).
func isSidecarName(name string) bool { return slices.Contains(contract.SidecarContainers, name) }

// The proxy's identity in Consul. Pod names of Deployment pods are not
// known at admission, so the ID is built by kubelet from downward-API env;
// the node agent derives the same from the pod. '_' cannot occur in a
// Kubernetes name, so <namespace>_<pod> is unique on a node across
// namespaces (see docs/webhook.md).
const (
	proxyIDRef = "$(" + contract.EnvProxyID + ")"
	hostIPRef  = "$(" + contract.EnvHostIP + ")"
)

// sidecarEnv is the downward-API environment every sidecar gets;
// SERVICE_ID and PROXY_ID are expanded by kubelet from the ones before.
func sidecarEnv() []corev1.EnvVar {
	field := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
	}
	return []corev1.EnvVar{
		field(contract.EnvPodName, "metadata.name"),
		field(contract.EnvPodNamespace, "metadata.namespace"),
		field(contract.EnvPodUID, "metadata.uid"),
		field(contract.EnvHostIP, "status.hostIP"),
		{Name: contract.EnvServiceID, Value: fmt.Sprintf(contract.ServiceIDFormat, "$(POD_NAMESPACE)", "$(POD_NAME)")},
		{Name: contract.EnvProxyID, Value: fmt.Sprintf(contract.ProxyIDFormat, "$(POD_NAMESPACE)", "$(POD_NAME)")},
	}
}

// sidecarContainer is the proxy container for the configured data plane,
// as placed at pl: non-root as the proxy UID, read-only root, no
// capabilities, so that the pod still passes Pod Security "restricted".
func sidecarContainer(p parsed, reg contract.Registration, pod *corev1.Pod, pl placement, cfg Config) (corev1.Container, error) {
	c := corev1.Container{
		Env:       sidecarEnv(),
		Resources: p.resources,
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                ptr.To(int64(contract.ProxyUID)),
			RunAsGroup:               ptr.To(int64(contract.ProxyUID)),
			RunAsNonRoot:             ptr.To(true),
			ReadOnlyRootFilesystem:   ptr.To(true),
			AllowPrivilegeEscalation: ptr.To(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
	}
	// The proxy's public listener answers once the proxy has its
	// configuration; kubelet reaches it on the pod IP.
	ready := &corev1.Probe{
		ProbeHandler:     corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(contract.ProxyInboundPort)}},
		PeriodSeconds:    1,
		FailureThreshold: 300,
	}
	if pl == placedNative {
		c.StartupProbe = ready
	} else {
		c.ReadinessProbe = &corev1.Probe{ProbeHandler: ready.ProbeHandler, PeriodSeconds: 2}
	}
	switch cfg.DataPlane {
	case DataPlaneEnvoy:
		return envoySidecar(c, p, reg, pod, cfg)
	case DataPlaneConsul:
		return consulSidecar(c, pod, cfg), nil
	case DataPlaneMeshlet:
		return meshletSidecar(c, reg, pod, pl, cfg), nil
	}
	return c, fmt.Errorf("data plane %q: expected %s, %s or %s", cfg.DataPlane, DataPlaneEnvoy, DataPlaneConsul, DataPlaneMeshlet)
}
