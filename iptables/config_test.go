package iptables

import (
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
)

func base() Config {
	return Config{ProxyUserID: "5995", ProxyInboundPort: 20000, ProxyOutboundPort: 15001}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Config)
		want    func(*Plan)
		wantErr []string // substrings, each must appear
	}{
		{name: "minimal", mutate: func(*Config) {}, want: func(*Plan) {}},
		{name: "trimmed and comma lists", mutate: func(c *Config) {
			c.ProxyUserID = " 5995 "
			c.ExcludeInboundPorts = []string{"8080, 9090", " 21000 "}
			c.ExcludeOutboundPorts = []string{"443", "8000:8100", "9000-9100"}
			c.ExcludeUIDs = []string{" 1000", "2000-2010"}
		}, want: func(p *Plan) {
			p.ExcludeInboundPorts = []PortRange{{8080, 8080}, {9090, 9090}, {21000, 21000}}
			p.ExcludeOutboundPorts = []PortRange{{443, 443}, {8000, 8100}, {9000, 9100}}
			p.ExcludeUIDs = []IDRange{{1000, 1000}, {2000, 2010}}
		}},
		{name: "CIDRs split by family, masked, bare addresses", mutate: func(c *Config) {
			c.ExcludeOutboundCIDRs = []string{"10.0.0.1/8", "fd00::/64", " 192.168.1.1", "2001:db8::1", "::ffff:172.16.0.0/108"}
		}, want: func(p *Plan) {
			p.ExcludeCIDRs4 = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.1.1/32"), netip.MustParsePrefix("172.16.0.0/12")}
			p.ExcludeCIDRs6 = []netip.Prefix{netip.MustParsePrefix("fd00::/64"), netip.MustParsePrefix("2001:db8::1/128")}
		}},
		{name: "DNS without a port: every query", mutate: func(c *Config) { c.ConsulDNSIP = "10.96.0.53" },
			want: func(p *Plan) { p.DNS, p.DNSEvery = netip.MustParseAddrPort("10.96.0.53:53"), true }},
		{name: "DNS port", mutate: func(c *Config) { c.ConsulDNSIP = "fd00::53"; c.ConsulDNSPort = 8600 },
			want: func(p *Plan) { p.DNS = netip.MustParseAddrPort("[fd00::53]:8600") }},
		{name: "bad proxy uid", mutate: func(c *Config) { c.ProxyUserID = "envoy" },
			wantErr: []string{`ProxyUserID: "envoy" is not a numeric UID`}},
		{name: "missing ports", mutate: func(c *Config) { c.ProxyInboundPort = 0; c.ProxyOutboundPort = 70000 },
			wantErr: []string{`ProxyInboundPort: "0" is not a port`, `ProxyOutboundPort: "70000" is not a port`}},
		{name: "same ports", mutate: func(c *Config) { c.ProxyOutboundPort = 20000 },
			wantErr: []string{"both 20000; they must differ"}},
		{name: "bad exclusions, all reported", mutate: func(c *Config) {
			c.ExcludeInboundPorts = []string{"80", "http"}
			c.ExcludeOutboundPorts = []string{"0", "9000:8000"}
			c.ExcludeUIDs = []string{"-1"}
			c.ExcludeOutboundCIDRs = []string{"10.0.0.0/33", "fe80::1%eth0"}
		}, wantErr: []string{
			`ExcludeInboundPorts[1]: "http" is not a port (1-65535) or a range low:high`,
			`ExcludeOutboundPorts[0]: "0"`, `ExcludeOutboundPorts[1]: "9000:8000"`,
			`ExcludeUIDs[0]: "-1" is not a numeric UID`,
			`ExcludeOutboundCIDRs[0]: "10.0.0.0/33" is not an IPv4 or IPv6 CIDR`,
			`ExcludeOutboundCIDRs[1]: "fe80::1%eth0"`,
		}},
		{name: "bad DNS", mutate: func(c *Config) { c.ConsulDNSIP = "consul.dns" },
			wantErr: []string{`ConsulDNSIP: "consul.dns" is not an IP address`}},
		{name: "DNS port without IP", mutate: func(c *Config) { c.ConsulDNSPort = 8600 },
			wantErr: []string{"ConsulDNSPort is 8600 but ConsulDNSIP is empty"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.mutate(&c)
			p, err := c.Validate()
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("no error, want %v", tc.wantErr)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := &Plan{ProxyUID: 5995, InboundPort: 20000, OutboundPort: 15001}
			tc.want(want)
			if !reflect.DeepEqual(p, want) {
				t.Errorf("plan\n got %+v\nwant %+v", p, want)
			}
		})
	}
}

