package dataplane

import (
	"net/netip"
	"testing"

	capi "github.com/hashicorp/consul/api"
)

func entry(dest, addr string, port int, status string, tagged map[string]string) *capi.ServiceEntry {
	ta := map[string]capi.ServiceAddress{}
	for k, v := range tagged {
		ta[k] = capi.ServiceAddress{Address: v, Port: 80}
	}
	return &capi.ServiceEntry{
		Node: &capi.Node{Datacenter: "dc1", Address: "10.0.0.1"},
		Service: &capi.AgentService{Kind: capi.ServiceKindConnectProxy, Service: dest + "-sidecar-proxy", Address: addr, Port: port,
			TaggedAddresses: ta, Proxy: &capi.AgentServiceConnectProxyConfig{DestinationServiceName: dest}},
		Checks: capi.HealthChecks{{Status: status}},
	}
}

func TestBuildIndex(t *testing.T) {
	idx := buildIndex(map[string][]*capi.ServiceEntry{
		"web-sidecar-proxy": {
			entry("web", "10.244.0.5", 20000, capi.HealthPassing, map[string]string{"virtual": "10.96.0.20", "consul-virtual": "240.0.0.1"}),
			entry("web", "10.244.0.6", 20000, capi.HealthCritical, map[string]string{"virtual": "10.96.0.20"}),
		},
		"db-sidecar-proxy": {entry("db", "", 20000, capi.HealthPassing, map[string]string{"virtual": "fd00:96::30"})},
		// Two services claiming one address: neither gets it.
		"a-sidecar-proxy": {entry("a", "10.244.0.7", 20000, capi.HealthPassing, map[string]string{"virtual": "10.96.0.99"})},
		"b-sidecar-proxy": {entry("b", "10.244.0.8", 20000, capi.HealthPassing, map[string]string{"virtual": "10.96.0.99"})},
		// Not a proxy, or a bad address: ignored.
		"plain": {{Service: &capi.AgentService{Service: "plain", Address: "10.244.0.9", Port: 80,
			TaggedAddresses: map[string]capi.ServiceAddress{"virtual": {Address: "10.96.0.50"}}}}},
		"bad-sidecar-proxy": {entry("bad", "not-an-ip", 20000, capi.HealthPassing, map[string]string{"virtual": "10.96.0.60"})},
	})
	for vip, want := range map[string]string{"10.96.0.20": "web", "240.0.0.1": "web", "fd00:96::30": "db", "10.96.0.60": "bad"} {
		if got, ok := idx.byVIP[netip.MustParseAddr(vip)]; !ok || got.Name != want {
			t.Errorf("byVIP[%s] = %v, %v; want %s", vip, got, ok, want)
		}
	}
	for _, vip := range []string{"10.96.0.99", "10.96.0.50"} {
		if got, ok := idx.byVIP[netip.MustParseAddr(vip)]; ok {
			t.Errorf("byVIP[%s] = %v; want none", vip, got)
		}
	}
	web := idx.instances[ServiceKey{Name: "web"}]
	if len(web) != 2 || !web[0].Healthy || web[1].Healthy || web[0].Addr.String() != "10.244.0.5:20000" ||
		web[0].ID.Service != "web" || web[0].ID.Datacenter != "dc1" || web[0].ID.Namespace != "default" {
		t.Errorf("web instances = %+v", web)
	}
	if db := idx.instances[ServiceKey{Name: "db"}]; len(db) != 1 || db[0].Addr.String() != "10.0.0.1:20000" {
		t.Errorf("db instances = %+v; want the node's address when the service has none", db)
	}
	if bad := idx.instances[ServiceKey{Name: "bad"}]; len(bad) != 0 {
		t.Errorf("bad instances = %+v; want none (no valid address)", bad)
	}
	// Instances by their own address: a pod's IP names one instance; the
	// node's address, which an instance without one of its own falls back
	// to, names none.
	for addr, want := range map[string]string{"10.244.0.5": "web", "10.244.0.6": "web", "10.244.0.7": "a"} {
		if got, ok := idx.byAddr[netip.MustParseAddr(addr)]; !ok || got.key.Name != want || got.in.Addr.Addr().String() != addr {
			t.Errorf("byAddr[%s] = %+v, %v; want an instance of %s", addr, got, ok, want)
		}
	}
	if got, ok := idx.byAddr[netip.MustParseAddr("10.0.0.1")]; ok {
		t.Errorf("byAddr[the node's address] = %+v; want none", got)
	}
	shared := buildIndex(map[string][]*capi.ServiceEntry{
		"a-sidecar-proxy": {entry("a", "10.244.0.9", 20000, capi.HealthPassing, nil)},
		"b-sidecar-proxy": {entry("b", "10.244.0.9", 21000, capi.HealthPassing, nil)},
	})
	if got, ok := shared.byAddr[netip.MustParseAddr("10.244.0.9")]; ok {
		t.Errorf("an address two services share = %+v; want none", got)
	}
}
