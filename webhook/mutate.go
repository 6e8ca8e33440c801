package webhook

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/iptables"
)

// Result is the webhook's answer for one pod.
type Result struct {
	// Patch is the JSON patch that injects the pod; nil: admitted as is.
	Patch []jsonpatch.Operation
	// Warnings reach the user through kubectl.
	Warnings []string
	// Denied is why the pod is refused; nil: admitted.
	Denied error
	// Skipped says why a pod that was not denied is not injected.
	Skipped string
}

// Mutate is the webhook: pod, namespace and configuration in, patch,
// warnings or a denial out. It reads nothing else and changes nothing.
func Mutate(pod *corev1.Pod, namespace string, cfg Config) Result {
	res, _ := mutate(pod, namespace, cfg)
	return res
}

// mutate is Mutate that also returns the injected pod (tests compare the
// patch applied with it).
func mutate(pod *corev1.Pod, namespace string, cfg Config) (Result, *corev1.Pod) {
	inject, why, err := decide(pod, namespace, cfg)
	if err != nil {
		return Result{Denied: err}, nil
	}
	if !inject {
		return Result{Skipped: why}, nil
	}
	p, err := parse(pod, cfg)
	if err != nil {
		return Result{Denied: err}, nil
	}
	var res Result
	for _, k := range p.unknown {
		res.Warnings = append(res.Warnings, fmt.Sprintf("annotation %s is not implemented by meshlet and has no effect", k))
	}
	if w := mergingWarning(pod, p, cfg); w != "" {
		res.Warnings = append(res.Warnings, w)
	}
	if p.consulDNSWarning != "" {
		res.Warnings = append(res.Warnings, p.consulDNSWarning)
	}
	if _, ok := pod.Annotations[contract.EnvoyExtraArgs]; ok && cfg.DataPlane != DataPlaneEnvoy {
		res.Warnings = append(res.Warnings, fmt.Sprintf("annotation %s has no effect: this cluster's data plane is %s, which runs no Envoy", contract.EnvoyExtraArgs, cfg.DataPlane))
	}
	if err := errors.Join(checkPod(pod), checkIdentity(pod, p.service, cfg), checkPortUses(pod, p, cfg), checkUpstreamForms(p, cfg)); err != nil {
		return Result{Denied: err}, nil
	}
	pl := placeSidecar(pod, cfg)
	injected, err := injectInto(pod.DeepCopy(), namespace, p, pl, cfg)
	if err != nil {
		return Result{Denied: err}, nil
	}
	res.Patch, err = patch(pod, injected, pl, len(injected.Spec.InitContainers)+len(injected.Spec.Containers)-
		len(pod.Spec.InitContainers)-len(pod.Spec.Containers))
	if err != nil {
		return Result{Denied: fmt.Errorf("compute the patch: %w", err)}, nil
	}
	return res, injected
}

// mergingWarning is why metrics, on for the pod, serve less than the
// annotations ask; "" when they serve them. Data plane consul: Consul's
// built-in proxy serves no metrics page (it has no HTTP listener at all),
// so the scrape port serves nothing and the merging annotations have no
// effect there.
func mergingWarning(pod *corev1.Pod, p parsed, cfg Config) string {
	m := p.metrics
	if m == nil {
		return ""
	}
	if !m.Merging {
		switch {
		case cfg.DataPlane == DataPlaneConsul:
			return fmt.Sprintf("metrics (%s) with data plane consul: Consul's built-in proxy serves no Prometheus page, and the scrape port serves nothing; scrape the app directly, or use data plane envoy or meshlet", contract.EnableMetrics)
		case cfg.DataPlane == DataPlaneEnvoy && cfg.MeshletImage == "":
			return fmt.Sprintf("metrics (%s) with data plane envoy are served by meshlet's image beside Envoy, and this webhook was given none (-meshlet-image): nothing serves the scrape port", contract.EnableMetrics)
		}
		return ""
	}
	switch {
	case cfg.DataPlane == DataPlaneConsul:
		var noEffect []string
		for _, k := range []string{contract.ServiceMetricsPort, contract.ServiceMetricsPath} {
			if _, ok := pod.Annotations[k]; ok {
				noEffect = append(noEffect, k)
			}
		}
		w := fmt.Sprintf("metrics merging (%s) is not possible with data plane consul: Consul's built-in proxy serves no Prometheus page to merge the app's into, and the scrape port serves nothing", contract.EnableMetricsMerging)
		if len(noEffect) > 0 {
			w += "; " + strings.Join(noEffect, " and ") + " have no effect"
		}
		return w + "; scrape the app directly, or use data plane envoy or meshlet"
	case cfg.DataPlane == DataPlaneEnvoy && cfg.MeshletImage == "":
		return fmt.Sprintf("metrics merging (%s) with data plane envoy runs meshlet's image beside Envoy, and this webhook was given none (-meshlet-image): nothing serves the scrape port", contract.EnableMetricsMerging)
	case m.ServiceMetricsPort == 0 && p.port == 0:
		return fmt.Sprintf("metrics merging (%s): the pod has no service port and no %s: only the proxy's metrics are served", contract.EnableMetricsMerging, contract.ServiceMetricsPort)
	}
	return ""
}