// TestConsulK8sConfig: the exact annotation consul-k8s' webhook writes
// (json.Marshal of consul's sdk/iptables.Config: NetNS, a null
// IptablesProvider, null lists) is accepted and means the default rules.
func TestConsulK8sConfig(t *testing.T) {
	raw, err := os.ReadFile("testdata/consul-k8s-redirect.json")
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseConfig(string(raw))
	if err != nil {
		t.Fatalf("consul-k8s' redirect config rejected: %v", err)
	}
	p, err := c.Validate()
	if err != nil {
		t.Fatal(err)
	}
	if want := (&Plan{ProxyUID: 5995, InboundPort: 20000, OutboundPort: 15001}); !reflect.DeepEqual(p, want) {
		t.Errorf("plan %+v, want %+v", p, want)
	}
	// A provider consul-k8s never writes is still only ignored, but a
	// misspelt key is not.
	if _, err := ParseConfig(`{"ProxyUserID":"5995","IptablesProvider":{}}`); err != nil {
		t.Errorf("IptablesProvider {} rejected: %v", err)
	}
	_, err = ParseConfig(strings.Replace(string(raw), "IptablesProvider", "IptablesProvidr", 1))
	if err == nil || !strings.Contains(err.Error(), `unknown field "IptablesProvidr"`) {
		t.Errorf("misspelt key: %v, want it named as unknown", err)
	}
}

func TestParseConfig(t *testing.T) {
	// What consul-k8s' webhook writes.
	c, err := ParseConfig(`{"ConsulDNSIP":"","ConsulDNSPort":0,"ProxyUserID":"5995","ProxyInboundPort":20000,"ProxyOutboundPort":15001,"ExcludeInboundPorts":["21000"],"ExcludeOutboundPorts":null,"ExcludeOutboundCIDRs":null,"ExcludeUIDs":["5996"],"NetNS":""}`)
	if err != nil {
		t.Fatal(err)
	}
	if c.ProxyUserID != "5995" || c.ProxyInboundPort != 20000 || c.ExcludeInboundPorts[0] != "21000" || c.ExcludeUIDs[0] != "5996" {
		t.Errorf("parsed %+v", c)
	}
	for _, bad := range []string{`{"ProxyUserID":"5995","ExcludeInboundPort":["1"]}`, `not json`, `{"ProxyInboundPort":"20000"}`, `{} {}`} {
		if _, err := ParseConfig(bad); err == nil {
			t.Errorf("ParseConfig(%s) accepted", bad)
		}
	}
}

// TestSplitList: elements are trimmed, comma lists inside elements split,
// empty ones dropped; one string splits as a list of one.
func TestSplitList(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want []string
	}{
		{nil, nil},
		{[]string{""}, nil},
		{[]string{" , ,"}, nil},
		{[]string{"8080"}, []string{"8080"}},
		{[]string{" db:5432 , cache:6379,"}, []string{"db:5432", "cache:6379"}},
		{[]string{"80", " 443 ", "9090, 9091"}, []string{"80", "443", "9090", "9091"}},
	} {
		if got := SplitList(tc.in...); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("SplitList(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
