package webhook

import (
	"fmt"

	"github.com/meshlet/meshlet/contract"
)

// NoConsulDNS is why a webhook given neither the Consul DNS Service nor
// its address cannot send a pod's DNS there.
const NoConsulDNS = "the webhook has no Consul DNS address (the chart's dns.enabled is false; meshlet webhook: no -consul-dns-service or -consul-dns-ip)"

// parseConsulDNS decides whether the pod's DNS goes to Consul DNS, after
// transparent proxy is decided: the redirection is part of its rules
// (consul-k8s' too), so a pod without it cannot have it. Asked for on the
// pod, that is a denial naming both; from the default
// (dns.enableRedirection), a warning: the pod runs, with the cluster DNS.
// A pod that would be sent to a Consul DNS the webhook does not know is
// denied: it would resolve no name at all.
func parseConsulDNS(ann map[string]string, p *parsed, cfg Config) error {
	v, set := ann[contract.ConsulDNS]
	want := cfg.ConsulDNS.Default
	if set {
		b, err := parseBool(contract.ConsulDNS, v)
		if err != nil {
			return err
		}
		want = b
	}
	if !want {
		return nil
	}
	if !p.tproxy {
		why, fix := "transparent proxy is off by default (connectInject.transparentProxy.defaultEnabled)", "turn transparent proxy on for the pod"
		switch tp, ok := ann[contract.TransparentProxy]; {
		case cfg.DataPlane == DataPlaneConsul:
			why, fix = "data plane consul (Consul's built-in proxy) has no transparent proxy", "use data plane meshlet or envoy"
		case ok:
			why = fmt.Sprintf("the pod has %s: %q", contract.TransparentProxy, tp)
		}
		if set {
			return invalid{contract.ConsulDNS, v, "Consul DNS redirection is part of the transparent-proxy rules, and " + why +
				"; " + fix + ", or remove this annotation"}
		}
		p.consulDNSWarning = "Consul DNS redirection (the default, dns.enableRedirection) does not apply to this pod: it is part of the transparent-proxy rules, and " +
			why + "; the pod resolves names with the cluster DNS only"
		return nil
	}
	if cfg.ConsulDNS.IP == "" {
		why := cfg.ConsulDNS.Unavailable
		if why == "" {
			why = NoConsulDNS
		}
		if set {
			return invalid{contract.ConsulDNS, v, "Consul DNS is not reachable for this pod: " + why +
				"; the pod would resolve no name at all. Fix that, or remove this annotation"}
		}
		return fmt.Errorf("the pod's DNS would go to Consul DNS (on by default: dns.enableRedirection), which is not reachable: %s; "+
			"the pod would resolve no name at all. Fix that, or give the pod %s: \"false\" to keep the cluster DNS", why, contract.ConsulDNS)
	}
	p.consulDNS = true
	return nil
}
