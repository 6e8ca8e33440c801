package webhook

import (
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/iptables"
)

// invalid is a bad annotation value: the annotation, the value (or the
// element of a list) and what was expected. A pod with one is denied.
type invalid struct{ key, value, want string }

func (e invalid) Error() string { return fmt.Sprintf("%s: %q: %s", e.key, e.value, e.want) }

// parsed is a pod's annotations, each parsed once and validated.
type parsed struct {
	service            string
	port               int // the application's port; 0: none
	upstreams          []contract.Upstream
	upstreamsAsWritten []string // each upstream as the annotation wrote it, for messages
	tproxy             bool
	consulDNS          bool   // the pod's DNS goes to Consul DNS (parseConsulDNS)
	consulDNSWarning   string // why the default Consul DNS does not apply; "": it does, or is off
	overwriteProbes    bool
	excludeInbound     []string
	excludeOutbound    []string
	excludeCIDRs       []string
	excludeUIDs        []string
	extraArgs          []string
	tags               []string
	meta               map[string]string
	resources          corev1.ResourceRequirements
	metrics            *contract.Metrics // nil: metrics off
	unknown            []string          // consul.hashicorp.com/* keys meshlet does not implement
}

// known are the Consul annotations meshlet reads or writes; any other
// consul.hashicorp.com/* key draws a warning.
var known = map[string]bool{
	contract.Inject: true, contract.Service: true, contract.ServicePort: true,
	contract.Upstreams: true, contract.TransparentProxy: true, contract.OverwriteProbes: true,
	contract.ExcludeInboundPorts: true, contract.ExcludeOutboundPorts: true,
	contract.ExcludeOutboundCIDRs: true, contract.ExcludeUIDs: true,
	contract.EnvoyExtraArgs: true, contract.ServiceTags: true,
	contract.SidecarCPULimit: true, contract.SidecarCPURequest: true,
	contract.SidecarMemoryLimit: true, contract.SidecarMemoryRequest: true,
	contract.EnableMetrics: true, contract.EnableMetricsMerging: true,
	contract.MergedMetricsPort: true, contract.PrometheusScrapePort: true,
	contract.PrometheusScrapePath: true, contract.ServiceMetricsPort: true,
	contract.ServiceMetricsPath: true, contract.ConsulDNS: true,
	contract.InjectStatus: true, contract.TProxyStatus: true, contract.RedirectConfig: true,
}

// parseInject reads connect-inject alone: the decision needs it before
// anything else is parsed.
func parseInject(ann map[string]string) (*bool, error) {
	v, ok := ann[contract.Inject]
	if !ok {
		return nil, nil
	}
	b, err := parseBool(contract.Inject, v)
	return &b, err
}

