package dataplane

import (
	"net/url"
	"strings"
	"testing"
)

func TestServiceID(t *testing.T) {
	const td = "11111111-2222-3333-4444-555555555555.consul"
	for _, tc := range []struct {
		uri  string
		want ServiceID
		sni  string
		err  string
	}{
		{uri: "spiffe://" + td + "/ns/default/dc/dc1/svc/static-server",
			want: ServiceID{TrustDomain: td, Namespace: "default", Datacenter: "dc1", Service: "static-server"},
			sni:  "static-server.default.dc1.internal." + td},
		{uri: "spiffe://" + td + "/ap/team-a/ns/web/dc/dc2/svc/api",
			want: ServiceID{TrustDomain: td, Partition: "team-a", Namespace: "web", Datacenter: "dc2", Service: "api"},
			sni:  "api.web.team-a.dc2.internal-v1." + td},
		{uri: "https://" + td + "/ns/default/dc/dc1/svc/x", err: "expected spiffe://"},
		{uri: "spiffe://" + td + "/agent/client/dc/dc1/id/node", err: "expected a service's"},
		{uri: "spiffe://" + td + "/ns/default/dc/dc1/svc/", err: "expected a service's"},
		{uri: "spiffe:///ns/default/dc/dc1/svc/x", err: "expected spiffe://"},
	} {
		t.Run(tc.uri, func(t *testing.T) {
			u, err := url.Parse(tc.uri)
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseServiceID(u)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseServiceID(%s) = %+v, %v; want error %q", tc.uri, got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseServiceID(%s) = %+v, %v; want %+v", tc.uri, got, err, tc.want)
			}
			if got.URI() != tc.uri {
				t.Errorf("URI() = %s, want %s", got.URI(), tc.uri)
			}
			if got.SNI() != tc.sni {
				t.Errorf("SNI() = %s, want %s", got.SNI(), tc.sni)
			}
		})
	}
}

func TestServiceIDSame(t *testing.T) {
	a := ServiceID{TrustDomain: "td.consul", Namespace: "default", Datacenter: "dc1", Service: "web"}
	for _, tc := range []struct {
		name string
		peer ServiceID
		want bool
	}{
		{"same", a, true},
		{"other datacenter", ServiceID{TrustDomain: "td.consul", Namespace: "default", Datacenter: "dc2", Service: "web"}, true},
		{"empty namespace is default", ServiceID{TrustDomain: "TD.consul", Datacenter: "dc1", Service: "web"}, true},
		{"other service", ServiceID{TrustDomain: "td.consul", Namespace: "default", Datacenter: "dc1", Service: "db"}, false},
		{"other namespace", ServiceID{TrustDomain: "td.consul", Namespace: "ops", Datacenter: "dc1", Service: "web"}, false},
		{"other trust domain", ServiceID{TrustDomain: "evil.consul", Namespace: "default", Datacenter: "dc1", Service: "web"}, false},
		{"other partition", ServiceID{TrustDomain: "td.consul", Partition: "p", Namespace: "default", Datacenter: "dc1", Service: "web"}, false},
	} {
		if got := a.Same(tc.peer); got != tc.want {
			t.Errorf("%s: Same(%+v) = %v, want %v", tc.name, tc.peer, got, tc.want)
		}
	}
}
