package iptables

import (
	"strings"
	"testing"

	"github.com/meshlet/meshlet/test/golden"
)

var goldenConfigs = map[string]Config{
	"default": {ProxyUserID: "5995", ProxyInboundPort: 20000, ProxyOutboundPort: 15001},
	"exclusions": {ProxyUserID: "5995", ProxyInboundPort: 20000, ProxyOutboundPort: 15001,
		ExcludeInboundPorts:  []string{"8080", "9000:9100"},
		ExcludeOutboundPorts: []string{"443, 6443"},
		ExcludeOutboundCIDRs: []string{"10.96.0.1/32", "192.168.0.0/16", "fd00:10:96::/112"},
		ExcludeUIDs:          []string{"1000", "2000-2010"}},
	"dns": {ProxyUserID: "5995", ProxyInboundPort: 20000, ProxyOutboundPort: 15001,
		ConsulDNSIP: "10.244.0.1", ConsulDNSPort: 8600},
	// What meshlet's webhook writes with Consul DNS redirection (and
	// consul-k8s' client-agent webhooks): the Consul DNS Service's
	// ClusterIP, no port; every query of the pod goes there.
	"dns-every": {ProxyUserID: "5995", ProxyInboundPort: 20000, ProxyOutboundPort: 15001,
		ConsulDNSIP: "10.96.0.53"},
}

func TestGoldenRules(t *testing.T) {
	for name, cfg := range goldenConfigs {
		t.Run(name, func(t *testing.T) {
			p, err := cfg.Validate()
			if err != nil {
				t.Fatal(err)
			}
			var b strings.Builder
			for _, f := range []Family{IPv4, IPv6} {
				b.WriteString("# " + f.String() + ": iptables-restore --noflush input\n")
				b.WriteString(p.Rules(f).restoreInput())
			}
			golden.Check(t, name+".golden", []byte(b.String()))
		})
	}
}

func TestReplaceAndRemoveInput(t *testing.T) {
	// A netns that has an older meshlet ruleset, with DNS, and a foreign rule.
	save := `*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:CONSUL_PROXY_INBOUND - [0:0]
:CONSUL_DNS_REDIRECT - [0:0]
:OTHER - [0:0]
-A PREROUTING -p tcp -j CONSUL_PROXY_INBOUND
-A OUTPUT -p udp -m udp --dport 53 -j CONSUL_DNS_REDIRECT
-A OUTPUT -j OTHER
-A CONSUL_PROXY_INBOUND -p tcp -j REDIRECT --to-ports 20000
COMMIT
`
	live := parseSave(save)
	p, err := goldenConfigs["default"].Validate()
	if err != nil {
		t.Fatal(err)
	}
	got := "# replace\n" + p.Rules(IPv4).replaceInput(live) + "# remove\n" + removeInput(live)
	golden.Check(t, "replace-remove.golden", []byte(got))
}