// parse reads every annotation of an injected pod; it reports every bad
// value, not just the first.
func parse(pod *corev1.Pod, cfg Config) (parsed, error) {
	ann := pod.Annotations
	p := parsed{tproxy: cfg.TransparentProxy, overwriteProbes: cfg.OverwriteProbes, resources: *cfg.Resources.DeepCopy()}
	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	var err error
	if v, ok := ann[contract.Service]; ok {
		p.service, err = parseServiceName(contract.Service, v)
		check(err)
	}
	p.port, err = parseServicePort(pod, ann)
	check(err)
	if v, ok := ann[contract.Upstreams]; ok {
		p.upstreams, p.upstreamsAsWritten, err = parseUpstreams(v)
		check(err)
	}
	for _, b := range []struct {
		key, without string // without: why data plane consul cannot
		dst          *bool
	}{{contract.TransparentProxy, "has no transparent outbound listener: give the upstreams in " + contract.Upstreams, &p.tproxy},
		{contract.OverwriteProbes, "serves no expose paths: point the probes at a port excluded from redirection, or use exec probes", &p.overwriteProbes}} {
		v, ok := ann[b.key]
		if !ok {
			continue
		}
		*b.dst, err = parseBool(b.key, v)
		check(err)
		if err == nil && *b.dst && cfg.DataPlane == DataPlaneConsul {
			check(invalid{b.key, v, "data plane consul (Consul's built-in proxy) " + b.without + "; or use data plane meshlet or envoy"})
		}
	}
	check(parseConsulDNS(ann, &p, cfg))
	for _, l := range []struct {
		key   string
		dst   *[]string
		parse func(key, v string) error
	}{
		{contract.ExcludeInboundPorts, &p.excludeInbound, checkPortOrRange},
		{contract.ExcludeOutboundPorts, &p.excludeOutbound, checkPortOrRange},
		{contract.ExcludeOutboundCIDRs, &p.excludeCIDRs, checkCIDR},
		{contract.ExcludeUIDs, &p.excludeUIDs, checkUID},
	} {
		for _, e := range iptables.SplitList(ann[l.key]) {
			if err := l.parse(l.key, e); err != nil {
				check(err)
				continue
			}
			*l.dst = append(*l.dst, e)
		}
	}
	if v, ok := ann[contract.EnvoyExtraArgs]; ok {
		p.extraArgs, err = parseExtraArgs(v)
		check(err)
	}
	p.tags = iptables.SplitList(ann[contract.ServiceTags])
	p.meta, err = parseMeta(ann)
	check(err)
	check(parseResources(ann, &p.resources))
	p.metrics, err = parseMetrics(ann, cfg.Metrics)
	check(err)
	for _, k := range []string{contract.TProxyStatus, contract.RedirectConfig, contract.RegistrationKey} {
		// Only meshlet writes these, at injection. Kept from the pod
		// template when transparent proxy is off, a redirect config would
		// reach meshlet-cni without the checks above.
		if v, ok := ann[k]; ok {
			check(invalid{k, v, "written by meshlet at injection; remove it from the pod template"})
		}
	}
	for k := range ann {
		if strings.HasPrefix(k, contract.Prefix) && !known[k] && !strings.HasPrefix(k, contract.ServiceMetaPrefix) {
			p.unknown = append(p.unknown, k)
		}
	}
	slices.Sort(p.unknown)
	return p, errors.Join(errs...)
}

// parseBool takes what strconv.ParseBool takes, as consul-k8s does.
func parseBool(key, v string) (bool, error) {
	b, err := strconv.ParseBool(strings.TrimSpace(v))
	if err != nil {
		return false, invalid{key, v, `expected "true" or "false"`}
	}
	return b, nil
}

// nameRE is a Consul service, namespace or datacenter name as meshlet
// accepts it: no dots or colons, which the upstream grammar uses.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$`)

func parseServiceName(key, v string) (string, error) {
	v = strings.TrimSpace(v)
	if !nameRE.MatchString(v) {
		return "", invalid{key, v, "expected a service name: letters, digits, '-' and '_', starting and ending with a letter or digit, at most 63 characters"}
	}
	return v, nil
}

// parsePort takes digits only, as meshlet-cni's parser does ("+80" is
// not a port there, so it must not be one here).
func parsePort(s string) (int, bool) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	return int(n), err == nil && n >= 1
}

// parseServicePort resolves connect-service-port, a number or the name of
// a container port, defaulting to the first container port of the pod.
func parseServicePort(pod *corev1.Pod, ann map[string]string) (int, error) {
	v, ok := ann[contract.ServicePort]
	if !ok {
		for _, c := range pod.Spec.Containers {
			if len(c.Ports) > 0 {
				return int(c.Ports[0].ContainerPort), nil
			}
		}
		return 0, nil
	}
	v = strings.TrimSpace(v)
	if n, ok := parsePort(v); ok {
		return n, nil
	}
	if n := namedPort(pod, v); n != 0 {
		return n, nil
	}
	return 0, invalid{contract.ServicePort, v, "expected a port number 1-65535 or the name of a port of one of the pod's containers"}
}

func namedPort(pod *corev1.Pod, name string) int {
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name != "" && p.Name == name {
				return int(p.ContainerPort)
			}
		}
	}
	return 0
}

