package webhook

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/meshlet/meshlet/contract"
	"github.com/meshlet/meshlet/iptables"
)

// TestConsulDNS: which pods get their DNS sent to Consul DNS, read as
// meshlet-cni reads it (every query of the pod, to the Service's
// ClusterIP on port 53), which are warned that the default does not apply
// to them, and which are denied, each denial naming what to change.
func TestConsulDNS(t *testing.T) {
	consulIP := netip.MustParseAddrPort("10.96.0.53:53")
	unavailable := func(c *Config) {
		c.ConsulDNS.IP, c.ConsulDNS.Unavailable = "", "Service consul/consul-dns is headless"
	}
	for _, tc := range []struct {
		name    string
		ann     map[string]string
		cfg     Config
		dns     bool     // the pod's DNS goes to Consul
		warning string   // in the one warning, "" for none
		denied  []string // all in the denial; nil: admitted
	}{
		{name: "default on", ann: on(), cfg: consulDNSCfg(true), dns: true},
		{name: "default off", ann: on(), cfg: consulDNSCfg(false)},
		{name: "pod opts in", ann: on(contract.ConsulDNS, "true"), cfg: consulDNSCfg(false), dns: true},
		{name: "pod opts out", ann: on(contract.ConsulDNS, "false"), cfg: consulDNSCfg(true)},
		{name: "ParseBool's spellings", ann: on(contract.ConsulDNS, " T "), cfg: consulDNSCfg(false), dns: true},
		{name: "envoy", ann: on(contract.ConsulDNS, "true"), cfg: withConsulDNS(DefaultConfig()), dns: true},
		{name: "not a boolean", ann: on(contract.ConsulDNS, "yes"), cfg: consulDNSCfg(false),
			denied: []string{`consul.hashicorp.com/consul-dns: "yes": expected "true" or "false"`}},
		{name: "default, transparent proxy off on the pod", ann: on(contract.TransparentProxy, "false"), cfg: consulDNSCfg(true),
			warning: `Consul DNS redirection (the default, dns.enableRedirection) does not apply to this pod: it is part of the transparent-proxy rules, and the pod has consul.hashicorp.com/transparent-proxy: "false"; the pod resolves names with the cluster DNS only`},
		{name: "default, transparent proxy off by default", ann: on(), cfg: consulDNSCfg(true, func(c *Config) { c.TransparentProxy = false }),
			warning: "transparent proxy is off by default (connectInject.transparentProxy.defaultEnabled)"},
		{name: "asked for, transparent proxy off", ann: on(contract.ConsulDNS, "true", contract.TransparentProxy, "false"), cfg: consulDNSCfg(false),
			denied: []string{`consul.hashicorp.com/consul-dns: "true": Consul DNS redirection is part of the transparent-proxy rules, and the pod has consul.hashicorp.com/transparent-proxy: "false"; turn transparent proxy on for the pod, or remove this annotation`}},
		{name: "asked for on data plane consul", ann: on(contract.ConsulDNS, "true"), cfg: withConsulDNS(consulCfg()),
			denied: []string{`consul.hashicorp.com/consul-dns: "true"`, "data plane consul (Consul's built-in proxy) has no transparent proxy; use data plane meshlet or envoy"}},
		{name: "opt-out on data plane consul", ann: on(contract.ConsulDNS, "false"), cfg: withConsulDNS(consulCfg())},
		{name: "default, Consul DNS unknown", ann: on(), cfg: consulDNSCfg(true, unavailable),
			denied: []string{"the pod's DNS would go to Consul DNS (on by default: dns.enableRedirection), which is not reachable: Service consul/consul-dns is headless",
				`give the pod consul.hashicorp.com/consul-dns: "false"`}},
		{name: "asked for, Consul DNS unknown", ann: on(contract.ConsulDNS, "true"), cfg: consulDNSCfg(false, unavailable),
			denied: []string{`consul.hashicorp.com/consul-dns: "true": Consul DNS is not reachable for this pod: Service consul/consul-dns is headless`}},
		{name: "asked for, no Consul DNS given", ann: on(contract.ConsulDNS, "true"), cfg: consulDNSCfg(false, func(c *Config) { c.ConsulDNS.IP = "" }),
			denied: []string{NoConsulDNS}},
		{name: "opted out, Consul DNS unknown", ann: on(contract.ConsulDNS, "false"), cfg: consulDNSCfg(true, unavailable)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := app(tc.ann)
			res := Mutate(pod, "shop", tc.cfg)
			if tc.denied != nil {
				if res.Denied == nil {
					t.Fatalf("admitted (warnings %q), want a denial with %q", res.Warnings, tc.denied)
				}
				for _, want := range tc.denied {
					if !strings.Contains(res.Denied.Error(), want) {
						t.Errorf("denial\n\t%s\nlacks\n\t%s", res.Denied, want)
					}
				}
				return
			}
			if res.Denied != nil || res.Patch == nil {
				t.Fatalf("denied %v, skipped %q: want the pod injected", res.Denied, res.Skipped)
			}
			var warned []string
			for _, w := range res.Warnings {
				if strings.Contains(w, "Consul DNS") {
					warned = append(warned, w)
				}
			}
			switch {
			case tc.warning == "" && len(warned) > 0:
				t.Errorf("warnings %q, want none about Consul DNS", warned)
			case tc.warning != "" && (len(warned) != 1 || !strings.Contains(warned[0], tc.warning)):
				t.Errorf("warnings %q, want one with %q", warned, tc.warning)
			}
			samePodAfterPatch(t, pod, "shop", tc.cfg)
			plan, err := iptables.RedirectPlan(applyPatch(t, pod, res).Annotations)
			if err != nil {
				t.Fatalf("meshlet-cni refuses the redirect config: %v", err)
			}
			switch {
			case tc.dns && (plan == nil || plan.DNS != consulIP || !plan.DNSEvery):
				t.Errorf("plan %+v: want every DNS query to %s", plan, consulIP)
			case !tc.dns && plan != nil && plan.DNS.IsValid():
				t.Errorf("DNS goes to %s, want the cluster DNS", plan.DNS)
			}
		})
	}
}

func TestConsulDNSConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		err  string
	}{
		{"data plane consul cannot default to it", consulCfg(func(c *Config) { c.ConsulDNS = ConsulDNS{Default: true, IP: "10.96.0.53"} }),
			"data plane consul (Consul's built-in proxy) has no transparent proxy, whose rules send a pod's DNS to Consul DNS"},
		{"not an address", meshletCfg(func(c *Config) { c.ConsulDNS.IP = "consul-dns.consul" }),
			`the Consul DNS address "consul-dns.consul": expected an IP address`},
		{"meshlet", consulDNSCfg(true), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Validate: %v, want %q", err, tc.err)
			}
		})
	}
}
