package contract

import (
	"reflect"
	"strings"
	"testing"
)

func TestRegistrationRoundTrip(t *testing.T) {
	in := Registration{Service: "web", Port: 8080, DataPlane: "envoy", TransparentProxy: true,
		Upstreams:   []Upstream{{Name: "db", Namespace: "ns", Datacenter: "dc2", LocalPort: 1234}, {Name: "q", PreparedQuery: true, LocalPort: 1235}},
		Tags:        []string{"a", "b"},
		Meta:        map[string]string{"k": "v"},
		ExposePaths: []ExposePath{{ListenerPort: 20300, Path: "/healthz", LocalPathPort: 8080}},
		Metrics:     &Metrics{Merging: true, MergedPort: 20100, ScrapePort: 20200, ScrapePath: "/metrics"}}
	s, err := in.Encode()
	if err != nil {
		t.Fatal(err)
	}
	out, err := DecodeRegistration(s)
	if err != nil {
		t.Fatal(err)
	}
	in.Version = RegistrationVersion
	if !reflect.DeepEqual(in, out) {
		t.Errorf("round trip:\n in %+v\nout %+v", in, out)
	}
	for bad, want := range map[string]string{
		`{"version":2,"dataPlane":"envoy","transparentProxy":true}`:               "version 2, this build reads version 1",
		`{"version":1,"dataPlane":"envoy","transparentProxy":true,"servise":"x"}`: `unknown field "servise"`,
		`not json`: RegistrationKey,
	} {
		if _, err := DecodeRegistration(bad); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", bad, err, want)
		}
	}
}

// TestIDs pins the IDs the sidecar and the node agent must agree on.
func TestIDs(t *testing.T) {
	if got := ServiceID("shop", "web-5d9f8c7b6-x2x7q"); got != "shop_web-5d9f8c7b6-x2x7q" {
		t.Errorf("ServiceID = %q", got)
	}
	if got := ProxyID("shop", "web-5d9f8c7b6-x2x7q"); got != "shop_web-5d9f8c7b6-x2x7q-sidecar-proxy" {
		t.Errorf("ProxyID = %q", got)
	}
}