// checkPod refuses what cannot be meshed.
func checkPod(pod *corev1.Pod) error {
	var errs []error
	podUID := int64(-1)
	if sc := pod.Spec.SecurityContext; sc != nil && sc.RunAsUser != nil {
		podUID = *sc.RunAsUser
	}
	for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
		uid := podUID
		if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
			uid = *c.SecurityContext.RunAsUser
		}
		if uid == contract.ProxyUID {
			errs = append(errs, fmt.Errorf("container %q runs as UID %d, the sidecar proxy's UID: its traffic would bypass the proxy; run it as another user", c.Name, uid))
		}
		if isSidecarName(c.Name) {
			errs = append(errs, fmt.Errorf("container name %q is the injected sidecar's; rename the container", c.Name))
		}
	}
	for _, v := range pod.Spec.Volumes {
		if v.Name == loginVolume {
			errs = append(errs, fmt.Errorf("volume name %q is the injected sidecar's; rename the volume", v.Name))
		}
	}
	return errors.Join(errs...)
}

// defaultContainerKey is kubectl's annotation naming a pod's default
// container.
const defaultContainerKey = "kubectl.kubernetes.io/default-container"

// injectInto injects pod, a copy it may change: the upstreams' env, the
// HTTP probes moved to expose listeners, the sidecars at pl (data plane
// envoy's login sidecar before Envoy, its metrics sidecar after), and the
// annotations the CNI plugin and the node agent read.
func injectInto(pod *corev1.Pod, namespace string, p parsed, pl placement, cfg Config) (*corev1.Pod, error) {
	reg := contract.Registration{Service: p.service, Port: p.port, DataPlane: cfg.DataPlane,
		TransparentProxy: p.tproxy, Upstreams: p.upstreams, Tags: p.tags, Meta: p.meta, Metrics: p.metrics,
		ConsulNamespace: consulNamespace(namespace, cfg.ConsulNamespaces), AuthMethod: cfg.ACLAuthMethod}
	if p.tproxy && p.overwriteProbes {
		reg.ExposePaths = overwriteProbes(pod)
	}
	addUpstreamEnv(pod, p.upstreams)
	sidecar, err := sidecarContainer(p, reg, pod, pl, cfg)
	if err != nil {
		return nil, err
	}
	sidecars := []corev1.Container{sidecar}
	if envoyMetricsNeeded(p, cfg) {
		sidecars = append(sidecars, envoyMetricsSidecar(sidecar, reg, cfg))
	}
	if envoyLoginNeeded(cfg) {
		m, ok := serviceAccountTokenMount(pod)
		if !ok || pl != placedNative {
			// checkIdentity and Config.Validate see to both.
			return nil, fmt.Errorf("envoy's login sidecar needs the pod's ServiceAccount token (mounted: %v) and a native sidecar (placed: %v)", ok, pl)
		}
		sidecars = append([]corev1.Container{envoyLoginSidecar(sidecar, m, reg.ConsulNamespace, cfg)}, sidecars...)
	}
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[contract.InjectStatus] = contract.Injected
	// kubectl exec and logs then pick the app, not the sidecar, without
	// saying "Defaulted container" each time; a pod's own choice stays.
	// Named before the sidecar is added: it may go first.
	if _, ok := pod.Annotations[defaultContainerKey]; !ok && len(pod.Spec.Containers) > 0 {
		pod.Annotations[defaultContainerKey] = pod.Spec.Containers[0].Name
	}
	if loginVolumeNeeded(cfg) {
		pod.Spec.Volumes = append(pod.Spec.Volumes, loginVolumeSpec())
	}
	switch pl {
	case placedNative:
		always := corev1.ContainerRestartPolicyAlways
		for i := range sidecars {
			sidecars[i].RestartPolicy = &always
		}
		pod.Spec.InitContainers = append(sidecars, pod.Spec.InitContainers...)
	case placedFirst:
		pod.Spec.Containers = append(sidecars, pod.Spec.Containers...)
	case placedLast:
		pod.Spec.Containers = append(pod.Spec.Containers, sidecars...)
	default:
		return nil, fmt.Errorf("no place for the sidecar: %v", pl)
	}
	if p.tproxy {
		pod.Annotations[contract.TProxyStatus] = contract.TProxyEnabled
		c := redirectConfig(p, reg, cfg)
		// meshlet-cni validates the config the same way at ADD: a config it
		// would refuse must be refused here, not leave the pod stuck later.
		if _, err := c.Validate(); err != nil {
			return nil, fmt.Errorf("the redirect config built from the transparent-proxy annotations is not valid: %w", err)
		}
		rc, err := json.Marshal(c)
		if err != nil {
			return nil, err
		}
		pod.Annotations[contract.RedirectConfig] = string(rc)
	}
	if m := p.metrics; m != nil {
		pod.Annotations["prometheus.io/scrape"] = "true"
		pod.Annotations["prometheus.io/port"] = strconv.Itoa(m.ScrapePort)
		pod.Annotations["prometheus.io/path"] = m.ScrapePath
	}
	enc, err := reg.Encode()
	if err != nil {
		return nil, err
	}
	pod.Annotations[contract.RegistrationKey] = enc
	return pod, nil
}

