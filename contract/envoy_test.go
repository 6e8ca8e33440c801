package contract

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestEnvoyADSBootstrap: the login sidecar's part of Envoy's bootstrap holds
// the ADS gRPC service to the Consul agent's cluster with the token, and
// nothing else; a token an HTTP header could not carry is refused.
func TestEnvoyADSBootstrap(t *testing.T) {
	b, err := EnvoyADSBootstrap("6a1b9c2e-0d3f-4e5a-8b7c-9d0e1f2a3b4c")
	if err != nil {
		t.Fatal(err)
	}
	want := `{"dynamic_resources":{"ads_config":{"grpc_services":[{"envoy_grpc":{"cluster_name":"local_agent"},"initial_metadata":[{"key":"x-consul-token","value":"6a1b9c2e-0d3f-4e5a-8b7c-9d0e1f2a3b4c"}]}]}}}`
	if string(b) != want {
		t.Errorf("got\n%s\nwant\n%s", b, want)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "a\nb", "a\rb", "a\x00b"} {
		if _, err := EnvoyADSBootstrap(bad); err == nil || !strings.Contains(err.Error(), "ACL token for Envoy's ADS stream") {
			t.Errorf("token %q: %v, want it refused", bad, err)
		}
	}
}