// parseUpstreams reads name[.namespace]:port[:datacenter] and
// prepared_query:name:port elements, comma-separated.
func parseUpstreams(v string) (ups []contract.Upstream, asWritten []string, err error) {
	const key = contract.Upstreams
	var errs []error
	ports := map[int]string{}
	envs := map[string]string{}
	for _, e := range iptables.SplitList(v) {
		u, err := parseUpstream(e)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if other, dup := ports[u.LocalPort]; dup {
			errs = append(errs, invalid{key, e, fmt.Sprintf("local port %d is already taken by %q", u.LocalPort, other)})
			continue
		}
		// The app finds each upstream by its environment variables; two
		// upstreams with the same would leave one of them unreachable.
		if other, dup := envs[upstreamEnvName(u)]; dup {
			errs = append(errs, invalid{key, e, fmt.Sprintf("its environment variables %s_CONNECT_SERVICE_HOST and _PORT would be %q's too: the app could reach only one; drop one of the two", upstreamEnvName(u), other)})
			continue
		}
		ports[u.LocalPort], envs[upstreamEnvName(u)] = e, e
		ups, asWritten = append(ups, u), append(asWritten, e)
	}
	return ups, asWritten, errors.Join(errs...)
}

func parseUpstream(e string) (contract.Upstream, error) {
	const key = contract.Upstreams
	parts := strings.Split(e, ":")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	var u contract.Upstream
	portAt := 1
	switch {
	case parts[0] == "prepared_query":
		if len(parts) != 3 {
			return u, invalid{key, e, "expected prepared_query:name:port"}
		}
		u.PreparedQuery, u.Name, portAt = true, parts[1], 2
	case len(parts) < 2 || len(parts) > 3:
		return u, invalid{key, e, "expected name[.namespace]:port[:datacenter] or prepared_query:name:port"}
	default:
		name, ns, hasNS := strings.Cut(parts[0], ".")
		if hasNS && !nameRE.MatchString(ns) {
			return u, invalid{key, e, "the namespace after the '.' must be a name: letters, digits, '-' and '_', starting and ending with a letter or digit"}
		}
		u.Name, u.Namespace = name, ns
		if len(parts) == 3 {
			if !nameRE.MatchString(parts[2]) {
				return u, invalid{key, e, "the datacenter must be a name: letters, digits, '-' and '_', starting and ending with a letter or digit"}
			}
			u.Datacenter = parts[2]
		}
	}
	if !nameRE.MatchString(u.Name) {
		return u, invalid{key, e, "the service name must be letters, digits, '-' and '_', starting and ending with a letter or digit"}
	}
	port, ok := parsePort(parts[portAt])
	if !ok {
		return u, invalid{key, e, "port must be a number 1-65535"}
	}
	u.LocalPort = port
	return u, nil
}

// reversedRange is a range written high:low (or high-low).
var reversedRange = regexp.MustCompile(`^\s*([0-9]+)\s*[:-]\s*([0-9]+)\s*$`)

// The list elements are read with the parsers meshlet-cni uses for the
// redirect config, so the webhook admits exactly what the plugin applies.

func checkPortOrRange(key, e string) error {
	if _, ok := iptables.ParsePortRange(e); !ok {
		if m := reversedRange.FindStringSubmatch(e); m != nil {
			return invalid{key, e, fmt.Sprintf("a range low:high runs upwards: %s:%s", m[2], m[1])}
		}
		return invalid{key, e, "expected a port 1-65535 or a range low:high"}
	}
	return nil
}

func checkCIDR(key, e string) error {
	if _, ok := iptables.ParseCIDR(e); !ok {
		return invalid{key, e, "expected an IPv4 or IPv6 CIDR (10.0.0.0/8) or address"}
	}
	return nil
}

func checkUID(key, e string) error {
	if _, ok := iptables.ParseIDRange(e); !ok {
		return invalid{key, e, "expected a numeric UID or a range low-high"}
	}
	return nil
}

