package iptables

import (
	"strings"
	"testing"

	"github.com/meshlet/meshlet/contract"
)

func TestRedirectPlan(t *testing.T) {
	good := `{"ProxyUserID":"5995","ProxyInboundPort":20000,"ProxyOutboundPort":15001}`
	tests := []struct {
		name     string
		ann      map[string]string
		wantPlan bool
		wantErr  string
	}{
		{"not injected", map[string]string{}, false, ""},
		{"not injected, stray config", map[string]string{contract.RedirectConfig: good}, false, ""},
		{"injected, tproxy off", map[string]string{contract.InjectStatus: "injected"}, false, ""},
		{"injected, tproxy on", map[string]string{contract.InjectStatus: "injected", contract.TProxyStatus: "enabled", contract.RedirectConfig: good}, true, ""},
		{"injected, config without status (consul-k8s)", map[string]string{contract.InjectStatus: "injected", contract.RedirectConfig: good}, true, ""},
		{"injected by meshlet, tproxy on, config missing", map[string]string{contract.InjectStatus: "injected", contract.TProxyStatus: "enabled", contract.RegistrationKey: "{}"}, false,
			"annotation consul.hashicorp.com/redirect-traffic-config is missing"},
		// consul-k8s without its CNI plugin: its init container redirects.
		{"injected by consul-k8s, tproxy on, no config", map[string]string{contract.InjectStatus: "injected", contract.TProxyStatus: "enabled"}, false, ""},
		{"injected, config not JSON", map[string]string{contract.InjectStatus: "injected", contract.RedirectConfig: "{"}, false,
			"annotation consul.hashicorp.com/redirect-traffic-config: redirect config is not valid JSON"},
		{"injected, config invalid", map[string]string{contract.InjectStatus: "injected", contract.RedirectConfig: `{"ProxyUserID":"x","ProxyInboundPort":20000,"ProxyOutboundPort":15001}`}, false,
			`ProxyUserID: "x" is not a numeric UID`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := RedirectPlan(tc.ann)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (p != nil) != tc.wantPlan {
				t.Errorf("plan %v, want plan: %v", p, tc.wantPlan)
			}
		})
	}
}