// redirectConfig is what meshlet-cni applies: the user's exclusions, plus
// the ports kubelet and Prometheus must reach directly (exposed probes,
// metrics), which would otherwise land on the proxy's mTLS listener, and
// Consul DNS. That is written without a port, which meshlet-cni (and
// consul's rules) read as every DNS query of the pod, to any nameserver:
// the pod keeps its resolv.conf, search list included, and Consul
// recurses the cluster's names to the cluster DNS.
func redirectConfig(p parsed, reg contract.Registration, cfg Config) iptables.Config {
	c := iptables.Config{
		ProxyUserID:          strconv.Itoa(contract.ProxyUID),
		ProxyInboundPort:     contract.ProxyInboundPort,
		ProxyOutboundPort:    contract.ProxyOutboundPort,
		ExcludeInboundPorts:  append([]string{}, p.excludeInbound...),
		ExcludeOutboundPorts: p.excludeOutbound,
		ExcludeOutboundCIDRs: p.excludeCIDRs,
		ExcludeUIDs:          p.excludeUIDs,
	}
	for _, e := range reg.ExposePaths {
		c.ExcludeInboundPorts = append(c.ExcludeInboundPorts, strconv.Itoa(e.ListenerPort))
	}
	if m := p.metrics; m != nil {
		c.ExcludeInboundPorts = append(c.ExcludeInboundPorts, strconv.Itoa(m.ScrapePort))
	}
	if p.consulDNS {
		c.ConsulDNSIP = cfg.ConsulDNS.IP
	}
	return c
}

func consulNamespace(k8sNamespace string, c ConsulNamespaces) string {
	switch {
	case !c.Enabled:
		return ""
	case c.MirroringK8S:
		return c.MirroringK8SPrefix + k8sNamespace
	case c.DestinationNamespace != "":
		return c.DestinationNamespace
	}
	return "default"
}

// upstreamEnvName is the prefix of an upstream's environment variables:
// its service name upper-cased, '-' and '.' as '_' (consul-k8s' names).
func upstreamEnvName(u contract.Upstream) string {
	return strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(u.Name))
}

// addUpstreamEnv gives every container and init container
// <NAME>_CONNECT_SERVICE_HOST and _PORT for each upstream.
func addUpstreamEnv(pod *corev1.Pod, ups []contract.Upstream) {
	if len(ups) == 0 {
		return
	}
	var env []corev1.EnvVar
	for _, u := range ups {
		name := upstreamEnvName(u)
		env = append(env,
			corev1.EnvVar{Name: name + "_CONNECT_SERVICE_HOST", Value: "127.0.0.1"},
			corev1.EnvVar{Name: name + "_CONNECT_SERVICE_PORT", Value: strconv.Itoa(u.LocalPort)})
	}
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range list {
			list[i].Env = append(list[i].Env, env...)
		}
	}
}