// parseExtraArgs splits on white space. Quoting is refused rather than
// passed on literally: Envoy would see the quotes.
func parseExtraArgs(v string) ([]string, error) {
	if strings.ContainsAny(v, `"'\`) {
		return nil, invalid{contract.EnvoyExtraArgs, v, "expected arguments separated by spaces, without quotes or backslashes"}
	}
	args := strings.Fields(v)
	for _, a := range args {
		flag, _, _ := strings.Cut(a, "=")
		if flag == "-c" || flag == "--config-path" || flag == "--config-yaml" {
			return nil, invalid{contract.EnvoyExtraArgs, v, "expected arguments other than " + flag + ": the webhook gives Envoy its bootstrap"}
		}
	}
	return args, nil
}

// Consul's limits on a service's meta (its agent refuses a registration
// past them, and the node agent's retries would never succeed): keys of
// letters, digits, '-' and '_', at most 128 long, none starting with
// "consul-"; values at most 512 long; at most 64 pairs, of which meshlet
// writes its own (contract.Meta*).
const (
	metaKeyMax   = 128
	metaValueMax = 512
	metaPairsMax = 64
)

var metaKeyRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// meshletMeta are the meta keys the node agent writes on every
// registration: a pod's own would be overwritten.
var meshletMeta = []string{contract.MetaNamespace, contract.MetaPodName, contract.MetaPodUID, contract.MetaManagedBy}

func parseMeta(ann map[string]string) (map[string]string, error) {
	var meta map[string]string
	var errs []error
	for _, k := range slices.Sorted(maps.Keys(ann)) {
		key, ok := strings.CutPrefix(k, contract.ServiceMetaPrefix)
		if !ok {
			continue
		}
		v := ann[k]
		switch {
		case key == "":
			errs = append(errs, invalid{k, v, "expected a meta key after " + contract.ServiceMetaPrefix})
			continue
		case len(key) > metaKeyMax || !metaKeyRE.MatchString(key):
			errs = append(errs, invalid{k, v, fmt.Sprintf("the meta key %q must be letters, digits, '-' and '_', at most %d characters (Consul's limit)", key, metaKeyMax)})
			continue
		case strings.HasPrefix(key, "consul-"):
			errs = append(errs, invalid{k, v, fmt.Sprintf("the meta key %q starts with \"consul-\", which Consul reserves", key)})
			continue
		case slices.Contains(meshletMeta, key):
			errs = append(errs, invalid{k, v, fmt.Sprintf("the meta key %q is written by meshlet on every registration; choose another key", key)})
			continue
		case len(v) > metaValueMax:
			errs = append(errs, invalid{k, shorten(v), fmt.Sprintf("a meta value is at most %d characters (Consul's limit); this one has %d", metaValueMax, len(v))})
			continue
		}
		if meta == nil {
			meta = map[string]string{}
		}
		meta[key] = v
	}
	if most := metaPairsMax - len(meshletMeta); len(meta) > most {
		errs = append(errs, fmt.Errorf("%d %s* annotations: Consul takes %d meta pairs on a service and meshlet writes %d, so at most %d", len(meta), contract.ServiceMetaPrefix, metaPairsMax, len(meshletMeta), most))
	}
	return meta, errors.Join(errs...)
}

// parseResources overrides the configured sidecar resources; a limit
// below its request is refused as the API server would.
func parseResources(ann map[string]string, r *corev1.ResourceRequirements) error {
	var errs []error
	for _, q := range []struct {
		key  string
		list *corev1.ResourceList
		name corev1.ResourceName
	}{
		{contract.SidecarCPULimit, &r.Limits, corev1.ResourceCPU},
		{contract.SidecarCPURequest, &r.Requests, corev1.ResourceCPU},
		{contract.SidecarMemoryLimit, &r.Limits, corev1.ResourceMemory},
		{contract.SidecarMemoryRequest, &r.Requests, corev1.ResourceMemory},
	} {
		v, ok := ann[q.key]
		if !ok {
			continue
		}
		qty, err := parseSidecarQuantity(strings.TrimSpace(v))
		switch {
		case err != nil:
			errs = append(errs, invalid{q.key, v, "expected a resource quantity such as 100m or 128Mi"})
			continue
		case qty.Sign() < 0:
			errs = append(errs, invalid{q.key, v, "a resource quantity is 0 or more, such as 100m or 128Mi"})
			continue
		}
		if *q.list == nil {
			*q.list = corev1.ResourceList{}
		}
		(*q.list)[q.name] = qty
	}
	// Where each side came from: the pod's annotation, or the chart's
	// default the pod did not override.
	source := func(name corev1.ResourceName, kind string) string {
		key := contract.Prefix + "sidecar-proxy-" + string(name) + "-" + kind
		if _, ok := ann[key]; ok {
			return "annotation " + key
		}
		return "the default connectInject.sidecarProxy.resources." + kind + "s." + string(name)
	}
	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		lim, hasLim := r.Limits[name]
		req, hasReq := r.Requests[name]
		if hasLim && hasReq && lim.Cmp(req) < 0 {
			errs = append(errs, fmt.Errorf("sidecar %s limit %s (%s) is below its request %s (%s): raise the limit or lower the request",
				name, lim.String(), source(name, "limit"), req.String(), source(name, "request")))
		}
	}
	return errors.Join(errs...)
}

// parseMetrics returns nil when metrics are off.
func parseMetrics(ann map[string]string, d MetricsDefaults) (*contract.Metrics, error) {
	var errs []error
	enabled := d.DefaultEnabled
	if v, ok := ann[contract.EnableMetrics]; ok {
		b, err := parseBool(contract.EnableMetrics, v)
		errs, enabled = append(errs, err), b
	}
	m := &contract.Metrics{Merging: d.DefaultEnableMerging, MergedPort: d.DefaultMergedMetricsPort,
		ScrapePort: d.DefaultPrometheusScrapePort, ScrapePath: d.DefaultPrometheusScrapePath}
	if v, ok := ann[contract.EnableMetricsMerging]; ok {
		b, err := parseBool(contract.EnableMetricsMerging, v)
		errs, m.Merging = append(errs, err), b
	}
	for _, p := range []struct {
		key string
		dst *int
	}{{contract.MergedMetricsPort, &m.MergedPort}, {contract.PrometheusScrapePort, &m.ScrapePort}, {contract.ServiceMetricsPort, &m.ServiceMetricsPort}} {
		if v, ok := ann[p.key]; ok {
			n, good := parsePort(v)
			if !good {
				errs = append(errs, invalid{p.key, v, "expected a port number 1-65535"})
			}
			*p.dst = n
		}
	}
	for _, p := range []struct {
		key string
		dst *string
	}{{contract.PrometheusScrapePath, &m.ScrapePath}, {contract.ServiceMetricsPath, &m.ServiceMetricsPath}} {
		if v, ok := ann[p.key]; ok {
			if v = strings.TrimSpace(v); !strings.HasPrefix(v, "/") || strings.ContainsAny(v, " \t?#") {
				errs = append(errs, invalid{p.key, v, "expected an HTTP path starting with '/', without spaces, '?' or '#'"})
			}
			*p.dst = v
		}
	}
	if !m.Merging {
		m.MergedPort = 0
	}
	if err := errors.Join(errs...); err != nil || !enabled {
		return nil, err
	}
	return m, nil
}

// quantityExponent is a quantity's decimal exponent (1e3, 5E-2): not the
// SI suffix E (exa), which takes no digits.
var quantityExponent = regexp.MustCompile(`[eE]([+-]?[0-9]+)$`)

// parseSidecarQuantity parses a sidecar resource annotation. Kubernetes'
// parser takes any exponent, and comparing or printing 1e777777773 then
// takes hours (FuzzAnnotation found it: one pod would hang the webhook),
// so the exponent and the length are bounded first: no sidecar asks for
// more than exa units or less than nano.
func parseSidecarQuantity(v string) (resource.Quantity, error) {
	if len(v) > 32 {
		return resource.Quantity{}, fmt.Errorf("%d characters: expected at most 32", len(v))
	}
	if m := quantityExponent.FindStringSubmatch(v); m != nil {
		if e, err := strconv.Atoi(m[1]); err != nil || e > 18 || e < -9 {
			return resource.Quantity{}, fmt.Errorf("exponent %s: expected -9 to 18", m[1])
		}
	}
	return resource.ParseQuantity(v)
}

// checkUpstreamForms refuses, on data plane meshlet, an upstream in a
// Consul Enterprise namespace while namespaces are off, where it means
// nothing (with them on, the proxy follows the upstream's namespace; it
// serves prepared queries and other datacenters too). Envoy and Consul's
// proxy get every form from Consul as it is.
func checkUpstreamForms(p parsed, cfg Config) error {
	if cfg.DataPlane != DataPlaneMeshlet {
		return nil
	}
	var errs []error
	for i, u := range p.upstreams {
		if u.Namespace != "" && !cfg.ConsulNamespaces.Enabled {
			errs = append(errs, invalid{contract.Upstreams, p.upstreamsAsWritten[i],
				"a service in Consul namespace " + u.Namespace + ", but Consul namespaces are off (global.enableConsulNamespaces): name the service alone, or turn namespaces on (Consul Enterprise)"})
		}
	}
	return errors.Join(errs...)
}
